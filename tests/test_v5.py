"""RWKV v5 (5.0, 5.1, 5.2): parity with the official `rwkv` package, sequence vs RNN mode,
the parallel WKV vs the plain recurrence, precision, state files and checkpoint errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from chatrwkv.checkpoint import Checkpoint
from chatrwkv.errors import CheckpointError, StateFileError
from chatrwkv.models import detect_version, load_model
from chatrwkv.models.v5 import RWKV5, _wkv_parallel, _wkv_serial
from chatrwkv.state import WKVState
from chatrwkv.synth import make_weights, write_checkpoint
from tests.reference import load_reference

SUBVERSIONS = ("5.0", "5.1", "5.2")
DIMS = {"n_layer": 2, "n_embd": 64, "vocab_size": 300, "head_size": 16}
PROMPT = torch.randint(0, DIMS["vocab_size"], (40,), generator=torch.Generator().manual_seed(7)).tolist()
# fp32 on both sides; what differs is summation order (blocked WKV, lerp for the mixes).
LOGIT_TOL = 1e-4
STATE_TOL = 1e-4
BF16_LOGIT_TOL = 0.15  # bf16 weights and GEMV inputs: ~3 significant digits per product

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("v5")
    return {v: write_checkpoint(d / f"v{v}.pth", v, seed=3, **DIMS) for v in SUBVERSIONS}


@pytest.fixture(scope="module")
def models(ckpts) -> dict[str, RWKV5]:
    return {v: load_model(p, device="cpu", dtype="fp32") for v, p in ckpts.items()}


def _ref_state(state: list[torch.Tensor], n_layer: int) -> WKVState:
    """The reference's flat list [att_x, wkv, ffn_x] * L as our typed state."""
    return WKVState(att_x=torch.stack([state[3 * i] for i in range(n_layer)]).float(),
                    wkv=torch.stack([state[3 * i + 1] for i in range(n_layer)]).float(),
                    ffn_x=torch.stack([state[3 * i + 2] for i in range(n_layer)]).float())


def _max_state_diff(a: WKVState, b: WKVState) -> float:
    return max((a.tensors()[k].cpu() - b.tensors()[k].cpu()).abs().max().item()
               for k in a.tensors())


def _run(model: RWKV5, tokens: list[int], one_by_one: bool = False):
    state = model.zero_state()
    with torch.inference_mode():
        if one_by_one:
            for t in tokens:
                logits = model.forward([t], state)
        else:
            logits = model.forward(tokens, state)
    return logits, state


def _greedy(forward, logits: torch.Tensor, state, n: int) -> list[int]:
    out = []
    for _ in range(n):
        out.append(int(torch.argmax(logits)))
        logits, state = forward(out[-1], state)
    return out


# --- parity with the reference ----------------------------------------------------------------

@pytest.mark.parametrize("version", SUBVERSIONS)
def test_matches_reference(version, ckpts, models):
    ref = load_reference(ckpts[version], version)
    model = models[version]
    with torch.inference_mode():
        ref_logits, ref_flat = ref.forward(PROMPT, None)
        ref_state = _ref_state(ref_flat, DIMS["n_layer"])
        for one_by_one in (False, True):
            logits, state = _run(model, PROMPT, one_by_one)
            dev = (logits - ref_logits).abs().max().item()
            sdev = _max_state_diff(state, ref_state)
            mode = "rnn" if one_by_one else "seq"
            print(f"\nv{version} {mode}: max |logit - ref| = {dev:.2e}, max |state - ref| = {sdev:.2e}")
            assert dev < LOGIT_TOL
            assert sdev < STATE_TOL

        ours = _greedy(lambda t, s: (model.forward([t], s), s), logits, state, 32)
        theirs = _greedy(lambda t, s: ref.forward([t], s), ref_logits, ref_flat, 32)
    assert ours == theirs


@pytest.mark.parametrize("version,time_first", [("5.0", False), ("5.1", True)])
def test_bonus_stored_either_way(version, time_first, tmp_path):
    """5.0/5.1 files may carry time_first (log u) or time_faaaa (u); the reference reads both."""
    path = write_checkpoint(tmp_path / "m.pth", version, seed=5, time_first=time_first, **DIMS)
    with torch.inference_mode():
        ref_logits, _ = load_reference(path, version).forward(PROMPT[:12], None)
    logits, _ = _run(load_model(path, "cpu", "fp32"), PROMPT[:12])
    assert (logits - ref_logits).abs().max().item() < LOGIT_TOL


# --- sequence mode, chunks, full output --------------------------------------------------------

@pytest.mark.parametrize("version", ("5.0", "5.2"))
def test_chunk_lengths_and_full_output(version, ckpts, models):
    expected, expected_state = _run(models[version], PROMPT, one_by_one=True)
    for chunk_len in (1, 3, 7, 256):
        model = load_model(ckpts[version], "cpu", "fp32", chunk_len=chunk_len)
        logits, state = _run(model, PROMPT)
        assert torch.allclose(logits, expected, atol=1e-5, rtol=0), chunk_len
        assert _max_state_diff(state, expected_state) < 1e-4  # WKV entries reach ~10

    model = models[version]
    state = model.zero_state()
    per_token = []
    with torch.inference_mode():
        full = model.forward(PROMPT, model.zero_state(), full_output=True)
        for t in PROMPT:
            per_token.append(model.forward([t], state))
        one = model.forward(PROMPT[:1], model.zero_state(), full_output=True)
    assert full.shape == (len(PROMPT), DIMS["vocab_size"]) and one.shape == (1, DIMS["vocab_size"])
    assert torch.allclose(full, torch.stack(per_token), atol=1e-5, rtol=0)


@pytest.mark.parametrize("T", (1, 5, 32, 77))
@pytest.mark.parametrize("per_channel", (False, True))
def test_parallel_wkv_equals_serial(T, per_channel):
    g = torch.Generator().manual_seed(T)
    H, N = 3, 8
    r, k, v = (torch.randn(T, H, N, generator=g) for _ in range(3))
    time_decay = torch.empty(H, N if per_channel else 1).uniform_(-8, 2.5, generator=g)
    log_decay = (-torch.exp(time_decay)).expand(H, N)   # down to w = e^-12: the stability case
    bonus = torch.randn(H, N, 1, generator=g)
    s0 = torch.randn(H, N, N, generator=g)
    s_serial, s_parallel = s0.clone(), s0.clone()
    out_serial = _wkv_serial(r, k, v, s_serial, log_decay.exp().unsqueeze(-1), bonus)
    out_parallel = _wkv_parallel(r, k, v, s_parallel, log_decay, bonus)
    assert torch.allclose(out_parallel, out_serial, atol=1e-4, rtol=1e-4)
    assert torch.allclose(s_parallel, s_serial, atol=1e-4, rtol=1e-4)


# --- precision ----------------------------------------------------------------------------------

def test_bf16_on_cpu_close_to_fp32(ckpts, models):
    model = load_model(ckpts["5.2"], "cpu", "bf16")
    assert model.head.dtype == torch.bfloat16
    ref, _ = _run(models["5.2"], PROMPT)
    for one_by_one in (False, True):
        logits, state = _run(model, PROMPT, one_by_one)
        dev = (logits - ref).abs().max().item()
        print(f"\nbf16 {'rnn' if one_by_one else 'seq'}: max |logit - fp32| = {dev:.3f}")
        assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
        assert state.wkv.dtype == torch.float32
        assert dev < BF16_LOGIT_TOL


def test_fp16_rescaling_keeps_logits(tmp_path):
    """fp16 halves the residual every 6 layers (weights pre-scaled to match); with 8 layers the
    rescaled model must agree with fp32. Run on CPU by building the class directly."""
    path = write_checkpoint(tmp_path / "deep.pth", "5.2", seed=2, n_layer=8, n_embd=32,
                            vocab_size=300, head_size=16)
    fp16 = RWKV5(Checkpoint.open(path), torch.device("cpu"), "fp16")
    fp32 = RWKV5(Checkpoint.open(path), torch.device("cpu"), "fp32")
    assert [b.halve_after for b in fp16.blocks] == [False] * 5 + [True] + [False] * 2
    assert not any(b.halve_after for b in fp32.blocks)
    a, _ = _run(fp16, PROMPT[:10])
    b, _ = _run(fp32, PROMPT[:10])
    assert (a - b).abs().max().item() < 0.05


# --- state --------------------------------------------------------------------------------------

def test_clone_and_state_file(models, tmp_path):
    model = models["5.1"]
    _, state = _run(model, PROMPT[:10])
    snapshot = state.clone()
    with torch.inference_mode():
        expected = model.forward([5], snapshot.clone())
        model.forward(PROMPT[10:20], state)  # advancing the original leaves the snapshot alone
        assert torch.equal(model.forward([5], snapshot.clone()), expected)

        snapshot.save(tmp_path / "s.state", model.identity())
        loaded = WKVState.load(tmp_path / "s.state", model.identity())
        assert torch.equal(model.forward([5], loaded), expected)
    with pytest.raises(StateFileError):
        WKVState.load(tmp_path / "s.state", models["5.2"].identity())


# --- detection and checkpoint errors ------------------------------------------------------------

@pytest.mark.parametrize("version", SUBVERSIONS)
def test_detect(version, ckpts, models):
    cls, found = detect_version(Checkpoint.open(ckpts[version]))
    assert (cls, found) == (RWKV5, version)
    c = models[version].config
    assert (c.n_layer, c.n_embd, c.n_head, c.head_size, c.ffn_dim, c.vocab_size) == (2, 64, 4, 16,
                                                                                    256, 300)
    assert c.gated == (version != "5.0")


def test_detect_refuses_other_layouts():
    w = make_weights("5.2", seed=0, **DIMS)
    no_ln_x = {k: v for k, v in w.items() if ".ln_x." not in k}
    assert RWKV5.detect(Checkpoint("v4.pth", no_ln_x)) is None
    v6ish = dict(w, **{"blocks.0.att.time_maa_x": torch.zeros(1, 1, 64)})
    assert RWKV5.detect(Checkpoint("v6.pth", v6ish)) is None
    v7ish = dict(w, **{"blocks.0.att.x_r": torch.zeros(1, 1, 64)})
    assert RWKV5.detect(Checkpoint("v7.pth", v7ish)) is None


@pytest.mark.parametrize("key", ["blocks.1.att.time_decay", "blocks.0.att.gate.weight",
                                 "blocks.1.att.ln_x.bias", "blocks.0.ffn.value.weight",
                                 "ln_out.weight", "blocks.0.ln0.bias"])
def test_missing_tensor_is_named(key, tmp_path):
    w = make_weights("5.2", seed=0, **DIMS)
    del w[key]
    torch.save(w, tmp_path / "m.pth")
    with pytest.raises(CheckpointError, match=f"missing tensor '{key}'"):
        load_model(tmp_path / "m.pth", "cpu", "fp32")


def test_wrong_shape_and_extra_tensor(tmp_path):
    w = make_weights("5.1", seed=0, **DIMS)
    w["blocks.1.att.key.weight"] = torch.zeros(64, 32)
    torch.save(w, tmp_path / "shape.pth")
    with pytest.raises(CheckpointError, match="'blocks.1.att.key.weight' has shape"):
        load_model(tmp_path / "shape.pth", "cpu", "fp32")

    w = make_weights("5.1", seed=0, **DIMS)
    w["blocks.0.att.time_decay"] = torch.zeros(3)  # 3 heads do not divide 64 channels
    torch.save(w, tmp_path / "heads.pth")
    with pytest.raises(CheckpointError, match="time_decay"):
        load_model(tmp_path / "heads.pth", "cpu", "fp32")

    w = make_weights("5.1", seed=0, **DIMS)
    w["blocks.0.att.time_state"] = torch.zeros(4, 16, 16)
    torch.save(w, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match="unexpected tensor 'blocks.0.att.time_state'"):
        load_model(tmp_path / "extra.pth", "cpu", "fp32")


def test_safetensors_same_as_pth(ckpts, models, tmp_path):
    path = write_checkpoint(tmp_path / "m.safetensors", "5.2", seed=3, **DIMS)
    a, _ = _run(load_model(path, "cpu", "fp32"), PROMPT[:8])
    b, _ = _run(models["5.2"], PROMPT[:8])
    assert torch.equal(a, b)


# --- CUDA ---------------------------------------------------------------------------------------

@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype,tol", [("fp16", 0.05), ("bf16", 0.2)])
@pytest.mark.parametrize("version", SUBVERSIONS)
def test_cuda_matches_reference(version, dtype, tol, ckpts, models):
    model = load_model(ckpts[version], "cuda", dtype)
    ref = load_reference(ckpts[version], version, f"cuda {dtype}")
    expected, _ = _run(models[version], PROMPT)
    with torch.inference_mode():
        ref_logits, _ = ref.forward(PROMPT, None)
    for one_by_one in (False, True):
        logits, state = _run(model, PROMPT, one_by_one)
        assert state.wkv.dtype == torch.float32 and state.device.type == "cuda"
        assert (logits.cpu() - expected).abs().max().item() < tol
        assert (logits.cpu() - ref_logits.cpu()).abs().max().item() < tol
