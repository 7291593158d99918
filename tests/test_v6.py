"""RWKV v6 engine: parity with the official `rwkv` package, chunked WKV == per-token WKV."""

from __future__ import annotations

import pytest
import torch

from chatrwkv.checkpoint import Checkpoint
from chatrwkv.errors import CheckpointError, StateFileError
from chatrwkv.models import detect_version, load_model
from chatrwkv.models.v6 import RWKV6, _wkv_chunked, _wkv_recurrent
from chatrwkv.state import WKVState
from chatrwkv.synth import make_weights, write_checkpoint
from tests.reference import greedy_both, load_reference

DIMS = {"n_layer": 2, "n_embd": 64, "vocab_size": 300, "head_size": 16,
        "mix_lora": 8, "decay_lora": 12}
LOGIT_TOL = 1e-4   # fp32 vs the reference's cpu fp32 (measured ~2e-6, logits up to ~7)
STATE_TOL = 1e-4   # WKV entries reach ~20
BF16_TOL = 0.1     # bf16 weights (fp32 compute) vs fp32 weights (measured ~0.02)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def ckpt_path(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("v6") / "m.pth", "6.0", seed=1, **DIMS)


@pytest.fixture(scope="module")
def ref(ckpt_path):
    return load_reference(ckpt_path, "6.0")


@pytest.fixture(scope="module")
def model(ckpt_path):
    return load_model(ckpt_path, device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def prompt():
    g = torch.Generator().manual_seed(7)
    return torch.randint(0, DIMS["vocab_size"], (33,), generator=g).tolist()


def _ref_list(state: WKVState) -> list[torch.Tensor]:
    """Our typed state as the reference's flat list [att_x, wkv, ffn_x] * L."""
    return [t for i in range(state.att_x.shape[0])
            for t in (state.att_x[i].clone(), state.wkv[i].clone(), state.ffn_x[i].clone())]


def _state_dev(state: WKVState, ref_state: list[torch.Tensor]) -> float:
    return max((a - b).abs().max().item() for a, b in zip(_ref_list(state), ref_state))


def _rnn(model, tokens, state):
    return torch.stack([model.forward([t], state) for t in tokens])


# --- layout ---------------------------------------------------------------------------------

def test_detect_and_config(ckpt_path):
    ckpt = Checkpoint.open(ckpt_path)
    assert RWKV6.detect(ckpt) == "6.0"
    assert detect_version(ckpt) == (RWKV6, "6.0")
    m = RWKV6(ckpt, CPU, "fp32")
    c = m.config
    assert (c.version, c.n_layer, c.n_embd, c.vocab_size) == ("6.0", 2, 64, 300)
    assert (c.n_head, c.head_size, c.ffn_dim, c.mix_lora, c.decay_lora) == (4, 16, 224, 8, 12)
    w = make_weights("6.0", **DIMS)
    v5ish = {k: t for k, t in w.items() if "time_maa" not in k}
    assert RWKV6.detect(Checkpoint("v5.pth", v5ish)) is None
    assert RWKV6.detect(Checkpoint("v7.pth", {**w, "blocks.0.att.x_r": w["ln_out.bias"]})) is None


@pytest.mark.parametrize("key", ["blocks.1.att.time_decay_w2", "blocks.0.att.time_maa_g",
                                 "blocks.1.ffn.time_maa_r", "blocks.0.ln0.bias", "head.weight"])
def test_missing_tensor_is_named(key):
    w = make_weights("6.0", **DIMS)
    del w[key]
    with pytest.raises(CheckpointError, match=f"missing tensor '{key}'"):
        RWKV6(Checkpoint("m.pth", w), CPU, "fp32")


@pytest.mark.parametrize("key,shape", [("blocks.1.att.time_maa_w2", (5, 8, 32)),
                                       ("blocks.0.att.key.weight", (64, 63)),
                                       ("blocks.1.ffn.time_maa_k", (1, 1, 65)),
                                       ("blocks.0.att.time_faaaa", (4, 15))])
def test_wrong_shape_is_named(key, shape):
    w = make_weights("6.0", **DIMS)
    w[key] = torch.zeros(shape, dtype=torch.bfloat16)
    with pytest.raises(CheckpointError, match=f"'{key}' has shape"):
        RWKV6(Checkpoint("m.pth", w), CPU, "fp32")


def test_unexpected_tensor_is_refused():
    w = make_weights("6.0", **DIMS)
    w["blocks.1.att.time_mystery"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match="unexpected tensor 'blocks.1.att.time_mystery'"):
        RWKV6(Checkpoint("m.pth", w), CPU, "fp32")


def test_safetensors_gives_same_logits(tmp_path, model, prompt):
    st = write_checkpoint(tmp_path / "m.safetensors", "6.0", seed=1, **DIMS)
    other = load_model(st, device="cpu", dtype="fp32")
    assert torch.equal(other.forward(prompt, other.zero_state()),
                       model.forward(prompt, model.zero_state()))


# --- parity with the reference --------------------------------------------------------------

def test_matches_reference_in_both_modes(ref, model, prompt):
    with torch.inference_mode():
        ref_logits, ref_state = ref.forward(prompt, None)
        seq_state = model.zero_state()
        seq_logits = model.forward(prompt, seq_state)
        rnn_state = model.zero_state()
        rnn_logits = _rnn(model, prompt, rnn_state)[-1]
    dev_seq = (seq_logits - ref_logits).abs().max().item()
    dev_rnn = (rnn_logits - ref_logits).abs().max().item()
    print(f"\nv6 max |logit - reference|: sequence {dev_seq:.2e}, token-by-token {dev_rnn:.2e}; "
          f"state {_state_dev(seq_state, ref_state):.2e} / {_state_dev(rnn_state, ref_state):.2e}")
    assert dev_seq < LOGIT_TOL and dev_rnn < LOGIT_TOL
    assert _state_dev(seq_state, ref_state) < STATE_TOL
    assert _state_dev(rnn_state, ref_state) < STATE_TOL


def test_greedy_continuation_matches_reference(ref, model, prompt):
    ours, theirs = greedy_both(model, ref, prompt)
    assert ours == theirs
    assert len(set(ours)) > 1  # the continuation is not one token repeated


def test_time_state_matches_reference(tmp_path, prompt):
    path = write_checkpoint(tmp_path / "tuned.pth", "6.0", seed=3, time_state=True, **DIMS)
    ref = load_reference(path, "6.0")
    model = load_model(path, device="cpu", dtype="fp32")
    with torch.inference_mode():
        ref_logits, ref_state = ref.forward(prompt, None)
        state = model.zero_state()
        assert state.wkv.abs().sum() > 0
        logits = model.forward(prompt, state)
    assert (logits - ref_logits).abs().max() < LOGIT_TOL
    assert _state_dev(state, ref_state) < STATE_TOL


# --- fast paths against their twins ---------------------------------------------------------

def test_sequence_equals_rnn_for_every_chunk_len(ckpt_path, model, prompt):
    with torch.inference_mode():
        rnn_state = model.zero_state()
        rnn_logits = _rnn(model, prompt, rnn_state)
        for chunk_len in (1, 3, 7, 256):
            m = load_model(ckpt_path, device="cpu", dtype="fp32", chunk_len=chunk_len)
            state = m.zero_state()
            full = m.forward(prompt, state, full_output=True)
            assert full.shape == (len(prompt), DIMS["vocab_size"])
            assert (full - rnn_logits).abs().max() < 1e-4, chunk_len
            assert max((a - b).abs().max() for a, b in
                       zip(state.tensors().values(), rnn_state.tensors().values())) < 1e-4
            last = m.forward(prompt, m.zero_state())
            assert torch.allclose(last, full[-1], atol=1e-5)


@pytest.mark.parametrize("decay_shift", [-3.0, 0.0, 1.5, 3.5])  # 3.5: up to -e^4.5 per token
@pytest.mark.parametrize("T", [1, 16, 37])
@pytest.mark.parametrize("sub_len", [1, 4, 16])
def test_chunked_wkv_equals_recurrence(decay_shift, T, sub_len):
    g = torch.Generator().manual_seed(int(T + 10 * decay_shift))
    H, N = 3, 8
    r, k, v = (torch.randn(H, T, N, generator=g) for _ in range(3))
    w_log = -torch.exp(torch.randn(H, T, N, generator=g) + decay_shift)
    if decay_shift > 3:
        w_log[0, T // 2] = float("-inf")  # a decay that overflowed: the state is wiped
    u = torch.randn(H, N, generator=g) * 0.5
    s0 = torch.randn(H, N, N, generator=g)
    s_ref, s = s0.clone(), s0.clone()
    out_ref = _wkv_recurrent(r, k, v, w_log, u, s_ref)
    out = _wkv_chunked(r, k, v, w_log, u, s, sub_len=sub_len)
    assert torch.isfinite(out).all() and torch.isfinite(s).all()
    torch.testing.assert_close(out, out_ref, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(s, s_ref, atol=2e-5, rtol=1e-5)


# --- precision, state handling --------------------------------------------------------------

def test_bf16_weights_close_to_fp32(ckpt_path, model, prompt):
    m16 = load_model(ckpt_path, device="cpu", dtype="bf16")
    assert m16.head.dtype == torch.bfloat16
    with torch.inference_mode():
        ref = model.forward(prompt, model.zero_state())
        seq = m16.forward(prompt, m16.zero_state())
        state = m16.zero_state()
        rnn = _rnn(m16, prompt, state)[-1]
    dev = max((seq - ref).abs().max().item(), (rnn - ref).abs().max().item())
    print(f"\nv6 bf16 weights: max |logit - fp32| {dev:.3f}")
    assert torch.isfinite(seq).all() and dev < BF16_TOL
    assert state.wkv.dtype == torch.float32


def test_clone_is_independent_and_state_file_round_trips(tmp_path, ckpt_path, model, prompt):
    with torch.inference_mode():
        state = model.zero_state()
        model.forward(prompt, state)
        snap = state.clone()
        a = model.forward([5], state)
        b = model.forward([5], snap)
        assert torch.equal(a, b)  # the snapshot was untouched by the first forward
        state.save(tmp_path / "s.state", model.identity())
        loaded = WKVState.load(tmp_path / "s.state", model.identity())
        assert loaded.equal(state)
        assert torch.equal(model.forward([9], loaded), model.forward([9], state))
    other = load_model(write_checkpoint(tmp_path / "o.pth", "6.0", seed=2, **DIMS), device="cpu")
    with pytest.raises(StateFileError, match="another model"):
        WKVState.load(tmp_path / "s.state", other.identity())


def test_bad_tokens_are_refused(model):
    with pytest.raises(ValueError):
        model.forward([], model.zero_state())
    with pytest.raises(ValueError):
        model.forward([DIMS["vocab_size"]], model.zero_state())


# --- CUDA -----------------------------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_cuda_matches_cpu_fp32(tmp_path, prompt, dtype):
    # 7 layers so that fp16's halving of x after every 6th layer is exercised.
    path = write_checkpoint(tmp_path / "m.pth", "6.0", seed=4, **{**DIMS, "n_layer": 7})
    cpu = load_model(path, device="cpu", dtype="fp32")
    gpu = load_model(path, device="cuda", dtype=dtype, chunk_len=16)
    with torch.inference_mode():
        want = cpu.forward(prompt, cpu.zero_state())
        state = gpu.zero_state()
        seq = gpu.forward(prompt, state).cpu()
        rnn = _rnn(gpu, prompt, gpu.zero_state())[-1].cpu()
        ref = load_reference(path, "6.0", f"cuda {dtype}")
        ref_logits, _ = ref.forward(prompt, None)
    assert state.wkv.dtype == torch.float32 and state.wkv.is_cuda
    tol = 0.1 if dtype == "fp16" else 0.3
    for got in (seq, rnn, ref_logits.cpu()):
        assert (got - want).abs().max() < tol


V6_LORAS = ("maa_w1", "maa_w2", "decay_w1", "decay_w2")


def _v6_loras(model):
    return [getattr(att, n) for att, _, _ in model.layers for n in V6_LORAS]


@pytest.mark.parametrize("dtype", ["bf16", "int8", "int4"])
def test_cpu_lora_matrices_stay_bf16_with_fp32_activations(ckpt_path, dtype):
    # As v7's: the file's bf16 LoRAs kept as they are next to 16-bit or narrower weights, and
    # widened in every product (they were ~9% of an int4 token's bytes at 1.6B in fp32).
    from tests.cpu_step_helpers import check_bf16_loras

    def upcast(twin):
        twin.layers = [(att._replace(**{n: getattr(att, n).float() for n in V6_LORAS}),
                        ffn, tuned) for att, ffn, tuned in twin.layers]

    check_bf16_loras(ckpt_path, dtype, _v6_loras, upcast, 2e-5)


def test_fp32_keeps_fp32_lora_matrices(ckpt_path):
    model = load_model(ckpt_path, device="cpu", dtype="fp32")
    assert all(t.dtype == torch.float32 for t in _v6_loras(model))
