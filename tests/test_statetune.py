"""State-tuning files mount in each version's reference orientation: the first logits equal the
official package's when it is given the same initial state, built the way ChatRWKV builds it
(v5/v6: `time_state.transpose(1, 2)`; v7: as stored)."""

import re

import pytest
import torch
from safetensors.torch import save_file

from chatrwkv.errors import StateFileError
from chatrwkv.models import load_model
from chatrwkv.statetune import mount_state
from chatrwkv.synth import write_checkpoint
from tests.reference import load_reference

DIMS = {"n_layer": 2, "n_embd": 64, "vocab_size": 512, "head_size": 16}
H, N = 4, 16
TOKENS = [5, 17, 200, 3, 99]
LOGIT_TOL = 1e-4  # fp32 vs the reference's cpu fp32


def tuned(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"blocks.{i}.att.time_state": torch.randn(H, N, N, generator=g) * 0.5
            for i in range(DIMS["n_layer"])}


def reference_state(version: str, raw: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    state = []
    for i in range(DIMS["n_layer"]):
        t = raw[f"blocks.{i}.att.time_state"].float()
        wkv = t if version.startswith("7") else t.transpose(1, 2)
        state += [torch.zeros(DIMS["n_embd"]), wkv.contiguous(), torch.zeros(DIMS["n_embd"])]
    return state


@pytest.mark.parametrize("version", ["5.2", "6.0", "7.0"])
@pytest.mark.parametrize("form", ["pth", "state"])
def test_first_logits_match_reference(tmp_path, version, form):
    ckpt = write_checkpoint(tmp_path / "m.pth", version, seed=3, **DIMS)
    raw = tuned()
    path = tmp_path / f"tuned.{form}"
    torch.save(raw, path) if form == "pth" else save_file(raw, str(path))
    model = load_model(ckpt, device="cpu", dtype="fp32")
    state = mount_state(path, model)
    with torch.inference_mode():
        ours = model.forward(TOKENS, state)
        theirs, _ = load_reference(ckpt, version).forward(TOKENS, reference_state(version, raw))
        plain = model.forward(TOKENS, model.zero_state())
    dev = (ours - theirs).abs().max().item()
    assert dev < LOGIT_TOL, dev
    assert (ours - plain).abs().max().item() > 100 * LOGIT_TOL  # the state did matter


@pytest.fixture(scope="module")
def v7(tmp_path_factory):
    ckpt = write_checkpoint(tmp_path_factory.mktemp("v7") / "m.pth", "7.0", **DIMS)
    return load_model(ckpt, device="cpu", dtype="fp32")


@pytest.mark.parametrize("change, message", [
    (lambda r: {k: v for k, v in r.items() if k.startswith("blocks.0.")}, "for 1 layers"),
    (lambda r: {k: v[:2] for k, v in r.items()}, "layer 0 time_state is [2, 16, 16]"),
    (lambda r: {k: v[:, :8, :8] for k, v in r.items()}, "head size"),
    (lambda r: {"blocks.0.att.other": torch.zeros(1)}, "has no blocks.N.att.time_state"),
])
def test_mismatch_is_one_clear_line(tmp_path, v7, change, message):
    path = tmp_path / "bad.pth"
    torch.save(change(tuned()), path)
    with pytest.raises(StateFileError, match=re.escape(message)) as info:
        mount_state(path, v7)
    assert "\n" not in str(info.value)


def test_garbage_and_pickles_are_refused(tmp_path, v7):
    junk = tmp_path / "junk.state"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(StateFileError, match="not a readable"):
        mount_state(junk, v7)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    evil = tmp_path / "evil.pth"
    torch.save({"blocks.0.att.time_state": Evil()}, evil)
    with pytest.raises(StateFileError, match="not a readable"):
        mount_state(evil, v7)
