"""The typed state: independent clones, in-place restore, atomic lossless files."""

import os

import pytest
import torch

from chatrwkv.errors import StateFileError
from chatrwkv.state import WKVState

IDENTITY = {"version": "7.0", "n_layer": "2", "fingerprint": "abc"}


def _random_state(seed: int = 0) -> WKVState:
    g = torch.Generator().manual_seed(seed)
    s = WKVState.zeros(2, 8, 2, 4)
    for t in s.tensors().values():
        t.copy_(torch.randn(t.shape, generator=g))
    return s


def test_zeros_are_fp32_with_layer_first():
    s = WKVState.zeros(3, 8, 2, 4)
    assert s.att_x.shape == (3, 8) and s.ffn_x.shape == (3, 8)
    assert s.wkv.shape == (3, 2, 4, 4)
    assert all(t.dtype == torch.float32 for t in s.tensors().values())
    assert s.nbytes == 4 * (3 * 8 * 2 + 3 * 2 * 4 * 4)


def test_clone_is_independent_and_copy_restores():
    s = _random_state()
    c = s.clone()
    assert c.equal(s)
    s.wkv[0, 0, 0, 0] += 1.0
    s.att_x.zero_()
    assert not c.equal(s)
    s.copy_(c)
    assert s.equal(c)


def test_file_round_trip_is_lossless(tmp_path):
    s = _random_state()
    path = tmp_path / "s.state"
    s.save(path, IDENTITY)
    back = WKVState.load(path, IDENTITY)
    assert back.equal(s)
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_other_model_future_format_and_damage_are_refused(tmp_path):
    path = tmp_path / "s.state"
    _random_state().save(path, IDENTITY)
    with pytest.raises(StateFileError, match="another model.*fingerprint"):
        WKVState.load(path, {**IDENTITY, "fingerprint": "xyz"})
    data = path.read_bytes()
    cut = tmp_path / "cut.state"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(StateFileError, match="not a readable state file"):
        WKVState.load(cut, IDENTITY)
    from safetensors.torch import save_file
    future = tmp_path / "future.state"
    save_file({"att_x": torch.zeros(1)}, str(future),
              metadata={"format": "chatrwkv-state", "format_version": "99"})
    with pytest.raises(StateFileError, match="newer chatrwkv"):
        WKVState.load(future, IDENTITY)


def test_failed_save_leaves_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "s.state"
    old = _random_state(1)
    old.save(path, IDENTITY)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        _random_state(2).save(path, IDENTITY)
    monkeypatch.undo()
    assert WKVState.load(path, IDENTITY).equal(old)
    assert [p.name for p in tmp_path.iterdir()] == ["s.state"]
