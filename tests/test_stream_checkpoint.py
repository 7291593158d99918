"""Big random checkpoints are written tensor by tensor (synth.stream_checkpoint and
benchmarks/make_checkpoints.py): the same values as `make_weights`, as .pth or .safetensors, and
the official 7.2B / 13.3B shapes are listed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from chatrwkv.models import load_model
from chatrwkv.synth import SIZES, make_weights, stream_checkpoint

ROOT = Path(__file__).resolve().parents[1]
DIMS = {"n_layer": 2, "n_embd": 128, "vocab_size": 300, "head_size": 32}


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_streamed_checkpoint_holds_make_weights_values(tmp_path, suffix):
    path = stream_checkpoint(tmp_path / f"m{suffix}", "7.0", seed=3, **DIMS)
    want = make_weights("7.0", seed=3, **DIMS)
    got = load_file(str(path)) if suffix == ".safetensors" else torch.load(path, weights_only=True)
    assert got.keys() == want.keys()
    assert all(got[k].dtype == torch.bfloat16 and torch.equal(got[k], want[k]) for k in want)
    assert load_model(path, "cpu", "fp32").config.n_layer == 2
    assert not list(tmp_path.glob("*.partial"))


def test_streaming_is_v7_only(tmp_path):
    with pytest.raises(ValueError, match="v7 only"):
        stream_checkpoint(tmp_path / "m.safetensors", "5.2", **DIMS)


def test_official_big_shapes_are_listed():
    assert SIZES["v7-7.2b"] == ("7.0", {"n_layer": 32, "n_embd": 4096, "vocab_size": 65536})
    assert SIZES["v7-13.3b"] == ("7.0", {"n_layer": 61, "n_embd": 4096, "vocab_size": 65536})
    out = subprocess.run([sys.executable, "benchmarks/make_checkpoints.py", "--list"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0 and "v7-13.3b" in out.stdout and "L61 D4096" in out.stdout
