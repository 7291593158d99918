"""The one-token matrix-vector kernels of _cpukern.h (through `_quantcpu.gemv`): every weight
dtype at every instruction-set level this CPU has equals the exact product of the same weights
(fp64), over shapes that reach each kernel's tails: widths below one vector, not a multiple of
16, 64 or 128, int4 rows longer than one span of 64 scale groups, and int4 groups other than
the default."""

from __future__ import annotations

import pytest
import torch

from chatrwkv.models import quant
from chatrwkv.models.quant import Int4Linear, quantize_rows

pytestmark = pytest.mark.skipif(quant._quantcpu is None, reason="C extension not built")

LEVELS = (2, 1, 0)  # AVX-512, AVX2, scalar (_cpukern.h's CK_ISA_*)
# fp32 sums in a different order than fp64: relative to sum |w x|, measured < 1e-6.
REL_TOL = 1e-5
SHAPES = [(1, 1), (3, 15), (5, 17), (7, 63), (9, 65), (130, 200), (4, 1000), (6, 2200)]


def _matrix(dtype: str, w: torch.Tensor, group: int = 32):
    """(description for gemv, the exact fp32 weights it stands for, what keeps it alive)."""
    O, n = w.shape
    if dtype == "fp32":
        return (w.data_ptr(), 0, 0, O, n), w, w
    if dtype == "bf16":
        h = w.bfloat16()
        return (h.data_ptr(), 0, 1, O, n), h.float(), h
    if dtype == "int8":
        q, s = quantize_rows(w)
        return (q.data_ptr(), s.data_ptr(), 2, O, n), q.float() * s[:, None], (q, s)
    lin = Int4Linear(w, group=group)
    return lin.describe(), lin.dequantize(), lin


def _check_every_level(desc, exact: torch.Tensor, x: torch.Tensor) -> None:
    want = exact.double() @ x.double()
    scale = (exact.double().abs() @ x.double().abs()).clamp(min=1e-30)
    ck = quant._quantcpu
    ran = []
    try:
        for level in LEVELS:
            if ck.set_simd(level) != level:
                continue  # this CPU cannot run that level
            y = torch.full((exact.shape[0],), float("nan"))
            ck.gemv(desc, x.data_ptr(), y.data_ptr())
            err = ((y.double() - want).abs() / scale).max().item()
            assert err < REL_TOL, (level, err)
            ran.append(level)
    finally:
        ck.set_simd(True)
    assert 0 in ran


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "int8", "int4"])
@pytest.mark.parametrize("shape", SHAPES)
def test_gemv_every_level_equals_the_exact_product(dtype, shape):
    g = torch.Generator().manual_seed(shape[0] * 7919 + shape[1])
    w = torch.randn(*shape, generator=g) * 0.05
    x = torch.randn(shape[1], generator=g)
    desc, exact, _keep = _matrix(dtype, w)
    _check_every_level(desc, exact, x)


@pytest.mark.parametrize("group", [16, 48, 64, 128, 1024])
@pytest.mark.parametrize("n", [100, 384, 1000, 4200])
def test_int4_gemv_other_groups(group, n):
    g = torch.Generator().manual_seed(group + n)
    w = torch.randn(5, n, generator=g) * torch.rand(5, 1, generator=g)
    x = torch.randn(n, generator=g)
    desc, exact, _keep = _matrix("int4", w, group)
    _check_every_level(desc, exact, x)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("words", [0, 1, 15, 17, 1000, (3 << 18) + 5])  # the last: 3 MiB + 20 B
def test_stream_sum_reads_every_word_once(words, threads):
    """The bench's bandwidth probe (membw.py) reads the whole buffer, tails and chunks included,
    at every instruction-set level: its sum is the words' sum mod 2^32."""
    g = torch.Generator().manual_seed(words)
    buf = torch.randint(-(2**31), 2**31 - 1, (words,), generator=g, dtype=torch.int32)
    want = int(buf.long().sum()) % 2**32
    ck = quant._quantcpu
    ran = []
    try:
        for level in LEVELS:
            if ck.set_simd(level) != level:
                continue
            assert ck.stream_sum(buf.data_ptr(), 4 * words, threads) == want, level
            ran.append(level)
    finally:
        ck.set_simd(True)
    assert 0 in ran
    with pytest.raises(ValueError):
        ck.stream_sum(buf.data_ptr(), 3, threads)
