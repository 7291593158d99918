"""The C one-token step of RWKV v7 (`_v7cpu.c`) against its torch twin, for every weight dtype,
with and without SIMD, with any thread count; and the huge-page weight arena."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from chatrwkv.models import load_model, v7_cpu
from chatrwkv.models.arena import ALIGN, Arena
from chatrwkv.synth import write_checkpoint
from tests.cpu_step_helpers import compare, dev, fast, simd_fixture, steps

pytestmark = pytest.mark.skipif(not v7_cpu.available(), reason="C extension not built")

# Odd sizes on purpose: rows that are no multiple of the 32-wide SIMD loop, a head size of 24,
# LoRA widths the synth picks for C = 72; and the official-like 64-wide heads.
SHAPES = {"odd": {"n_layer": 2, "n_embd": 72, "vocab_size": 301, "head_size": 24},
          "heads64": {"n_layer": 3, "n_embd": 128, "vocab_size": 500, "head_size": 64}}
TOKENS = torch.randint(0, 300, (24,), generator=torch.Generator().manual_seed(3)).tolist()
SAME_TOL = 2e-5  # C vs torch on the same fp32 weights: the same sums in other orders


@pytest.fixture(scope="module", params=sorted(SHAPES))
def ckpt_path(request, tmp_path_factory):
    d = tmp_path_factory.mktemp("v7cpu")
    return write_checkpoint(d / f"{request.param}.pth", "7.0", seed=5, **SHAPES[request.param])


simd = simd_fixture(v7_cpu)


def test_fp32_step_equals_torch_twin(ckpt_path, simd):
    m = load_model(ckpt_path, device="cpu", dtype="fp32")
    compare(fast(m), m._forward_one_torch, m, m, TOKENS, SAME_TOL)
    assert m._c_step is not None  # the C step did run


def test_bf16_step_equals_fp32_twin_on_the_same_values(ckpt_path, simd):
    # The synth file is bf16, so the fp32 model holds exactly the bf16 values: the C bf16 step
    # (fp32 activations) must match the torch fp32 step to fp32 rounding.
    m16 = load_model(ckpt_path, device="cpu", dtype="bf16")
    m32 = load_model(ckpt_path, device="cpu", dtype="fp32")
    assert m16.layers[0].R.dtype == torch.bfloat16
    compare(fast(m16), m32._forward_one_torch, m16, m32, TOKENS, SAME_TOL)


def test_int8_step_equals_dequantized_twin(ckpt_path, simd):
    m8 = load_model(ckpt_path, device="cpu", dtype="int8")
    twin = load_model(ckpt_path, device="cpu", dtype="fp32")
    big = ("R", "K", "V", "O", "ffn_K", "ffn_V")
    twin.layers = tuple(dataclasses.replace(p, **{n: getattr(q, n).dequantize() for n in big})
                        for p, q in zip(twin.layers, m8.layers))
    twin.head = m8.head.dequantize()
    compare(fast(m8), twin._forward_one_torch, m8, twin, TOKENS, SAME_TOL)


def test_int4_step_equals_dequantized_twin(ckpt_path, simd):
    m4 = load_model(ckpt_path, device="cpu", dtype="int4")
    twin = load_model(ckpt_path, device="cpu", dtype="fp32")
    big = ("R", "K", "V", "O", "ffn_K", "ffn_V")
    twin.layers = tuple(dataclasses.replace(p, **{n: getattr(q, n).dequantize() for n in big})
                        for p, q in zip(twin.layers, m4.layers))
    twin.head = m4.head.dequantize()
    compare(fast(m4), twin._forward_one_torch, m4, twin, TOKENS, SAME_TOL)
    assert m4._c_step is not None


@pytest.mark.parametrize("dtype", ["fp32", "int4"])
def test_thread_counts_give_identical_results(ckpt_path, dtype):
    # Every output element is one thread's dot product, whichever thread takes its chunk (int4:
    # chunks are whole fours of rows, so a row takes the same kernel at any thread count). The
    # pool deals chunks out of n contiguous runs (ck_chunk_order): a chunk run twice or never
    # would change the logits at some n.
    m = load_model(ckpt_path, device="cpu", dtype=dtype)
    results = []
    for n in (1, 2, 3, 4):
        step = v7_cpu.build(m, n_threads=n)
        assert step.n_threads == n
        results.append(steps(step.step, m, TOKENS[:8]))
    for logits, state in results[1:]:
        assert torch.equal(logits, results[0][0])
        assert torch.equal(state.wkv, results[0][1].wkv)


def test_fallbacks_to_torch(ckpt_path):
    m = load_model(ckpt_path, device="cpu", dtype="fp32")
    # A state the C side cannot write into (not contiguous) runs through torch, same result.
    state = m.zero_state()
    odd = dataclasses.replace(state, wkv=state.wkv.transpose(-1, -2).contiguous().mT)
    assert not odd.wkv.is_contiguous()
    with torch.inference_mode():
        a = m.forward([TOKENS[0]], odd)
        b = m.forward([TOKENS[0]], m.zero_state())
    assert dev(a, b) < SAME_TOL
    # With gradients wanted, the torch path runs: its logits carry a graph; C's could not.
    w = m.layers[0].R.requires_grad_()
    assert m.forward([TOKENS[0]], m.zero_state()).requires_grad
    w.requires_grad_(False)


def test_token_outside_vocabulary_is_one_error(ckpt_path):
    m = load_model(ckpt_path, device="cpu", dtype="fp32")
    with torch.inference_mode(), pytest.raises(IndexError, match="outside the vocabulary"):
        m.forward([m.config.vocab_size], m.zero_state())


def test_arena_hands_out_aligned_disjoint_tensors():
    shapes = [((3, 5), torch.float32), ((7,), torch.int8), ((2, 2), torch.bfloat16)]
    arena = Arena(sum(Arena.nbytes(s, d) for s, d in shapes))
    ts = [arena.take(s, d) for s, d in shapes]
    for t, (s, d) in zip(ts, shapes):
        assert t.shape == s and t.dtype == d and t.data_ptr() % ALIGN == 0
        t.fill_(1)
    assert ts[0].sum().item() == 15  # writing one did not touch another
    ends = sorted((t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()) for t in ts)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(ends))
    with pytest.raises(ValueError, match="full"):
        arena.take((1,), torch.float32)


# --- the time mix's recurrence over a sequence (_v7wkv.h): the prefill's -----------------------

def _time_mix_inputs(B, T, H, N, seed=0):
    g = torch.Generator().manual_seed(seed)
    C = H * N
    r, k, v, gate = (torch.randn(B, T, C, generator=g) for _ in range(4))
    iclr = torch.rand(B, T, C, generator=g)
    w = torch.exp(-0.6065 * torch.rand(B, T, C, generator=g))  # the model's decay range
    S = 0.3 * torch.randn(B, H, N, N, generator=g)
    vecs = tuple(torch.randn(C, generator=g) for _ in range(5))  # k_k, k_a, r_k, ln_x w, b
    return S, (r, w, k, v, iclr, gate), vecs


def _time_mix_reference(S, ins, vecs, H, N):
    """v7.py's torch time mix between the projections, in float64, on the plain recurrence."""
    from chatrwkv.models.v7 import LN_X_EPS, wkv_loop

    r, w, k, v, a, g = (t.double() for t in ins)
    k_k, k_a, r_k, ln_w, ln_b = (t.double() for t in vecs)
    B, T, C = r.shape
    kk = torch.nn.functional.normalize((k * k_k).view(B, T, H, N), dim=-1).view(B, T, C)
    k = k * (1 + (a - 1) * k_a)

    def heads(t):  # [B, T, C] -> [B, H, T, N]
        return t.view(B, T, H, N).transpose(1, 2)

    y, s = wkv_loop(S.double(), heads(r), heads(w.log()), heads(k), heads(v), heads(-kk),
                    heads(kk * a))
    y = torch.nn.functional.layer_norm(y.transpose(1, 2), (N,), eps=LN_X_EPS)
    y = y * ln_w.view(H, N) + ln_b.view(H, N)
    y = y + (r * k * r_k).view(B, T, H, N).sum(-1, keepdim=True) * v.view(B, T, H, N)
    return y.reshape(B, T, C) * g, s


# N = 64 (the official head), 16 and 48 (AVX-512's generic width), 24 (AVX2 only), 6 (scalar).
@pytest.mark.parametrize("N", [64, 16, 48, 24, 6])
@pytest.mark.parametrize("threads", [1, 2])
def test_sequence_time_mix_equals_the_plain_recurrence(simd, N, threads, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    B, T, H = 2, 37, 3
    S, ins, vecs = _time_mix_inputs(B, T, H, N)
    y_ref, s_ref = _time_mix_reference(S, ins, vecs, H, N)
    s = S.clone()
    with torch.inference_mode():
        y = v7_cpu.time_mix_seq(s, *ins, vecs)
    assert y.shape == (B, T, H * N) and y.dtype == torch.float32
    assert (y.double() - y_ref).abs().max() < 1e-5 * y_ref.abs().max()
    assert (s.double() - s_ref).abs().max() < 1e-5 * s_ref.abs().max()


def test_sequence_time_mix_declines_what_it_cannot_run():
    S, ins, vecs = _time_mix_inputs(1, 5, 2, 8)
    assert v7_cpu.time_mix_seq(S.double(), *ins, vecs) is None  # not fp32
    assert v7_cpu.time_mix_seq(S.mT, *ins, vecs) is None  # a state it cannot write in place
    r = ins[0].clone().requires_grad_()
    assert v7_cpu.time_mix_seq(S, r, *ins[1:], vecs) is None  # gradients wanted
    assert v7_cpu.time_mix_seq(S, *ins, vecs[:4] + (vecs[4].double(),)) is None  # a vector
    s = S.clone()
    assert v7_cpu.time_mix_seq(s, *ins, vecs) is not None and not torch.equal(s, S)


def test_sequence_time_mix_runs_in_prefill_and_agrees_with_torch(ckpt_path, monkeypatch):
    m = load_model(ckpt_path, device="cpu", dtype="fp32")
    calls = []
    real = v7_cpu.time_mix_seq
    monkeypatch.setattr(v7_cpu, "time_mix_seq", lambda *a: calls.append(1) or real(*a))
    with torch.inference_mode():
        s_c = m.zero_state()
        logits_c = m.forward(TOKENS, s_c, full_output=True)
    assert len(calls) == m.config.n_layer  # one call a layer: the C time mix ran
    with torch.no_grad():
        monkeypatch.setattr(v7_cpu, "time_mix_seq", lambda *a: None)  # unavailable: torch
        s_t = m.zero_state()
        logits_t = m.forward(TOKENS, s_t, full_output=True)
    assert dev(logits_c, logits_t) < SAME_TOL
    assert (s_c.wkv - s_t.wkv).abs().max() < 1e-4 * s_t.wkv.abs().max()
