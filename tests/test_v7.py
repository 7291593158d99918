"""RWKV v7 engine: parity with the official `rwkv` package, sequence == RNN mode, chunked WKV ==
plain loop (values and gradients), bf16, state files, and checkpoint validation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from chatrwkv.checkpoint import Checkpoint
from chatrwkv.errors import CheckpointError, StateFileError
from chatrwkv.models import detect_version, load_model
from chatrwkv.models.v7 import RWKV7, wkv_chunked, wkv_loop
from chatrwkv.state import WKVState
from chatrwkv.synth import make_weights, write_checkpoint

DIMS = {"n_layer": 3, "n_embd": 128, "vocab_size": 500, "head_size": 32}
PROMPT = torch.randint(0, 500, (30,), generator=torch.Generator().manual_seed(7)).tolist()

LOGIT_TOL = 1e-4     # fp32 vs the reference (measured ~2e-6 on logits of std ~1)
STATE_TOL = 1e-4
SAME_TOL = 2e-5      # fp32 vs fp32 of ours: different orders of the same sums
BF16_TOL = 0.1       # bf16 weights vs fp32 weights, max abs logit deviation (measured ~0.02)


@pytest.fixture(scope="module")
def ckpt_path(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("v7") / "tiny.pth", "7.0", seed=1, **DIMS)


@pytest.fixture(scope="module")
def model(ckpt_path):
    return load_model(ckpt_path, device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def reference(ckpt_path):
    from tests.reference import load_reference

    return load_reference(ckpt_path, "7.0")


def _ref_state_to_ours(ref_state: list[torch.Tensor]) -> WKVState:
    L = len(ref_state) // 3
    return WKVState(att_x=torch.stack([ref_state[3 * i] for i in range(L)]).float(),
                    wkv=torch.stack([ref_state[3 * i + 1] for i in range(L)]).float(),
                    ffn_x=torch.stack([ref_state[3 * i + 2] for i in range(L)]).float())


def _max_state_dev(a: WKVState, b: WKVState) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a.tensors().values(),
                                                          b.tensors().values()))


def _run(model, tokens, state=None, one_by_one=False):
    state = model.zero_state() if state is None else state
    with torch.inference_mode():
        if one_by_one:
            for t in tokens:
                logits = model.forward([t], state)
        else:
            logits = model.forward(tokens, state)
    return logits, state


def test_detect_and_config(ckpt_path, model):
    ckpt = Checkpoint.open(ckpt_path)
    assert RWKV7.detect(ckpt) == "7.0"
    assert detect_version(ckpt) == (RWKV7, "7.0")
    c = model.config
    assert (c.n_layer, c.n_embd, c.vocab_size, c.n_head, c.head_size, c.ffn_dim) == (3, 128, 500,
                                                                                     4, 32, 512)
    assert (c.d_decay, c.d_aaa, c.d_mv, c.d_gate) == (32, 32, 32, 32)


@pytest.mark.parametrize("version", ["4", "5.2", "6.0"])
def test_other_layouts_are_not_v7(version, tmp_path):
    try:
        path = write_checkpoint(tmp_path / "x.pth", version, n_layer=2, n_embd=64, vocab_size=50,
                                head_size=32)
    except (ModuleNotFoundError, AttributeError):
        pytest.skip(f"no synthetic v{version} writer yet")
    assert RWKV7.detect(Checkpoint.open(path)) is None


@pytest.mark.parametrize("one_by_one", [False, True], ids=["sequence", "rnn"])
def test_matches_reference(model, reference, one_by_one):
    with torch.inference_mode():
        ref_logits, ref_state = reference.forward(PROMPT, None)
        ref_rnn_logits, _ = reference.forward([PROMPT[0]], None)
    logits, state = _run(model, PROMPT, one_by_one=one_by_one)
    dev = (logits - ref_logits).abs().max().item()
    sdev = _max_state_dev(state, _ref_state_to_ours(ref_state))
    print(f"\nv7 {'rnn' if one_by_one else 'sequence'} vs reference: max |logit dev| {dev:.2e} "
          f"(logit std {ref_logits.std():.2f}), max |state dev| {sdev:.2e}")
    assert dev < LOGIT_TOL and sdev < STATE_TOL
    one, _ = _run(model, PROMPT[:1])
    assert (one - ref_rnn_logits).abs().max().item() < LOGIT_TOL


def test_greedy_continuation_matches_reference(model, reference):
    from tests.reference import greedy_both

    ours, theirs = greedy_both(model, reference, PROMPT)
    assert ours == theirs
    assert len(set(ours)) > 1  # random weights still give a non-constant continuation


@pytest.fixture(scope="module")
def rnn_result(model):
    return _run(model, PROMPT, one_by_one=True)


@pytest.mark.parametrize("chunk_len", [1, 3, 7, 256])
def test_chunk_lengths_and_modes_agree(ckpt_path, rnn_result, chunk_len):
    base_logits, base_state = rnn_result
    m = load_model(ckpt_path, device="cpu", dtype="fp32", chunk_len=chunk_len)
    logits, state = _run(m, PROMPT)
    assert (logits - base_logits).abs().max().item() < SAME_TOL
    assert _max_state_dev(state, base_state) < SAME_TOL


def test_full_output_matches_per_position(model):
    per_position = []
    state = model.zero_state()
    with torch.inference_mode():
        for t in PROMPT:
            per_position.append(model.forward([t], state))
        full = model.forward(PROMPT, model.zero_state(), full_output=True)
        single = model.forward(PROMPT[:1], model.zero_state(), full_output=True)
    assert full.shape == (len(PROMPT), 500) and full.dtype == torch.float32
    assert (full - torch.stack(per_position)).abs().max().item() < SAME_TOL
    assert single.shape == (1, 500)


def _wkv_inputs(B=2, H=3, T=37, N=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    r, k, v = (torch.randn(B, H, T, N, generator=g) for _ in range(3))
    kk = F.normalize(torch.randn(B, H, T, N, generator=g), dim=-1)
    iclr = torch.rand(B, H, T, N, generator=g)
    logw = -0.6065 * torch.rand(B, H, T, N, generator=g)  # the model's decay range
    S = 0.3 * torch.randn(B, H, N, N, generator=g)
    return [S, r, logw, k, v, -kk, kk * iclr]


@pytest.mark.parametrize("chunk", [1, 5, 16, 32])
def test_chunked_wkv_equals_loop_values_and_gradients(chunk):
    inputs = [t.requires_grad_() for t in _wkv_inputs()]
    y_ref, s_ref = wkv_loop(*inputs)
    y, s = wkv_chunked(*inputs, chunk=chunk)
    assert (y - y_ref).abs().max().item() < 1e-4 * y_ref.abs().max().item()
    assert (s - s_ref).abs().max().item() < 1e-4 * s_ref.abs().max().item()
    g = torch.Generator().manual_seed(1)
    wy, ws = torch.randn(y.shape, generator=g), torch.randn(s.shape, generator=g)
    grads_ref = torch.autograd.grad((y_ref * wy).sum() + (s_ref * ws).sum(), inputs)
    grads = torch.autograd.grad((y * wy).sum() + (s * ws).sum(), inputs)
    for a, b in zip(grads, grads_ref):
        assert (a - b).abs().max().item() < 1e-4 * b.abs().max().item()


def test_sequence_path_is_differentiable_and_batched(ckpt_path):
    m = load_model(ckpt_path, device="cpu", dtype="fp32", chunk_len=7)
    weight = m.layers[1].R.requires_grad_()
    state = m.zero_state()
    logits = m.forward(PROMPT, state, full_output=True)  # grad mode on, state carried over chunks
    F.cross_entropy(logits[:-1], torch.tensor(PROMPT[1:])).backward()
    assert weight.grad is not None and torch.isfinite(weight.grad).all()
    assert weight.grad.abs().max() > 0
    assert not state.wkv.requires_grad  # the in-place state stays a plain buffer
    m.forward(PROMPT[:9], state, full_output=True).sum().backward()  # a second step from it
    weight.requires_grad_(False)
    # forward_batch: a batch of two prompts equals the two prompts run one by one.
    with torch.inference_mode():
        batch = torch.tensor([PROMPT[:12], PROMPT[12:24]])
        logits, st = m.forward_batch(batch, None, head="all")
        for b in range(2):
            alone = m.forward(batch[b].tolist(), s := m.zero_state(), full_output=True)
            assert (logits[b] - alone).abs().max().item() < SAME_TOL
            assert (st.wkv[:, b] - s.wkv).abs().max().item() < SAME_TOL


def test_gradients_reach_every_checkpoint_tensor():
    # The trainer builds the model from Parameters with the official names: loading must keep
    # the graph, and every tensor the model uses must get a gradient.
    w = make_weights("7.0", n_layer=2, n_embd=64, vocab_size=100, head_size=32,
                     dtype=torch.float32)
    params = {k: torch.nn.Parameter(v) for k, v in w.items()}
    m = RWKV7(Checkpoint("<training>", params), device=torch.device("cpu"), dtype="fp32")
    logits, _ = m.forward_batch(torch.randint(0, 100, (2, 20)), None, head="all")
    logits.logsumexp(-1).mean().backward()
    unused = {"blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2"}
    for k, p in params.items():
        assert (p.grad is None) == (k in unused), k
        assert k in unused or (torch.isfinite(p.grad).all() and p.grad.abs().max() > 0), k


def test_bf16_weights_close_to_fp32(ckpt_path, model):
    m16 = load_model(ckpt_path, device="cpu", dtype="bf16")
    assert m16.layers[0].R.dtype == torch.bfloat16
    ref, _ = _run(model, PROMPT)
    for one_by_one in (False, True):
        logits, state = _run(m16, PROMPT, one_by_one=one_by_one)
        assert logits.dtype == torch.float32 and state.wkv.dtype == torch.float32
        dev = (logits - ref).abs().max().item()
        print(f"\nv7 bf16 ({'rnn' if one_by_one else 'sequence'}) vs fp32: max |logit dev| {dev:.3f}")
        assert dev < BF16_TOL


def test_clone_independence_and_state_files(model, ckpt_path, tmp_path):
    _, state = _run(model, PROMPT[:10])
    snap = state.clone()
    a, _ = _run(model, PROMPT[10:], state)
    b, _ = _run(model, PROMPT[10:], snap.clone())
    assert torch.equal(a, b)
    path = tmp_path / "s.safetensors"
    snap.save(path, model.identity())
    loaded = WKVState.load(path, model.identity())
    c, _ = _run(model, PROMPT[10:], loaded)
    assert torch.equal(a, c)
    other = write_checkpoint(tmp_path / "other.pth", "7.0", seed=2, **DIMS)
    with pytest.raises(StateFileError, match="another model"):
        WKVState.load(path, load_model(other, device="cpu", dtype="fp32").identity())


def test_layer0_value_lora_is_optional_and_ignored(tmp_path, model):
    w = make_weights("7.0", seed=1, **DIMS)
    for name in ("v0", "v1", "v2"):
        del w[f"blocks.0.att.{name}"]
    torch.save(w, tmp_path / "old.pth")
    logits, _ = _run(load_model(tmp_path / "old.pth", device="cpu"), PROMPT)
    assert torch.equal(logits, _run(model, PROMPT)[0])


@pytest.mark.parametrize("key", ["blocks.1.att.k_k", "blocks.2.att.v1", "blocks.0.att.r_k",
                                 "blocks.0.ln0.bias", "head.weight", "blocks.2.ffn.value.weight"])
def test_missing_tensor_is_named(tmp_path, key):
    w = make_weights("7.0", seed=1, **DIMS)
    del w[key]
    torch.save(w, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=f"'{key}'"):
        load_model(tmp_path / "bad.pth", device="cpu")


@pytest.mark.parametrize("key,shape", [("blocks.1.att.key.weight", (128, 64)),
                                       ("blocks.1.att.w2", (32, 64)),
                                       ("blocks.0.att.x_r", (1, 1, 64)),
                                       ("blocks.0.att.r_k", (4, 16))])
def test_wrong_shape_is_refused(tmp_path, key, shape):
    w = make_weights("7.0", seed=1, **DIMS)
    w[key] = torch.zeros(shape, dtype=torch.bfloat16)
    torch.save(w, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=f"'{key}'"):
        load_model(tmp_path / "bad.pth", device="cpu")


def test_unknown_tensor_is_refused(tmp_path):
    w = make_weights("7.0", seed=1, **DIMS)
    w["blocks.1.ffn.extra.weight"] = torch.zeros(500, 1024)  # a variant nothing here knows
    torch.save(w, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match="unexpected tensor 'blocks.1.ffn.extra.weight'"):
        load_model(tmp_path / "extra.pth", device="cpu")


def test_safetensors_gives_same_logits(tmp_path, model):
    path = write_checkpoint(tmp_path / "tiny.safetensors", "7.0", seed=1, **DIMS)
    logits, _ = _run(load_model(path, device="cpu"), PROMPT)
    assert torch.equal(logits, _run(model, PROMPT)[0])


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype,tol", [("fp16", 0.1), ("bf16", 0.3)])
def test_cuda_matches_cpu_fp32_and_reference(ckpt_path, model, dtype, tol):
    from tests.reference import load_reference

    ref = load_reference(ckpt_path, "7.0", strategy=f"cuda {dtype}")
    expect, expect_state = _run(model, PROMPT)
    m = load_model(ckpt_path, device="cuda", dtype=dtype)
    for one_by_one in (False, True):
        logits, state = _run(m, PROMPT, one_by_one=one_by_one)
        assert state.wkv.dtype == torch.float32
        assert (logits.cpu() - expect).abs().max().item() < tol
        assert (state.wkv.cpu() - expect_state.wkv).abs().max().item() < 10 * tol
    with torch.inference_mode():
        ref_logits, _ = ref.forward(PROMPT, None)
    assert (logits.cpu() - ref_logits.float().cpu()).abs().max().item() < 2 * tol


LORAS = ("w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2")


def _loras(model):
    return [getattr(p, n) for p in model.layers for n in LORAS if getattr(p, n) is not None]


@pytest.mark.parametrize("dtype", ["bf16", "int8", "int4"])
def test_cpu_lora_matrices_stay_bf16_with_fp32_activations(ckpt_path, dtype):
    # The file's bf16 LoRA matrices are kept as they are next to 16-bit or narrower weights
    # (fp32 copies were a fifth of an int4 token's bytes at 1.5B).
    import dataclasses

    from tests.cpu_step_helpers import check_bf16_loras

    def upcast(twin):
        twin.layers = tuple(dataclasses.replace(p, **{n: getattr(p, n).float() for n in LORAS
                                                      if getattr(p, n) is not None})
                            for p in twin.layers)

    check_bf16_loras(ckpt_path, dtype, _loras, upcast, SAME_TOL)


def test_fp32_keeps_fp32_lora_matrices(model):
    assert all(t.dtype == torch.float32 for t in _loras(model))
