"""The sequence path's bf16 GEMM (_bgemm.h through bf16gemm.bf16_linear): every instruction
level against an fp64 product of the same bf16 weights and fp32 activations (no rounding of
the activations), the levels against each other, threads against one thread, odd shapes and
tails, the wrapper's refusals, and each version's sequence path running it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from chatrwkv.models import bf16gemm, load_model, quant
from chatrwkv.synth import write_checkpoint

pytestmark = pytest.mark.skipif(quant._quantcpu is None, reason="C extension not built")

LEVELS = (0, 1, 2)  # scalar, AVX2, AVX-512 (those the CPU lacks are skipped)
# (out, in, T): rows not a multiple of the tiles (4 / 2), inputs not a multiple of the 32-weight
# step nor of the 2048 K block, tokens not a multiple of the tiles (6 / 4) nor of the 96-token
# chunk.
SHAPES = [(1, 1, 2), (5, 31, 2), (7, 33, 7), (13, 200, 9), (64, 64, 97), (33, 130, 130),
          (6, 2100, 13), (130, 96, 6)]
# fp32 sums of `in` products against the fp64 ones, relative to sum |w x| (measured <= 2e-7).
REL = 2e-6


def _levels():
    q = quant._quantcpu
    try:
        for level in LEVELS:
            if q.set_simd(level if level else False) != level:
                continue
            yield level
    finally:
        q.set_simd(True)


def _bgemm(x: torch.Tensor, w: torch.Tensor, threads: int = 1) -> torch.Tensor:
    y = torch.full((x.shape[0], w.shape[0]), float("nan"))
    quant._quantcpu.bgemm(w.data_ptr(), w.shape[0], w.shape[1], x.data_ptr(), x.shape[0],
                          y.data_ptr(), threads)
    return y


def _case(out: int, n: int, T: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, n, generator=g).bfloat16()
    x = torch.randn(T, n, generator=g)
    return x, w


def _rel_err(y: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> float:
    exact = x.double() @ w.double().t()
    scale = x.double().abs() @ w.double().abs().t()
    return ((y.double() - exact).abs() / scale.clamp_min(1e-30)).max().item()


@pytest.mark.parametrize("shape", SHAPES)
def test_every_level_is_the_exact_product_of_the_bf16_weights(shape):
    x, w = _case(*shape)
    results = {}
    for level in _levels():
        y = _bgemm(x, w)
        assert torch.isfinite(y).all(), level  # every element written
        assert _rel_err(y, x, w) < REL, level
        results[level] = y
    assert 0 in results
    for level, y in results.items():  # the levels differ only in the order of fp32 sums
        assert torch.allclose(y, results[0], rtol=1e-4, atol=1e-4), level


def test_activations_are_not_rounded_to_bf16():
    """torch's bf16 GEMM rounds x to bf16 (relative error ~2^-9 a product); this one must not."""
    x, w = _case(16, 256, 40, seed=3)
    x = x + 1e-3 * torch.rand_like(x)  # low mantissa bits that bf16 would drop
    y = _bgemm(x, w)
    assert _rel_err(y, x, w) < REL
    assert _rel_err(F.linear(x.bfloat16(), w).float(), x, w) > 50 * REL


def test_threads_give_the_same_bits():
    x, w = _case(260, 520, 130, seed=5)  # past the pool's threshold (2^24 multiply-adds)
    for _ in _levels():
        assert torch.equal(_bgemm(x, w, threads=2), _bgemm(x, w, threads=1))


def test_bad_shapes_are_refused():
    x, w = _case(4, 8, 2)
    with pytest.raises(ValueError):
        quant._quantcpu.bgemm(w.data_ptr(), 4, 8, x.data_ptr(), 0, x.data_ptr(), 1)


def test_wrapper_applies_only_to_fp32_rows_times_contiguous_bf16():
    if not bf16gemm.available():
        pytest.skip("no SIMD kernels here: the torch path runs")
    x, w = _case(24, 40, 12)
    y = bf16gemm.bf16_linear(x.view(3, 4, 40), w)
    assert y is not None and y.shape == (3, 4, 24)
    assert torch.allclose(y.reshape(12, 24), F.linear(x, w.float()), rtol=1e-5, atol=1e-5)
    xt = torch.randn(40, 5).t()  # non-contiguous rows are copied, not refused
    assert torch.allclose(bf16gemm.bf16_linear(xt, w), F.linear(xt, w.float()), rtol=1e-5,
                          atol=1e-5)
    assert bf16gemm.bf16_linear(x[0], w) is None           # one token: the GEMV paths
    assert bf16gemm.bf16_linear(x[:1], w) is None
    assert bf16gemm.bf16_linear(x.bfloat16(), w) is None   # 16-bit activations
    assert bf16gemm.bf16_linear(x, w.float()) is None      # fp32 weights: MKL
    assert bf16gemm.bf16_linear(x, w.t().contiguous().t()) is None  # a strided weight
    assert bf16gemm.bf16_linear(x[:, :39], w) is None      # mismatched inner size
    xg = x.clone().requires_grad_()
    assert bf16gemm.bf16_linear(xg, w) is None            # autograd keeps torch's path


VERSIONS = {"4": {}, "5.2": {"head_size": 32}, "6.0": {"head_size": 32},
            "7.0": {"head_size": 32}}


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_sequence_path_of_a_bf16_model_runs_the_c_gemm(version, tmp_path, monkeypatch):
    """Each version's many-token products with bf16 weights go through bf16_linear, and give
    what fp32 products with the same bf16 weights give (the twin below upcasts them)."""
    if not bf16gemm.available():
        pytest.skip("no SIMD kernels here: the torch path runs")
    import importlib

    mod = importlib.import_module(f"chatrwkv.models.v{version[0]}")
    path = write_checkpoint(tmp_path / "m.pth", version, seed=2, n_layer=2, n_embd=128,
                            vocab_size=300, **VERSIONS[version])
    model = load_model(path, device="cpu", dtype="bf16")
    tokens = list(range(1, 41))
    calls = []

    def counted(x, w):
        y = bf16gemm.bf16_linear(x, w)
        many = x.dim() > 1 and x.numel() > x.shape[-1]
        if many and x.dtype == torch.float32 and w.dtype == torch.bfloat16:
            calls.append(y is not None)
        return y

    def twin(x, w):
        if x.dtype != torch.float32 or w.dtype != torch.bfloat16 or x.dim() < 2:
            return None
        return F.linear(x, w.float())

    with torch.inference_mode():
        monkeypatch.setattr(mod, "bf16_linear", counted)
        got = model.forward(tokens, model.zero_state())
        monkeypatch.setattr(mod, "bf16_linear", twin)
        want = model.forward(tokens, model.zero_state())
    assert calls and all(calls)
    assert (got - want).abs().max().item() < 1e-4
