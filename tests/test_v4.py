"""RWKV v4: parity with the official `rwkv` package, and our fast paths against their slow twins."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from chatrwkv.checkpoint import Checkpoint
from chatrwkv.errors import CheckpointError, StateFileError
from chatrwkv.models import detect_version, load_model
from chatrwkv.models.v4 import RWKV4, V4State, wkv_loop, wkv_parallel
from chatrwkv.synth import make_weights, write_checkpoint
from tests.reference import greedy_both, load_reference

FIELDS = ("att_x", "att_num", "att_den", "att_max", "ffn_x")  # the reference's 5 per layer
LOGIT_ATOL = 1e-4        # cpu fp32 vs the reference (measured ~1e-6)
STATE_RTOL = STATE_ATOL = 1e-4
BF16_LOGIT_ATOL = 0.1    # bf16 weights vs fp32 weights, logits of std ~1 (measured ~0.015)
FP16_LOGIT_ATOL = 0.05   # fp16 weights vs fp32 (measured ~0.002; a broken rescale gives ~0.9)
SMALL = {"n_layer": 3, "n_embd": 64, "vocab_size": 500}
PILE = {"n_layer": 2, "n_embd": 64, "vocab_size": 50277}

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _prompt(n: int, vocab: int, seed: int = 0) -> list[int]:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _ref_state(ours: V4State) -> list[torch.Tensor]:
    return [getattr(ours, f)[i].clone() for i in range(ours.att_x.shape[0]) for f in FIELDS]


def _from_ref(flat: list[torch.Tensor], n_layer: int) -> V4State:
    return V4State(**{f: torch.stack([flat[i * 5 + j].float().cpu() for i in range(n_layer)])
                      for j, f in enumerate(FIELDS)})


def _assert_state_close(ours: V4State, theirs: V4State) -> None:
    for f in FIELDS:
        torch.testing.assert_close(getattr(ours, f), getattr(theirs, f),
                                   rtol=STATE_RTOL, atol=STATE_ATOL, msg=f"state field {f}")


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> object:
    return write_checkpoint(tmp_path_factory.mktemp("v4") / "small.pth", "4", seed=1, **SMALL)


@pytest.fixture(scope="module")
def model(small):
    return load_model(small, device="cpu", dtype="fp32")


@pytest.mark.parametrize("dims", [SMALL, PILE], ids=["small-vocab", "pile-vocab"])
def test_logits_and_state_match_reference(tmp_path, dims):
    path = write_checkpoint(tmp_path / "m.pth", "4", seed=2, **dims)
    ours, ref = load_model(path, device="cpu", dtype="fp32"), load_reference(path, "4")
    prompt = _prompt(32, dims["vocab_size"])
    with torch.inference_mode():
        ref_logits, ref_flat = ref.forward(prompt, None)
        seq_state = ours.zero_state()
        seq_logits = ours.forward(prompt, seq_state)
        rnn_state = ours.zero_state()
        for token in prompt:
            rnn_logits = ours.forward([token], rnn_state)
    ref_state = _from_ref(ref_flat, dims["n_layer"])
    for mode, logits, state in (("seq", seq_logits, seq_state), ("rnn", rnn_logits, rnn_state)):
        dev = (logits - ref_logits).abs().max().item()
        print(f"v4 {dims['vocab_size']} vocab, {mode} mode: max |logit - reference| = {dev:.3g}")
        assert logits.shape == (dims["vocab_size"],) and logits.dtype == torch.float32
        assert dev < LOGIT_ATOL
        _assert_state_close(state, ref_state)


def test_greedy_continuation_matches_reference(small, model):
    ref = load_reference(small, "4")
    prompt = _prompt(24, SMALL["vocab_size"], seed=3)
    ours, theirs = greedy_both(model, ref, prompt)
    assert ours == theirs
    assert len(set(ours)) > 1  # the random model does not just repeat one token


def test_reference_state_round_trips_into_ours(model, small):
    # Our state converted to the reference's list continues there exactly like here.
    ref = load_reference(small, "4")
    prompt = _prompt(20, SMALL["vocab_size"], seed=4)
    with torch.inference_mode():
        state = model.zero_state()
        model.forward(prompt[:-1], state)
        ref_logits, _ = ref.forward(prompt[-1:], _ref_state(state))
        logits = model.forward(prompt[-1:], state)
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=LOGIT_ATOL)


@pytest.mark.parametrize("chunk_len", [1, 3, 7, 256])
def test_chunk_len_and_full_output_match_token_by_token(small, model, chunk_len):
    prompt = _prompt(40, SMALL["vocab_size"], seed=5)
    chunked = load_model(small, device="cpu", dtype="fp32", chunk_len=chunk_len)
    with torch.inference_mode():
        rnn_state = model.zero_state()
        rnn = torch.stack([model.forward([t], rnn_state) for t in prompt])
        state = chunked.zero_state()
        full = chunked.forward(prompt, state, full_output=True)
        last_state = chunked.zero_state()
        last = chunked.forward(prompt, last_state)
    assert full.shape == (len(prompt), SMALL["vocab_size"])
    torch.testing.assert_close(full, rnn, rtol=0, atol=1e-5)
    torch.testing.assert_close(last, rnn[-1], rtol=0, atol=1e-5)
    _assert_state_close(state, rnn_state)
    assert state.equal(last_state)


@pytest.mark.parametrize("block", [1, 5, 16, 64])
def test_parallel_wkv_equals_loop(block):
    g = torch.Generator().manual_seed(6)
    T, C = 50, 24
    # Extreme but finite: keys up to +-40, decays from ~1 to ~5e3 per step, bonuses +-10.
    k = torch.randn(T, C, generator=g) * 15
    v = torch.randn(T, C, generator=g) * 3
    time_decay = -torch.exp(torch.linspace(-5, 8.5, C))
    time_first = torch.randn(C, generator=g) * 5
    for aa, bb, pp in ((torch.zeros(C), torch.zeros(C), torch.full((C,), -1e30)),
                       (torch.randn(C, generator=g), torch.rand(C, generator=g) + 0.5,
                        torch.randn(C, generator=g) * 20)):
        out_l, aa_l, bb_l, pp_l = wkv_loop(time_decay, time_first, k, v, aa, bb, pp)
        out_p, aa_p, bb_p, pp_p = wkv_parallel(time_decay, time_first, k, v, aa, bb, pp, block)
        assert torch.isfinite(out_p).all()
        torch.testing.assert_close(out_p, out_l, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(pp_p, pp_l, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(aa_p, aa_l, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(bb_p, bb_l, rtol=1e-4, atol=1e-5)


def test_bf16_weights_close_to_fp32(small, model):
    bf16 = load_model(small, device="cpu", dtype="bf16")
    prompt = _prompt(30, SMALL["vocab_size"], seed=7)
    with torch.inference_mode():
        ref = model.forward(prompt, model.zero_state())
        seq_state = bf16.zero_state()
        seq = bf16.forward(prompt, seq_state)
        rnn_state, twin_state = bf16.zero_state(), bf16.zero_state()
        for t in prompt:
            rnn = bf16.forward([t], rnn_state)  # the C step where built: fp32 activations
            twin = bf16._forward_one_torch(t, twin_state)
    dev = (seq - ref).abs().max().item()
    print(f"v4 cpu bf16 weights: max |logit - fp32| = {dev:.3g}")
    assert seq.dtype == torch.float32 and torch.isfinite(seq).all()
    assert dev < BF16_LOGIT_ATOL and (rnn - ref).abs().max().item() < BF16_LOGIT_ATOL
    assert all(getattr(seq_state, f).dtype == torch.float32 for f in FIELDS)
    # The torch paths round the same matmul inputs, so they agree much more closely.
    torch.testing.assert_close(twin, seq, rtol=0, atol=2e-2)


def test_fp16_rescale_keeps_logits(tmp_path):
    # 8 layers cross one rescale boundary (after layer 6); halved weights and x/2 must cancel.
    path = write_checkpoint(tmp_path / "deep.pth", "4", seed=8, n_layer=8, n_embd=64,
                            vocab_size=300)
    fp32 = load_model(path, device="cpu", dtype="fp32")
    fp16 = RWKV4(Checkpoint.open(path), torch.device("cpu"), "fp16")
    assert fp16.rescale_layer == 6 and fp32.rescale_layer == 0
    prompt = _prompt(20, 300, seed=8)
    with torch.inference_mode():
        ref = fp32.forward(prompt, fp32.zero_state())
        state = fp16.zero_state()
        got = fp16.forward(prompt, state)
        ref_state = fp32.zero_state()
        fp32.forward(prompt, ref_state)
    dev = (got - ref).abs().max().item()
    print(f"v4 fp16 weights with rescale: max |logit - fp32| = {dev:.3g}")
    assert dev < FP16_LOGIT_ATOL
    # Token-shift states are layer-norm outputs: the rescale does not reach them.
    torch.testing.assert_close(state.ffn_x, ref_state.ffn_x, rtol=0, atol=0.05)


def test_clone_is_independent(model):
    prompt = _prompt(12, SMALL["vocab_size"], seed=9)
    with torch.inference_mode():
        state = model.zero_state()
        model.forward(prompt, state)
        snapshot = state.clone()
        first = model.forward([5], state)
        assert not state.equal(snapshot)
        again = model.forward([5], snapshot)
    assert torch.equal(first, again)


def test_state_file_round_trip_and_identity(tmp_path, small, model):
    prompt = _prompt(15, SMALL["vocab_size"], seed=10)
    with torch.inference_mode():
        state = model.zero_state()
        model.forward(prompt, state)
        state.save(tmp_path / "s.state", model.identity())
        loaded = V4State.load(tmp_path / "s.state", model.identity())
        assert loaded.equal(state)
        assert torch.equal(model.forward([3], loaded), model.forward([3], state))
    other = load_model(write_checkpoint(tmp_path / "o.pth", "4", seed=99, **SMALL), "cpu", "fp32")
    with pytest.raises(StateFileError, match="another model"):
        V4State.load(tmp_path / "s.state", other.identity())


def test_zero_state_layout(model):
    s = model.zero_state()
    assert s.kind == "v4"
    for f in FIELDS:
        t = getattr(s, f)
        assert t.shape == (SMALL["n_layer"], SMALL["n_embd"]) and t.dtype == torch.float32
    assert (s.att_max == -1e30).all() and not s.att_num.any()


def test_config_and_detect(model):
    c = model.config
    assert (c.version, c.n_layer, c.n_embd, c.vocab_size, c.ffn_dim) == ("4", 3, 64, 500, 256)
    w = make_weights("4", **SMALL)
    assert detect_version(Checkpoint("mem", w)) == (RWKV4, "4")
    # The keys that make the reference call a model v5 / v5.1 / v6 take it out of v4.
    for extra in ("blocks.0.att.ln_x.weight", "blocks.1.att.gate.weight",
                  "blocks.0.att.time_maa_x"):
        assert RWKV4.detect(Checkpoint("mem", {**w, extra: torch.zeros(1)})) is None


@pytest.mark.parametrize("key", ["blocks.1.att.time_first", "blocks.2.ffn.value.weight",
                                 "head.weight", "blocks.0.ln0.bias", "ln_out.weight"])
def test_missing_tensor_is_named(tmp_path, key):
    w = make_weights("4", **SMALL)
    del w[key]
    torch.save(w, tmp_path / "m.pth")
    with pytest.raises(CheckpointError, match=f"missing tensor '{key}'"):
        load_model(tmp_path / "m.pth", "cpu", "fp32")


@pytest.mark.parametrize("key,shape", [("blocks.1.att.key.weight", (64, 65)),
                                       ("blocks.2.ffn.key.weight", (255, 64)),
                                       ("blocks.0.att.time_mix_k", (1, 1, 63)),
                                       ("head.weight", (499, 64))])
def test_wrong_shape_is_named(tmp_path, key, shape):
    w = make_weights("4", **SMALL)
    w[key] = torch.zeros(shape, dtype=torch.bfloat16)
    torch.save(w, tmp_path / "m.pth")
    with pytest.raises(CheckpointError, match=f"'{key}' has shape"):
        load_model(tmp_path / "m.pth", "cpu", "fp32")


def test_unexpected_tensor_is_refused(tmp_path):
    w = make_weights("4", **SMALL)
    w["blocks.1.att.bogus"] = torch.zeros(3)
    torch.save(w, tmp_path / "m.pth")
    with pytest.raises(CheckpointError, match="unexpected tensor 'blocks.1.att.bogus'"):
        load_model(tmp_path / "m.pth", "cpu", "fp32")


def test_safetensors_gives_same_logits(tmp_path, model):
    w = make_weights("4", seed=1, **SMALL)
    save_file(w, str(tmp_path / "m.safetensors"))
    st = load_model(tmp_path / "m.safetensors", "cpu", "fp32")
    prompt = _prompt(10, SMALL["vocab_size"], seed=11)
    with torch.inference_mode():
        assert torch.equal(st.forward(prompt, st.zero_state()),
                           model.forward(prompt, model.zero_state()))


def test_bad_input_is_refused(model):
    with pytest.raises(ValueError):
        model.forward([SMALL["vocab_size"]], model.zero_state())
    with pytest.raises(ValueError):
        model.forward([], model.zero_state())


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_cuda_matches_reference(tmp_path, dtype):
    # 8 layers so that fp16 crosses the reference's rescale boundary.
    dims = {"n_layer": 8, "n_embd": 128, "vocab_size": 1000}
    path = write_checkpoint(tmp_path / "m.pth", "4", seed=12, **dims)
    ours = load_model(path, device="cuda", dtype=dtype)
    ref = load_reference(path, "4", strategy=f"cuda {dtype}")
    fp32 = load_model(path, device="cpu", dtype="fp32")
    prompt = _prompt(40, dims["vocab_size"], seed=12)
    with torch.inference_mode():
        ref_logits, ref_flat = ref.forward(prompt, None)
        seq_state = ours.zero_state()
        seq = ours.forward(prompt, seq_state).cpu()
        rnn_state = ours.zero_state()
        for t in prompt:
            rnn = ours.forward([t], rnn_state).cpu()
        exact = fp32.forward(prompt, fp32.zero_state())
    ref_logits = ref_logits.float().cpu()
    for name, got in (("seq", seq), ("rnn", rnn)):
        dev_ref = (got - ref_logits).abs().max().item()
        dev_fp32 = (got - exact).abs().max().item()
        print(f"v4 cuda {dtype} {name}: max |logit - reference| = {dev_ref:.3g}, "
              f"vs our cpu fp32 = {dev_fp32:.3g}")
        tol = FP16_LOGIT_ATOL if dtype == "fp16" else BF16_LOGIT_ATOL
        assert dev_ref < tol and dev_fp32 < tol
    assert seq_state.device.type == "cuda" and seq_state.att_num.dtype == torch.float32
    ref_state = _from_ref(ref_flat, dims["n_layer"])
    torch.testing.assert_close(seq_state.att_x.cpu(), ref_state.att_x, rtol=0, atol=0.1)
