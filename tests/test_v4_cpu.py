"""The C one-token step of RWKV v4 (`_v4cpu.c`) against its torch twin, for every weight dtype,
with and without SIMD, with any thread count."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from chatrwkv.checkpoint import Checkpoint
from chatrwkv.models import load_model, v4_cpu
from chatrwkv.models.quant import Int4Linear, Int8Linear
from chatrwkv.models.v4 import RWKV4
from chatrwkv.synth import write_checkpoint
from tests.cpu_step_helpers import compare, dev, fast, simd_fixture, steps

pytestmark = pytest.mark.skipif(not v4_cpu.available(), reason="C extension not built")

# Odd sizes on purpose: rows that are no multiple of the 32-wide SIMD loop and a C that is no
# multiple of the WKV chunk; and a C of two full WKV chunks plus a partial one.
SHAPES = {"odd": {"n_layer": 2, "n_embd": 72, "vocab_size": 301},
          "wide": {"n_layer": 3, "n_embd": 320, "vocab_size": 500}}
TOKENS = torch.randint(0, 300, (24,), generator=torch.Generator().manual_seed(3)).tolist()
SAME_TOL = 2e-5  # C vs torch on the same fp32 weights: the same sums in other orders
MATS = ("att_key", "att_value", "att_receptance", "att_output", "ffn_key", "ffn_receptance",
        "ffn_value")


@pytest.fixture(scope="module", params=sorted(SHAPES))
def ckpt_path(request, tmp_path_factory):
    d = tmp_path_factory.mktemp("v4cpu")
    return write_checkpoint(d / f"{request.param}.pth", "4", seed=5, **SHAPES[request.param])


simd = simd_fixture(v4_cpu)


def _fp32_twin(path, model):
    """An fp32 model holding exactly `model`'s weights (the synth file is bf16; int8 and int4
    matrices are dequantized), so that only the order of sums differs from the C step."""
    twin = load_model(path, device="cpu", dtype="fp32")
    quantized = (Int8Linear, Int4Linear)
    twin.layers = tuple(
        w._replace(**{n: getattr(q, n).dequantize() for n in MATS
                      if isinstance(getattr(q, n), quantized)})
        for w, q in zip(twin.layers, model.layers))
    if isinstance(model.head, quantized):
        twin.head = model.head.dequantize()
    twin.emb = model.emb
    return twin


def test_fp32_step_equals_torch_twin(ckpt_path, simd):
    m = load_model(ckpt_path, device="cpu", dtype="fp32")
    assert m.layers[0].att_key.is_contiguous()  # row-major in the arena, as C reads it
    compare(fast(m), m._forward_one_torch, m, m, TOKENS, SAME_TOL)
    assert m._c_step is not None  # the C step did run


def test_bf16_step_equals_fp32_twin_on_the_same_values(ckpt_path, simd):
    # The C bf16 step keeps fp32 activations, so it matches the fp32 torch step on the same
    # (bf16-representable) values to fp32 rounding.
    m16 = load_model(ckpt_path, device="cpu", dtype="bf16")
    assert m16.layers[0].att_key.dtype == torch.bfloat16 and m16.emb.dtype == torch.bfloat16
    twin = _fp32_twin(ckpt_path, m16)
    compare(fast(m16), twin._forward_one_torch, m16, twin, TOKENS, SAME_TOL)
    assert m16._c_step is not None


def test_int8_step_equals_dequantized_twin(ckpt_path, simd):
    m8 = load_model(ckpt_path, device="cpu", dtype="int8")
    assert m8.layers[0].ffn_key.q is not None  # the plain rows stay for C
    twin = _fp32_twin(ckpt_path, m8)
    compare(fast(m8), twin._forward_one_torch, m8, twin, TOKENS, SAME_TOL)
    assert m8._c_step is not None



def test_int4_step_equals_dequantized_twin(ckpt_path, simd):
    m4 = load_model(ckpt_path, device="cpu", dtype="int4")
    assert isinstance(m4.layers[0].ffn_key, Int4Linear) and isinstance(m4.head, Int4Linear)
    twin = _fp32_twin(ckpt_path, m4)
    compare(fast(m4), twin._forward_one_torch, m4, twin, TOKENS, SAME_TOL)
    assert m4._c_step is not None


@pytest.mark.parametrize("emb_dtype", [torch.float32, torch.float16])
def test_embedding_dtypes_of_an_fp32_model(tmp_path, emb_dtype):
    # An fp32 model keeps the file's embedding dtype: fp32 and fp16 files (bf16: above).
    path = write_checkpoint(tmp_path / "m.pth", "4", seed=6, dtype=emb_dtype,
                            **SHAPES["odd"])
    m = load_model(path, device="cpu", dtype="fp32")
    assert m.emb.dtype == emb_dtype
    compare(fast(m), m._forward_one_torch, m, m, TOKENS, SAME_TOL)
    assert m._c_step is not None


def test_thread_counts_give_identical_results(ckpt_path):
    # Every output element is one thread's work, whichever thread takes its chunk.
    m = load_model(ckpt_path, device="cpu", dtype="fp32")
    results = []
    for n in (1, 2, 3):
        step = v4_cpu.build(m, n_threads=n)
        assert step.n_threads == n
        results.append(steps(step.step, m, TOKENS[:8]))
    for logits, state in results[1:]:
        assert torch.equal(logits, results[0][0])
        assert state.equal(results[0][1])


def test_fallbacks_to_torch(ckpt_path):
    m = load_model(ckpt_path, device="cpu", dtype="fp32")
    # A state the C side cannot write into (not contiguous) runs through torch, same result.
    state = m.zero_state()
    odd = dataclasses.replace(state, att_num=state.att_num.t().contiguous().t())
    assert not odd.att_num.is_contiguous()
    assert m._c_step is None or not m._c_step.accepts(odd)
    with torch.inference_mode():
        a = m.forward([TOKENS[0]], odd)
        b = m.forward([TOKENS[0]], m.zero_state())
    assert dev(a, b) < SAME_TOL * max(b.abs().max().item(), 1.0)
    assert odd.att_num.abs().max() > 0  # the torch path advanced it in place
    # With gradients wanted, the torch path runs: its logits carry a graph; C's could not.
    w = m.layers[0].att_receptance.requires_grad_()
    assert m.forward([TOKENS[0]], m.zero_state()).requires_grad
    w.requires_grad_(False)


def test_fp16_weights_keep_torch(tmp_path):
    # fp16 weights are rescaled by layer with the residual halved: the C step does not take them.
    path = write_checkpoint(tmp_path / "m.pth", "4", seed=7, **SHAPES["odd"])
    fp16 = RWKV4(Checkpoint.open(path), torch.device("cpu"), "fp16")
    assert v4_cpu.build(fp16) is None
    with torch.inference_mode():
        assert torch.isfinite(fp16.forward([TOKENS[0]], fp16.zero_state())).all()


def test_token_outside_vocabulary_is_one_error(ckpt_path):
    m = load_model(ckpt_path, device="cpu", dtype="fp32")
    with pytest.raises(ValueError, match="out of range"):
        m.forward([m.config.vocab_size], m.zero_state())
    step = v4_cpu.build(m)
    for token in (-1, m.config.vocab_size):
        with pytest.raises(IndexError, match="outside the vocabulary"):
            step.step(token, m.zero_state())
