"""Safe, format-sniffing checkpoint reading: every failure is one line that names the file."""

import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from chatrwkv.checkpoint import Checkpoint
from chatrwkv.errors import CheckpointError
from chatrwkv.models import load_model


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def _one_line(err: Exception) -> str:
    text = str(err)
    assert "\n" not in text
    return text


def test_pth_and_safetensors_read_the_same(tmp_path):
    tensors = {"emb.weight": torch.randn(5, 3), "blocks.0.ln1.weight": torch.ones(3)}
    torch.save(tensors, tmp_path / "m.pth")
    save_file(tensors, str(tmp_path / "m.safetensors"))
    # Names are not trusted: the format is sniffed from the bytes.
    (tmp_path / "m.safetensors").rename(tmp_path / "renamed.bin")
    a = Checkpoint.open(tmp_path / "m.pth")
    b = Checkpoint.open(tmp_path / "renamed.bin")
    assert set(a.keys()) == set(b.keys())
    for k in tensors:
        assert torch.equal(a.require(k), b.require(k))
    assert a.fingerprint() == b.fingerprint()


def test_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"emb.weight": torch.zeros(2, 2), "x": _Evil()}, path)
    with pytest.raises(CheckpointError) as e:
        Checkpoint.open(path)
    msg = _one_line(e.value)
    assert str(path) in msg and "refused" in msg


def test_legacy_raw_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "evil_raw.pth"
    path.write_bytes(pickle.dumps(_Evil(), protocol=2))
    with pytest.raises(CheckpointError, match="refused"):
        Checkpoint.open(path)


@pytest.mark.parametrize("keep", [0.3, 0.9])
def test_truncated_files_are_refused(tmp_path, keep):
    src = tmp_path / "m.pth"
    torch.save({"emb.weight": torch.randn(64, 64)}, src)
    data = src.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError) as e:
        Checkpoint.open(cut)
    assert str(cut) in _one_line(e.value)

    st = tmp_path / "m.safetensors"
    save_file({"emb.weight": torch.randn(64, 64)}, str(st))
    st_cut = tmp_path / "cut.safetensors"
    st_cut.write_bytes(st.read_bytes()[: int(st.stat().st_size * keep)])
    with pytest.raises(CheckpointError) as e:
        Checkpoint.open(st_cut)
    assert str(st_cut) in _one_line(e.value)


def test_not_a_checkpoint(tmp_path):
    junk = tmp_path / "notes.txt"
    junk.write_text("hello world, not weights")
    with pytest.raises(CheckpointError, match="not a PyTorch"):
        Checkpoint.open(junk)
    with pytest.raises(CheckpointError, match="no such file"):
        Checkpoint.open(tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="directory"):
        Checkpoint.open(tmp_path)
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="state dict"):
        Checkpoint.open(tmp_path / "list.pth")
    torch.save({"a": 1}, tmp_path / "int.pth")
    with pytest.raises(CheckpointError, match="'a' is not a named tensor"):
        Checkpoint.open(tmp_path / "int.pth")


def test_unknown_layout_is_refused_by_the_loader(tmp_path):
    path = tmp_path / "gpt.pth"
    torch.save({"transformer.wte.weight": torch.zeros(10, 4),
                "blocks.0.attn.c_attn.weight": torch.zeros(12, 4)}, path)
    with pytest.raises(CheckpointError) as e:
        load_model(path)
    msg = _one_line(e.value)
    assert str(path) in msg and "not a known RWKV layout" in msg


def test_require_and_consumed_name_the_key(tmp_path):
    ckpt = Checkpoint(tmp_path / "x.pth", {"blocks.0.a": torch.zeros(2), "blocks.1.a": torch.zeros(2),
                                           "extra": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="missing tensor 'blocks.0.b'"):
        ckpt.require("blocks.0.b")
    with pytest.raises(CheckpointError, match=r"has shape \(2,\), expected \(3,\)"):
        ckpt.expect_shape("blocks.0.a", (3,))
    assert ckpt.n_layers() == 2
    ckpt.require("blocks.1.a")
    with pytest.raises(CheckpointError, match="unexpected tensor 'extra'"):
        ckpt.check_consumed()
    ckpt.check_consumed(ignore=["extra"])


def test_layer_gap_is_reported(tmp_path):
    ckpt = Checkpoint(tmp_path / "x.pth", {"blocks.0.a": torch.zeros(1), "blocks.2.a": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="layer 1"):
        ckpt.n_layers()
