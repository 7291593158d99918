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

LEVELS = (3, 2, 1, 0)  # AVX-512 VNNI, AVX-512, AVX2, scalar (_cpukern.h's CK_ISA_*)
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


def _each_level():
    """Each level of LEVELS this CPU can run (the others are skipped), with its kernels set;
    the best ones are set again afterwards, however the loop ends."""
    ck = quant._quantcpu
    try:
        for level in LEVELS:
            if ck.set_simd(level) == level:
                yield level
    finally:
        ck.set_simd(True)


def _levels_gemv(desc, x, O, threads=1, fill=123.0):
    """{level: y} for every level this CPU runs."""
    out = {}
    for level in _each_level():
        y = torch.full((O,), fill)
        quant._quantcpu.gemv(desc, x.data_ptr(), y.data_ptr(), threads)
        out[level] = y
    return out


def _check_every_level(desc, exact: torch.Tensor, x: torch.Tensor) -> None:
    want = exact.double() @ x.double()
    scale = (exact.double().abs() @ x.double().abs()).clamp(min=1e-30)
    ys = _levels_gemv(desc, x, exact.shape[0], fill=float("nan"))
    for level, y in ys.items():
        err = ((y.double() - want).abs() / scale).max().item()
        assert err < REL_TOL, (level, err)
    assert 0 in ys


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
    for level in _each_level():
        assert ck.stream_sum(buf.data_ptr(), 4 * words, threads) == want, level
        ran.append(level)
    assert 0 in ran
    with pytest.raises(ValueError):
        ck.stream_sum(buf.data_ptr(), 3, threads)


@pytest.mark.parametrize("threads", [1, 2])
def test_int8_digits_keep_fp32_activations(threads):
    """AVX-512 VNNI runs int8 rows against x as four 8-bit digits (a 32-bit fixed-point copy):
    still the exact product to fp32 accuracy with an outlier 10^5 times the rest, through the
    pool's phase (two threads, a matrix big enough to use them) as on one thread; an x holding
    NaN or Inf gets exactly the fp32 kernels' outputs (the digits are not used), and rows longer
    than CK_XD_MAX_N (32768) fall back to them too."""
    g = torch.Generator().manual_seed(11 + threads)
    for O, n in ((2048, 4096), (3, 40000)):  # 8 M weights: the pool runs; then too long a row
        w = torch.randn(O, n, generator=g) * 0.05
        desc, exact, _keep = _matrix("int8", w)
        x = torch.randn(n, generator=g) * 1e-3
        x[7] = 100.0
        want = exact.double() @ x.double()
        # fp32 accuracy: relative to the sum of |w x| without the outlier's term
        scale = (exact.double().abs() @ x.double().abs()) - exact[:, 7].double().abs() * 100.0
        errs = {level: ((y.double() - want).abs() / scale).max().item()
                for level, y in _levels_gemv(desc, x, O, threads).items()}
        assert all(e < 1e-3 for e in errs.values()), errs
        if 3 in errs:  # no worse than the fp32 kernels (whose sums the outlier dominates too)
            assert errs[3] <= 2 * errs[2] + 1e-6, errs
    w = torch.randn(64, 200, generator=g) * 0.05
    w[5, 3] = 0.0
    desc, exact, _keep = _matrix("int8", w)
    for bad in (float("nan"), float("inf")):
        x = torch.randn(200, generator=g)
        x[3] = bad
        ys = _levels_gemv(desc, x, 64, threads)
        for level, y in ys.items():
            assert torch.equal(y.isnan(), ys[0].isnan()) and torch.equal(y.isinf(), ys[0].isinf())
            ok = y.isfinite()
            assert torch.allclose(y[ok], ys[0][ok]), level
