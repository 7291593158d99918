"""The sequence path's integer GEMM (_qgemm.h, through quant.py's Int8Linear / Int4Linear for
more than one row): against an integer twin in torch (the same per-token int8 activations, the
same integer dot products), at every instruction level (called directly: models use the scalar
level's torch fallback instead), on odd shapes and tails, and against the weight-only
reference."""

from __future__ import annotations

import pytest
import torch

from chatrwkv.models import quant
from chatrwkv.models.quant import Int4Linear, Int8Linear, unpack_int4

pytestmark = pytest.mark.skipif(quant._quantcpu is None, reason="C extension not built")

LEVELS = (0, 1, 2)  # scalar, AVX2, AVX-512 VNNI (those the CPU lacks are skipped)
# (out, in, T): tails of every loop: rows not a multiple of the 4-row tile (AVX2) nor of the
# 32-row panel (VNNI: 1-16 and 17-31 rows in the last one), inputs not a multiple of 64 (int8
# step) or 128 (int4 block), tokens not a multiple of the tiles (4 / 3; VNNI 12 / 6) nor of
# the chunks (64 tokens; VNNI 264, and smaller runs when there are few panels); more than 16
# groups (the VNNI panel converts their scales 16 at a time).
SHAPES = [(1, 1, 2), (5, 63, 2), (7, 65, 5), (13, 200, 9), (64, 64, 70), (33, 130, 130),
          (8, 384, 3), (50, 200, 300), (96, 256, 13), (40, 1000, 20)]
# int4 sums fp32 products in another order at each level (per block and lane vs per group).
INT4_REL = 1e-5


def _levels():
    """Each level this CPU runs, set for the duration of the loop body."""
    q = quant._quantcpu
    try:
        for level in LEVELS:
            q.set_simd(level if level else False)
            if q.gemm_level() != level:
                continue
            yield level
    finally:
        q.set_simd(True)


def _act_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token: (x_q as float64 integers, scale s) with x ~ x_q * s, as _qgemm.h rounds them
    (fp32 divisions and product, round half to even)."""
    amax = x.abs().amax(dim=1)
    pos = amax > 0
    inv = torch.where(pos, torch.full_like(amax, 127.0) / amax, torch.zeros_like(amax))
    sx = torch.where(pos, amax / torch.full_like(amax, 127.0), torch.zeros_like(amax))
    return torch.round(x * inv.unsqueeze(1)).double(), sx


def _int8_twin(lin: Int8Linear, x: torch.Tensor) -> torch.Tensor:
    xq, sx = _act_int8(x)
    acc = (xq @ lin.q.double().t()).float()  # exact integers (|acc| < 2^24 here)
    return (sx.unsqueeze(1) * lin.scale.unsqueeze(0)) * acc


def _int4_twin(lin: Int4Linear, x: torch.Tensor) -> torch.Tensor:
    n = lin.shape[1]
    xq, sx = _act_int8(x)
    codes = unpack_int4(lin.packed, n).double() - 8
    y = torch.zeros(x.shape[0], lin.shape[0], dtype=torch.float64)
    for g in range(lin.scales.shape[1]):
        s = slice(g * lin.group, min(n, (g + 1) * lin.group))
        y += (xq[:, s] @ codes[:, s].t()) * lin.scales[:, g].double().unsqueeze(0)
    return y * sx.double().unsqueeze(1)


def _gemm(lin: Int8Linear | Int4Linear, x: torch.Tensor) -> torch.Tensor:
    """The C GEMM itself, at whatever level runs."""
    wsum = lin.row_sums() if isinstance(lin, Int8Linear) else None
    return quant.c_gemm(lin.describe(), x, lin.shape[0], wsum)


def _data(out: int, n: int, T: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, n, generator=g) * torch.rand(out, 1, generator=g)
    x = torch.randn(T, n, generator=g) * torch.rand(T, 1, generator=g) * 4
    x[:, 0] *= 20  # an outlier channel, as RWKV activations have
    return w, x


@pytest.mark.parametrize("out,n,T", SHAPES)
def test_int8_gemm_is_the_integer_twin_bit_for_bit(out, n, T):
    w, x = _data(out, n, T)
    lin = Int8Linear(w)
    assert lin.use_c and lin._packed is None
    want = _int8_twin(lin, x)
    for _ in _levels():
        assert torch.equal(_gemm(lin, x), want)
    assert torch.equal(lin(x), want)  # the model's path: the GEMM at the best level


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("out,n,T", SHAPES)
def test_int4_gemm_matches_the_integer_twin_at_every_level(out, n, T, group):
    w, x = _data(out, n, T, seed=1)
    lin = Int4Linear(w, group=group)
    want = _int4_twin(lin, x)
    scalar = None
    for level in _levels():
        got = _gemm(lin, x).double()
        err = (got - want).abs().amax(dim=1) / want.abs().amax(dim=1).clamp(min=1e-30)
        assert err.max().item() < INT4_REL, level
        if scalar is None:
            scalar = got
        assert ((got - scalar).abs().max() / scalar.abs().max()).item() < INT4_REL


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_gemm_close_to_weight_only_reference_per_token(kind):
    """Each token its own activation scale: a huge token does not swamp a tiny one, a zero
    token gives exactly zero."""
    w, x = _data(96, 256, 6, seed=2)
    x[1] *= 1e-3
    x[2] *= 1e3
    x[3] = 0
    lin = Int8Linear(w) if kind == "int8" else Int4Linear(w)
    got, ref = lin(x), lin.reference(x)
    assert torch.equal(got[3], torch.zeros(96))
    # Activation rounding only: measured 0.006-0.008 without the outlier channel, 0.008-0.034
    # with it (one 20x channel sets each token's step).
    for t in (0, 1, 2, 4, 5):
        assert ((got[t] - ref[t]).norm() / ref[t].norm()).item() < 0.06


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_gemm_same_result_on_one_or_two_threads(kind):
    """Many tokens past QG_MIN_PARALLEL_MACS and one token times a matrix past
    QG_MIN_PARALLEL_WEIGHTS (_quantcpu.c): threads do start, and change nothing."""
    w, x = _data(2900, 2900, 20, seed=3)
    lin = Int8Linear(w) if kind == "int8" else Int4Linear(w)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one, one_row = lin(x), lin(x[0])
        torch.set_num_threads(2)
        two, two_row = lin(x), lin(x[0])
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two) and torch.equal(one_row, two_row)


def test_int8_keeps_one_copy_and_the_cache_restores_it_without_packing():
    w, x = _data(40, 72, 5, seed=4)
    lin = Int8Linear(w)
    assert lin._packed is None and lin.q is not None and lin.opaque_nbytes == 0
    again = Int8Linear.from_parts(lin.parts(), lin.shape)
    assert again._packed is None and torch.equal(again.q, lin.q)
    assert torch.equal(again(x), lin(x))
    # one token: fp32 activations, as the reference (up to the order of the fp32 sums)
    assert torch.allclose(lin(x[0]), lin.reference(x[0]), rtol=1e-5, atol=1e-5)


def test_int4_groups_the_gemm_does_not_take_use_the_dequantizing_path():
    w, x = _data(48, 160, 4, seed=5)
    lin = Int4Linear(w, group=16)
    assert not quant.qgemm_group_ok(16)
    assert ((lin(x) - lin.reference(x)).norm() / lin.reference(x).norm()).item() < 0.01
    with pytest.raises(ValueError, match="multiple of 32"):  # the GEMM refuses it
        quant.c_gemm(lin.describe(), x, 48)


def test_without_simd_the_sequence_path_is_torchs_gemm_on_dequantized_weights():
    """The scalar GEMM is a twin for tests, slower than torch: a CPU without AVX2 (or not x86)
    multiplies by the dequantized weights instead."""
    w, x = _data(24, 100, 5, seed=6)
    i8, i4 = Int8Linear(w), Int4Linear(w)
    try:
        quant._quantcpu.set_simd(False)
        assert not quant.c_gemm_fast()
        assert torch.equal(i8(x), i8.reference(x))
        assert ((i4(x) - i4.reference(x)).norm() / i4.reference(x).norm()).item() < 0.01
    finally:
        quant._quantcpu.set_simd(True)
