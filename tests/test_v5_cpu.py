"""The C one-token step of RWKV v5 (`_v5cpu.c`) against its torch twin, for the sub-versions
5.0, 5.1 and 5.2, every weight dtype, with and without SIMD, with any thread count; and where
it declines."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from chatrwkv.checkpoint import Checkpoint
from chatrwkv.models import load_model, v5_cpu
from chatrwkv.models.quant import Int4Linear, Int8Linear
from chatrwkv.models.v5 import RWKV5
from chatrwkv.synth import write_checkpoint
from tests.cpu_step_helpers import compare, dev, fast, simd_fixture, steps

pytestmark = pytest.mark.skipif(not v5_cpu.available(), reason="C extension not built")

# Odd sizes on purpose (rows no multiple of the SIMD loops, a head size of 12: 8 + a tail of 4
# in the AVX2 head update; an odd FFN), the three sub-versions, and official-like 64-wide heads.
ODD = {"n_layer": 2, "n_embd": 72, "vocab_size": 301, "head_size": 12, "ffn_dim": 250}
CASES = {"5.0-odd": ("5.0", ODD), "5.1-odd": ("5.1", ODD), "5.2-odd": ("5.2", ODD),
         "5.2-heads64": ("5.2", {"n_layer": 3, "n_embd": 128, "vocab_size": 500,
                                 "head_size": 64})}
TOKENS = torch.randint(0, 300, (24,), generator=torch.Generator().manual_seed(3)).tolist()
SAME_TOL = 2e-5  # C vs torch on the same fp32 weights: the same sums in other orders


@pytest.fixture(scope="module", params=sorted(CASES))
def ckpt_path(request, tmp_path_factory):
    version, dims = CASES[request.param]
    d = tmp_path_factory.mktemp("v5cpu")
    return write_checkpoint(d / f"{request.param}.pth", version, seed=5, **dims)


simd = simd_fixture(v5_cpu)


def _twin(path, model) -> RWKV5:
    """An fp32 model of the same file whose big matrices are `model`'s, dequantized: the torch
    twin of a quantized model's C step (the synth file is bf16, so bf16 needs no replacing)."""
    twin = load_model(path, device="cpu", dtype="fp32")
    twin.blocks = tuple(dataclasses.replace(t, **{
        f.name: getattr(b, f.name).dequantize() for f in dataclasses.fields(b)
        if isinstance(getattr(b, f.name), (Int8Linear, Int4Linear))})
        for b, t in zip(model.blocks, twin.blocks))
    twin.head = model.head.dequantize()
    return twin


def test_fp32_step_equals_torch_twin(ckpt_path, simd):
    m = load_model(ckpt_path, device="cpu", dtype="fp32")
    compare(fast(m), m._forward_one_torch, m, m, TOKENS, SAME_TOL)
    assert m._c_step is not None  # the C step did run


def test_bf16_step_equals_fp32_twin_on_the_same_values(ckpt_path, simd):
    # The synth file is bf16, so the fp32 model holds exactly the bf16 values: the C bf16 step
    # (fp32 activations) must match the torch fp32 step to fp32 rounding.
    m16 = load_model(ckpt_path, device="cpu", dtype="bf16")
    m32 = load_model(ckpt_path, device="cpu", dtype="fp32")
    assert m16.blocks[0].receptance.dtype == torch.bfloat16
    assert m16.emb.dtype == torch.bfloat16
    compare(fast(m16), m32._forward_one_torch, m16, m32, TOKENS, SAME_TOL)
    assert m16._c_step is not None


@pytest.mark.parametrize("dtype,kind", [("int8", Int8Linear), ("int4", Int4Linear)])
def test_quantized_step_equals_dequantized_twin(ckpt_path, simd, dtype, kind):
    m = load_model(ckpt_path, device="cpu", dtype=dtype)
    assert isinstance(m.blocks[0].ffn_value, kind) and isinstance(m.head, kind)
    twin = _twin(ckpt_path, m)
    compare(fast(m), twin._forward_one_torch, m, twin, TOKENS, SAME_TOL)
    assert m._c_step is not None


def test_the_c_step_continues_a_prefilled_state(ckpt_path):
    # Prefill (the sequence path) then decode in C: as if torch had decoded.
    m = load_model(ckpt_path, device="cpu", dtype="fp32")
    with torch.inference_mode():
        s_c, s_t = m.zero_state(), m.zero_state()
        m.forward(TOKENS[:10], s_c)
        m.forward(TOKENS[:10], s_t)
        for t in TOKENS[10:14]:
            a, b = m.forward([t], s_c), m._forward_one_torch(t, s_t)
            assert dev(a, b) < SAME_TOL * max(b.abs().max().item(), 1.0)
    assert m._c_step is not None


@pytest.mark.parametrize("dtype", ["fp32", "int4"])
def test_thread_counts_give_identical_results(ckpt_path, dtype):
    # Every output element is one thread's work, whichever thread takes its chunk (int4: chunks
    # are whole fours of rows, so a row takes the same kernel at any thread count).
    m = load_model(ckpt_path, device="cpu", dtype=dtype)
    results = []
    for n in (1, 2, 3):
        step = v5_cpu.build(m, n_threads=n)
        assert step.n_threads == n
        results.append(steps(step.step, m, TOKENS[:8]))
    for logits, state in results[1:]:
        assert torch.equal(logits, results[0][0])
        for name, t in state.tensors().items():
            assert torch.equal(t, getattr(results[0][1], name)), name


def test_fallbacks_to_torch(ckpt_path):
    m = load_model(ckpt_path, device="cpu", dtype="fp32")
    # A state the C side cannot write into (not contiguous) runs through torch, same result.
    state = m.zero_state()
    odd = dataclasses.replace(state, wkv=state.wkv.transpose(-1, -2).contiguous().mT)
    assert not odd.wkv.is_contiguous()
    with torch.inference_mode():
        a = m.forward([TOKENS[0]], odd)
        b = m.forward([TOKENS[0]], m.zero_state())
    assert m._c_step is not None and not m._c_step.accepts(odd)
    assert dev(a, b) < SAME_TOL * max(b.abs().max().item(), 1.0)
    assert odd.wkv.abs().max() > 0  # the torch path advanced it in place
    # With gradients wanted, the torch path runs: its logits carry a graph; C's could not.
    w = m.blocks[0].receptance.requires_grad_()
    assert m.forward([TOKENS[0]], m.zero_state()).requires_grad
    w.requires_grad_(False)


def test_fp16_weights_keep_torch(ckpt_path):
    # fp16 halves the residual every 6 layers, with matching weight scales: not the C step's.
    fp16 = RWKV5(Checkpoint.open(ckpt_path), torch.device("cpu"), "fp16")
    assert v5_cpu.build(fp16) is None


def test_a_layout_it_does_not_know_keeps_torch(ckpt_path):
    # A gated layer must carry the gate's mix (and an ungated one must not): else torch runs.
    m = load_model(ckpt_path, device="cpu", dtype="fp32")
    b = m.blocks[0]
    rows = 3 if b.gate is not None else 4
    m.blocks = (dataclasses.replace(b, att_mix=torch.zeros(rows, m.config.n_embd)),
                *m.blocks[1:])
    assert v5_cpu.build(m) is None


def test_engine_path_names_the_c_step(ckpt_path):
    m = load_model(ckpt_path, device="cpu", dtype="int8")
    assert m.engine_path.startswith("C step (")


def test_token_outside_vocabulary_is_one_error(ckpt_path):
    m = load_model(ckpt_path, device="cpu", dtype="fp32")
    step = v5_cpu.build(m)
    for token in (-1, m.config.vocab_size):
        with pytest.raises(IndexError, match="outside the vocabulary"):
            step.step(token, m.zero_state())


def test_without_the_extension_torch_runs_and_says_why(ckpt_path, monkeypatch):
    monkeypatch.setattr(v5_cpu.C_STEP, "module", None)
    monkeypatch.setattr(v5_cpu.C_STEP, "error", "no compiler")
    m = load_model(ckpt_path, device="cpu", dtype="int8")
    assert not m.has_c_step
    assert m.engine_path == "torch fallback (C extension not built: no compiler)"
    with torch.inference_mode():
        assert torch.isfinite(m.forward([TOKENS[0]], m.zero_state())).all()
