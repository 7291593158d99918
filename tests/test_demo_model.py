"""The shipped demo model (issue 6): official layout, parity with the reference on trained weights,
held-out loss, a training smoke test, and the chat starting on it with no arguments."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from chatrwkv.defaults import DEMO_MODEL
from chatrwkv.models import load_model
from chatrwkv.tokenizer import load_tokenizer
from chatrwkv.training.trainer import TrainConfig, Trainer

HELDOUT = Path(__file__).parent / "data" / "macbeth_heldout.txt"
# Held-out bits per UTF-8 byte on tests/data/macbeth_heldout.txt measured when the model was
# trained (see chatrwkv/data/models/*.json for the whole held-out set), plus a small margin.
HELDOUT_BPB_LIMIT = 2.30


@pytest.fixture(scope="module")
def demo():
    assert DEMO_MODEL.is_file(), f"the demo model should ship inside the package: {DEMO_MODEL}"
    return load_model(DEMO_MODEL, device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def heldout_ids():
    return load_tokenizer(65536).encode(HELDOUT.read_text(encoding="utf-8"))


def _nll_bits(logits: torch.Tensor, targets: list[int]) -> float:
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -logp[torch.arange(len(targets)), torch.tensor(targets)].sum().item() / math.log(2)


def test_demo_model_is_small_official_v7(demo):
    assert DEMO_MODEL.stat().st_size <= 40 * 2**20
    assert demo.config.version == "7.0" and demo.config.vocab_size == 65536
    raw = torch.load(DEMO_MODEL, map_location="cpu", weights_only=True)
    assert raw["emb.weight"].dtype == torch.bfloat16  # as official files are
    assert "blocks.0.att.r_k" in raw and "head.weight" in raw


def test_reference_package_agrees_on_trained_weights(demo, heldout_ids):
    from tests.reference import load_reference

    ref = load_reference(DEMO_MODEL, "7.0")
    ids = heldout_ids[:160]
    ours = demo.forward(ids, demo.zero_state(), full_output=True)
    theirs, _ = ref.forward(ids, None, full_output=True)
    dev = (ours - theirs.float()).abs().max().item()
    print(f"demo model: max |logit - reference| over {len(ids)} held-out positions = {dev:.2e}")
    assert dev < 2e-3
    assert torch.equal(ours.argmax(-1), theirs.float().argmax(-1))


def test_heldout_loss_rnn_equals_sequence_and_is_low(demo, heldout_ids):
    n = 400
    seq_bits = _nll_bits(demo.forward(heldout_ids[:n], demo.zero_state(), full_output=True)[:-1],
                         heldout_ids[1:n])
    state = demo.zero_state()
    rnn_logits = torch.stack([demo.forward([t], state) for t in heldout_ids[:n - 1]])
    rnn_bits = _nll_bits(rnn_logits, heldout_ids[1:n])
    assert abs(seq_bits - rnn_bits) / seq_bits < 1e-4

    logits = demo.forward(heldout_ids, demo.zero_state(), full_output=True)[:-1]
    n_bytes = len(HELDOUT.read_bytes())
    bpb = _nll_bits(logits, heldout_ids[1:]) / n_bytes
    print(f"demo model: {bpb:.3f} bits/byte on {HELDOUT.name}")
    assert bpb < HELDOUT_BPB_LIMIT


def test_training_smoke_reduces_loss():
    cfg = TrainConfig(n_layer=2, n_embd=64, ctx_len=32, batch=4, steps=25, lr=3e-3, warmup=3)
    gen = torch.Generator().manual_seed(0)
    used = torch.arange(200)
    trainer = Trainer(cfg, used * 7 + 1)      # any 200 World ids
    pattern = torch.randint(0, 200, (40,), generator=gen)
    stream = pattern.repeat(30)                # learnable: a repeating sequence
    windows = lambda: torch.stack([stream[s:s + 33] for s in
                                   torch.randint(0, len(stream) - 33, (4,), generator=gen)])
    first = trainer.step(windows(), 0)
    for step in range(1, cfg.steps):
        last = trainer.step(windows(), step)
    assert last < first - 2.0
    exported = trainer.export()
    assert exported["head.weight"].shape == (65536, 64)
    assert exported["head.weight"][0].abs().sum() == 0  # unused rows stay exactly zero


def test_chat_with_no_arguments_replies_on_piped_input(tmp_path):
    env = {**os.environ, "CHATRWKV_HOME": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    out = subprocess.run([sys.executable, "-m", "chatrwkv", "--seed", "1"],
                         check=False, input="Good morrow, fair lady. How dost thou?\n",
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.strip()) > 0
    assert "Traceback" not in out.stderr
