"""RWKV-7 DeepEmbed (rwkv7a): parity with the official package run with RWKV_DE_VERSION=1 (in a
subprocess: tests/reference_de.py), sequence == RNN mode at any chunk length, bf16 / int8, the
s_emb table left in the file's pages, state files and state tuning; and the one-line refusal of
the layouts no module runs (rwkv7b DeepEmbedAttention, RWKV-8)."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from chatrwkv.checkpoint import Checkpoint
from chatrwkv.errors import CheckpointError, StateFileError
from chatrwkv.modelnames import version_label
from chatrwkv.models import detect_version, load_model, v7_cpu
from chatrwkv.models.pages import _private_file_ranges
from chatrwkv.models.v7 import RWKV7
from chatrwkv.state import WKVState
from chatrwkv.synth import make_weights, write_checkpoint
from tests.cpu_step_helpers import compare, fast, simd_fixture
from tests.reference_de import run_reference_de

# D = 32 is fixed by the package (`semb_.view(32, 32)`); F = 4C.
DIMS = {"n_layer": 3, "n_embd": 128, "vocab_size": 500, "head_size": 32}
PROMPT = torch.randint(0, 500, (30,), generator=torch.Generator().manual_seed(11)).tolist()
SPLIT = 13
N_GREEDY = 24

LOGIT_TOL = 1e-4     # fp32 vs the reference, as test_v7.py (measured ~1.5e-6)
STATE_TOL = 1e-4
SAME_TOL = 2e-5      # ours vs ours in fp32: the same sums in other orders
BF16_TOL = 0.1       # our bf16 weights vs our fp32, max abs logit deviation (measured ~0.016)
REF_BF16_TOL = 0.1   # our bf16 vs the package's cpu bf16 (measured ~0.027; it rounds activations)
INT8_TOL = 0.15      # int8 vs fp32, as test_quant.py's V7_INT8_TOL
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ckpt_path(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("v7a") / "tiny.pth", "7.0a", seed=1, **DIMS)


@pytest.fixture(scope="module")
def model(ckpt_path):
    return load_model(ckpt_path, device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def oracle(ckpt_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("oracle") / "fp32.pt"
    return run_reference_de(ckpt_path, "cpu fp32", out, PROMPT, SPLIT, N_GREEDY)


def _run(model, tokens, state=None, one_by_one=False, full_output=False):
    state = model.zero_state() if state is None else state
    with torch.inference_mode():
        if one_by_one:
            logits = torch.stack([model.forward([t], state) for t in tokens])
            logits = logits if full_output else logits[-1]
        else:
            logits = model.forward(tokens, state, full_output=full_output)
    return logits, state


def _state_dev(state: WKVState, oracle: dict, prefix: str) -> float:
    return max((t - oracle[f"{prefix}_{k}"]).abs().max().item()
               for k, t in state.tensors().items())


def test_detected_from_keys_with_its_config(ckpt_path, model):
    ckpt = Checkpoint.open(ckpt_path)
    assert detect_version(ckpt) == (RWKV7, "7.0a")
    c = model.config
    assert (c.version, c.d_embed, c.ffn_dim) == ("7.0a", 32, 512)
    assert "v7.0a" in model.describe() and version_label("7.0a") == "v7.0a DeepEmbed"
    assert model.zero_state().wkv.shape == (3, 4, 32, 32)  # the state does not change size
    plain = write_checkpoint(ckpt_path.parent / "plain.pth", "7.0", seed=1, **DIMS)
    assert detect_version(Checkpoint.open(plain)) == (RWKV7, "7.0")


@pytest.mark.parametrize("one_by_one", [False, True], ids=["sequence", "rnn"])
def test_matches_reference(model, oracle, one_by_one):
    logits, state = _run(model, PROMPT, one_by_one=one_by_one)
    mode = "rnn" if one_by_one else "seq"
    dev = (logits - oracle[f"{mode}_logits"] if mode == "seq"
           else logits - oracle["rnn_logits"][-1]).abs().max().item()
    sdev = _state_dev(state, oracle, mode)
    print(f"\nv7a {mode} vs reference: max |logit dev| {dev:.2e}, max |state dev| {sdev:.2e}")
    assert dev < LOGIT_TOL and sdev < STATE_TOL
    every, _ = _run(model, PROMPT, one_by_one=one_by_one, full_output=True)
    assert (every - oracle["rnn_logits"]).abs().max().item() < LOGIT_TOL


def test_deep_embed_matters(ckpt_path, oracle, tmp_path):
    # The same weights without the DeepEmbed tensors (a plain v7) give other logits: the tests
    # above would notice a key scale that was skipped.
    w = {k: v for k, v in torch.load(ckpt_path, weights_only=True).items()
         if not re.search(r"ffn\.(s_emb|s_emb_x\.weight|s[012]$)", k)}
    torch.save(w, tmp_path / "no_de.pth")
    plain, _ = _run(load_model(tmp_path / "no_de.pth", device="cpu"), PROMPT)
    assert (plain - oracle["seq_logits"]).abs().max().item() > 1000 * LOGIT_TOL


@pytest.mark.parametrize("chunk_len", [1, 3, 7, 256])
def test_chunk_boundaries_match_reference(ckpt_path, oracle, chunk_len):
    m = load_model(ckpt_path, device="cpu", dtype="fp32", chunk_len=chunk_len)
    full, state = _run(m, PROMPT, full_output=True)
    assert (full - oracle["full_logits"]).abs().max().item() < LOGIT_TOL
    assert _state_dev(state, oracle, "seq") < STATE_TOL
    # A prompt in two calls (state carried over) as the package runs it in two calls.
    _, state = _run(m, PROMPT[:SPLIT])
    logits, _ = _run(m, PROMPT[SPLIT:], state)
    assert (logits - oracle["split_logits"]).abs().max().item() < LOGIT_TOL


def test_greedy_continuation_identical(model, oracle):
    state = model.zero_state()
    ours = []
    with torch.inference_mode():
        logits = model.forward(PROMPT, state)
        for _ in range(N_GREEDY):
            ours.append(int(logits.argmax()))
            logits = model.forward([ours[-1]], state)
    assert ours == oracle["greedy"].tolist()
    assert len(set(ours)) > 1


def test_sequence_and_rnn_agree(model):
    seq, s1 = _run(model, PROMPT, full_output=True)
    rnn, s2 = _run(model, PROMPT, one_by_one=True, full_output=True)
    assert (seq - rnn).abs().max().item() < SAME_TOL
    assert max((a - b).abs().max().item()
               for a, b in zip(s1.tensors().values(), s2.tensors().values())) < SAME_TOL


def test_bf16_close_to_fp32_and_to_reference_bf16(ckpt_path, model, tmp_path):
    m16 = load_model(ckpt_path, device="cpu", dtype="bf16")
    assert m16.layers[0].s_emb_x.dtype == torch.bfloat16
    ref16 = run_reference_de(ckpt_path, "cpu bf16", tmp_path / "bf16.pt", PROMPT, SPLIT, 0)
    ref, _ = _run(model, PROMPT)
    for one_by_one in (False, True):
        logits, state = _run(m16, PROMPT, one_by_one=one_by_one)
        assert logits.dtype == torch.float32 and state.wkv.dtype == torch.float32
        dev = (logits - ref).abs().max().item()
        dev_ref = (logits - ref16["seq_logits"]).abs().max().item()
        print(f"\nv7a bf16 ({'rnn' if one_by_one else 'sequence'}): max |logit dev| vs our "
              f"fp32 {dev:.3f}, vs the package's bf16 {dev_ref:.3f}")
        assert dev < BF16_TOL and dev_ref < REF_BF16_TOL


def test_int8_close_to_fp32(ckpt_path, model):
    m8 = load_model(ckpt_path, device="cpu", dtype="int8")
    ref, _ = _run(model, PROMPT, one_by_one=True, full_output=True)
    for one_by_one in (False, True):
        logits, _ = _run(m8, PROMPT, one_by_one=one_by_one, full_output=True)
        assert torch.isfinite(logits).all()
        assert (logits - ref).abs().max().item() < INT8_TOL


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "int8"])
def test_s_emb_stays_in_the_file_pages(ckpt_path, dtype):
    # The [V, D*D] table of every layer is read where torch.load mapped it, not copied.
    m = load_model(ckpt_path, device="cpu", dtype=dtype)
    ranges = _private_file_ranges(ckpt_path)
    assert ranges, "the checkpoint is not memory-mapped"
    for p in m.layers:
        assert p.s_emb.dtype == torch.bfloat16  # as stored
        start = p.s_emb.data_ptr()
        assert any(lo <= start < hi for lo, hi in ranges)


def _mapped_pages(t: torch.Tensor) -> int:
    """Pages wholly inside `t` that are mapped into this process (/proc/self/pagemap bit 63)."""
    page = 4096
    lo = -(-t.data_ptr() // page)
    hi = (t.data_ptr() + t.numel() * t.element_size()) // page
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(lo * 8)
        raw = f.read((hi - lo) * 8)
    return sum(int.from_bytes(raw[i:i + 8], "little") >> 63 for i in range(0, len(raw), 8))


@pytest.mark.skipif(not Path("/proc/self/pagemap").exists(), reason="Linux only")
def test_s_emb_pages_read_are_unmapped_again(ckpt_path):
    from chatrwkv.models.v7_de import RELEASE_EVERY

    m = load_model(ckpt_path, device="cpu", dtype="fp32")
    tables = [p.s_emb for p in m.layers]
    state = m.zero_state()
    with torch.inference_mode():
        m.forward(PROMPT, state)                      # sequence mode: released per layer
        assert sum(map(_mapped_pages, tables)) == 0
        m.forward(PROMPT[:1], state)                  # a one-token step maps its rows ...
        assert sum(map(_mapped_pages, tables)) > 0
        for t in PROMPT[1:RELEASE_EVERY]:             # ... until every RELEASE_EVERY steps
            m.forward([t], state)
        assert sum(map(_mapped_pages, tables)) == 0


def test_gradients_reach_every_checkpoint_tensor():
    w = make_weights("7.0a", n_layer=2, n_embd=64, vocab_size=50, head_size=32,
                     dtype=torch.float32)
    params = {k: torch.nn.Parameter(v) for k, v in w.items()}
    m = RWKV7(Checkpoint("<training>", params), device=torch.device("cpu"), dtype="fp32")
    logits, _ = m.forward_batch(torch.randint(0, 50, (2, 20)), None, head="all")
    F.cross_entropy(logits.flatten(0, 1), torch.randint(0, 50, (40,))).backward()
    unused = {"blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2"}
    for k, p in params.items():
        assert (p.grad is None) == (k in unused), k
        assert k in unused or (torch.isfinite(p.grad).all() and p.grad.abs().max() > 0), k


def test_snapshots_and_state_files(model, ckpt_path, tmp_path):
    _, state = _run(model, PROMPT[:10])
    snap = state.clone()
    a, _ = _run(model, PROMPT[10:], state)
    b, _ = _run(model, PROMPT[10:], snap.clone())
    assert torch.equal(a, b)
    path = tmp_path / "s.safetensors"
    snap.save(path, model.identity())
    c, _ = _run(model, PROMPT[10:], WKVState.load(path, model.identity()))
    assert torch.equal(a, c)
    # The same shapes without DeepEmbed are another model: its state file is refused.
    plain = write_checkpoint(tmp_path / "plain.pth", "7.0", seed=1, **DIMS)
    with pytest.raises(StateFileError, match="another model"):
        WKVState.load(path, load_model(plain, device="cpu", dtype="fp32").identity())


def test_state_tuning_file_mounts(model, tmp_path, oracle):
    from chatrwkv.statetune import mount_state

    g = torch.Generator().manual_seed(0)
    raw = {f"blocks.{i}.att.time_state": torch.randn(4, 32, 32, generator=g) * 0.5
           for i in range(DIMS["n_layer"])}
    torch.save(raw, tmp_path / "tuned.pth")
    state = mount_state(tmp_path / "tuned.pth", model)
    expect = model.zero_state()
    expect.wkv.copy_(torch.stack(list(raw.values())))  # v7 keeps the reference orientation
    assert torch.equal(state.wkv, expect.wkv)
    tuned, _ = _run(model, PROMPT, state)
    assert (tuned - oracle["seq_logits"]).abs().max().item() > 100 * LOGIT_TOL


@pytest.mark.parametrize("key", ["blocks.1.ffn.s_emb_x.weight", "blocks.2.ffn.s0",
                                 "blocks.0.ffn.s1", "blocks.2.ffn.s_emb.weight"])
def test_missing_deep_embed_tensor_is_named(tmp_path, key):
    w = make_weights("7.0a", seed=1, **DIMS)
    del w[key]
    torch.save(w, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=f"'{key}'"):
        load_model(tmp_path / "bad.pth", device="cpu")


@pytest.mark.parametrize("key,shape", [("blocks.1.ffn.s2", (32, 128)),
                                       ("blocks.0.ffn.s_emb.weight", (500, 1000)),
                                       ("blocks.2.ffn.s_emb_x.weight", (1024, 64))])
def test_wrong_deep_embed_shape_is_refused(tmp_path, key, shape):
    w = make_weights("7.0a", seed=1, **DIMS)
    w[key] = torch.zeros(shape, dtype=torch.bfloat16)
    torch.save(w, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=f"'{key}'"):
        load_model(tmp_path / "bad.pth", device="cpu")


def test_cli_chats_on_a_deep_embed_checkpoint(tmp_path):
    # A World-vocabulary rwkv7a file (rank 4 keeps s_emb small), through the real CLI, piped.
    path = write_checkpoint(tmp_path / "de.pth", "7.0a", n_layer=2, n_embd=64, vocab_size=65536,
                            head_size=16, deep_embed_rank=4, seed=0)
    env = dict(os.environ, PYTHONPATH=str(ROOT), CHATRWKV_HOME=str(tmp_path / "home"))
    out = subprocess.run([sys.executable, "-m", "chatrwkv", "--model", str(path), "--seed", "1",
                          "--max-tokens", "8"], input="+gen Once upon\n+qa hi\n", check=False,
                         capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() and "Traceback" not in out.stderr


def test_bench_reference_runs_the_package_with_deep_embed(ckpt_path, capsys):
    # `chatrwkv bench --reference` on a DeepEmbed file: the package's worker gets
    # RWKV_DE_VERSION=1, so both engines decode the same greedy tokens.
    import json

    from chatrwkv import bench

    rc = bench.main([str(ckpt_path), "--json", "--reference", "--dtype", "fp32", "--prompt-len",
                     "16", "--decode-tokens", "6", "--runs", "1", "--threads", "1"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0
    (model,) = report["models"]
    assert model["version"] == "7.0a"
    ours, ref = model["results"]
    assert ours["vs_reference"]["greedy_tokens_agree"] == 6
    assert ours["decode_ids"] == ref["decode_ids"]


# --- the C one-token step ------------------------------------------------------------------------

# Odd sizes and more layers than one C phase takes (CK_MAX_TASKS = 8 s_emb_x products), a rank
# other than 32; and the package's shape above.
C_SHAPES = {"odd": ({"n_layer": 9, "n_embd": 72, "vocab_size": 301, "head_size": 24}, 8),
            "official": (DIMS, 32)}
C_TOKENS = [t % 301 for t in PROMPT[:20]]
simd = simd_fixture(v7_cpu)
needs_c = pytest.mark.skipif(not v7_cpu.available(), reason="C extension not built")


@pytest.fixture(scope="module", params=sorted(C_SHAPES))
def c_ckpt(request, tmp_path_factory):
    dims, rank = C_SHAPES[request.param]
    path = tmp_path_factory.mktemp("v7a_c") / f"{request.param}.pth"
    torch.save(make_weights("7.0a", seed=4, deep_embed_rank=rank, **dims), path)
    return path


@needs_c
def test_c_step_fp32_equals_torch_twin(c_ckpt, simd):
    m = load_model(c_ckpt, device="cpu", dtype="fp32")
    compare(fast(m), m._forward_one_torch, m, m, C_TOKENS, SAME_TOL)
    assert m._c_step is not None  # the C step did run


@needs_c
def test_c_step_bf16_equals_fp32_twin_on_the_same_values(c_ckpt, simd):
    m16, m32 = (load_model(c_ckpt, device="cpu", dtype=d) for d in ("bf16", "fp32"))
    compare(fast(m16), m32._forward_one_torch, m16, m32, C_TOKENS, SAME_TOL)
    assert m16._c_step is not None


@needs_c
def test_c_step_int8_equals_dequantized_twin(c_ckpt, simd):
    m8, twin = (load_model(c_ckpt, device="cpu", dtype=d) for d in ("int8", "fp32"))
    big = ("R", "K", "V", "O", "ffn_K", "ffn_V", "s_emb_x")
    twin.layers = tuple(dataclasses.replace(p, **{n: getattr(q, n).dequantize() for n in big})
                        for p, q in zip(twin.layers, m8.layers))
    twin.head = m8.head.dequantize()
    compare(fast(m8), twin._forward_one_torch, m8, twin, C_TOKENS, SAME_TOL)
    assert m8._c_step is not None


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype,tol", [("fp16", 0.1), ("bf16", 0.3)])  # as test_v7.py
def test_cuda_close_to_cpu_fp32(ckpt_path, model, dtype, tol):
    expect, _ = _run(model, PROMPT)
    m = load_model(ckpt_path, device="cuda", dtype=dtype)
    assert m.layers[0].s_emb.device.type == "cpu"  # the tables stay in the file; rows move
    for one_by_one in (False, True):
        logits, state = _run(m, PROMPT, one_by_one=one_by_one)
        assert state.wkv.dtype == torch.float32
        assert (logits.cpu() - expect).abs().max().item() < tol


# --- layouts refused by name --------------------------------------------------------------------

def _dea_extra(C: int, V: int) -> dict[str, torch.Tensor]:
    # rwkv7b (RWKV-LM `RWKV-v7/rwkv_v7b_demo.py`): DeepEmbedAttention next to each block.
    extra = {}
    for i in range(DIMS["n_layer"]):
        q = f"blocks.{i}.qkv."
        extra.update({q + "qq.weight": torch.zeros(256, C), q + "k1": torch.zeros(C, 32),
                      q + "k2": torch.zeros(32, 256), q + "k_emb.weight": torch.zeros(V, 256),
                      q + "k_emb_x.weight": torch.zeros(256, C), q + "x_q": torch.zeros(256)})
    return extra


def _rwkv8_enn(w: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # RWKV-8 "Heron" rc00 (RWKV-LM `RWKV-v7/rwkv_v8_rc00_demo.py`): ffn.enn.weight [V, C].
    return {**w, **{f"blocks.{i}.ffn.enn.weight": torch.zeros(500, 128)
                    for i in range(DIMS["n_layer"])}}


def _rwkv8_rosa(w: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # RWKV-8 ROSA (RWKV-LM `RWKV-v8/260222_rosa4bitLM_L12.py`): blocks.N.rosa.* instead of att.
    out = {k: v for k, v in w.items() if ".att." not in k}
    for i in range(DIMS["n_layer"]):
        out.update({f"blocks.{i}.rosa.x_q": torch.zeros(1, 1, 128),
                    f"blocks.{i}.rosa.q.weight": torch.zeros(128, 128),
                    f"blocks.{i}.rosa.rosa_qkv.emb": torch.zeros(1, 1, 128)})
    return out


@pytest.mark.parametrize("variant,name", [
    ("rwkv7b", r"RWKV-7 DeepEmbedAttention \(rwkv7b"),
    ("enn", r"RWKV-8 Heron \('ffn.enn.weight'\)"),
    ("rosa", r"RWKV-8 ROSA"),
])
def test_unsupported_layouts_refused_by_name_before_loading(tmp_path, monkeypatch, variant,
                                                            name):
    w = make_weights("7.0a", seed=1, **DIMS)
    w = {"rwkv7b": lambda w: {**w, **_dea_extra(128, 500)}, "enn": _rwkv8_enn,
         "rosa": _rwkv8_rosa}[variant](w)
    torch.save(w, tmp_path / "x.pth")

    def must_not_build(*args, **kwargs):
        raise AssertionError("a refused layout got as far as building a model")

    monkeypatch.setattr(RWKV7, "__init__", must_not_build)
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path / "x.pth", device="cpu")
    msg = str(err.value)
    assert "\n" not in msg and re.search(name, msg) and "not supported" in msg, msg
    assert "unknown" not in msg and str(tmp_path / "x.pth") in msg
