"""The converted-weight cache (models/weightcache.py, stwriter.py, `chatrwkv cache`): a second
int8 load restores the matrices from the cache without quantizing and gives identical logits;
a stale, damaged or incomplete cache is rebuilt with one line and never breaks a load; `list`
shows caches and `cache clear` removes them."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from chatrwkv.errors import CheckpointError
from chatrwkv.models import load_model, quant, weightcache
from chatrwkv.models.weightcache import cache_files
from chatrwkv.stwriter import PAD_PREFIX, SafetensorsWriter
from chatrwkv.synth import write_checkpoint

ROOT = Path(__file__).resolve().parents[1]
PROMPT = [3, 1, 4, 1, 5, 9, 2, 6]
V7 = ("7.0", {"n_layer": 2, "n_embd": 128, "vocab_size": 300, "head_size": 32})
V5 = ("5.2", {"n_layer": 1, "n_embd": 64, "vocab_size": 300, "head_size": 32})


def _logits(model) -> torch.Tensor:
    state = model.zero_state()
    with torch.inference_mode():
        seq = model.forward(PROMPT, state, full_output=True)
        one = model.forward([7], state)  # the one-token path (the C step for v7)
    return torch.cat([seq, one.unsqueeze(0)])


def _load(path: Path, notes: list[str] | None = None):
    return load_model(path, "cpu", "int8", notice=(notes.append if notes is not None else None))


def _no_quantizing(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("quantized although the cache should have served")
    monkeypatch.setattr(quant, "quantize_rows", refuse)


@pytest.fixture(params=[V7, V5], ids=["v7", "v5"])
def ckpt(request, tmp_path) -> Path:
    version, dims = request.param
    return write_checkpoint(tmp_path / "model.pth", version, seed=2, **dims)


def test_second_load_uses_the_cache_and_gives_identical_logits(ckpt, monkeypatch):
    notes: list[str] = []
    first = _logits(_load(ckpt, notes))
    files = cache_files()
    assert len(files) == 1 and files[0].name.startswith("model.") and ".int8." in files[0].name
    meta = weightcache.describe(files[0])
    assert meta["dtype"] == "int8" and meta["format"] == weightcache.FORMAT
    _no_quantizing(monkeypatch)
    second = _logits(_load(ckpt, notes))
    assert torch.equal(first, second)
    assert notes == []  # nothing to say when all is well
    assert cache_files() == files


def test_fp32_and_no_cache_loads_write_nothing(ckpt):
    load_model(ckpt, "cpu", "fp32")
    load_model(ckpt, "cpu", "int8", use_cache=False)
    assert cache_files() == []


def test_stale_cache_is_rebuilt(ckpt, monkeypatch):
    first = _logits(_load(ckpt))
    old = cache_files()[0]
    st = ckpt.stat()
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the model file changed
    notes: list[str] = []
    again = _logits(_load(ckpt, notes))
    assert len(notes) == 1 and "stale" in notes[0] and "rebuilding" in notes[0]
    assert torch.equal(first, again)
    assert weightcache.describe(old)["source_mtime_ns"] == str(st.st_mtime_ns + 10**9)
    # a new format version: a new file name, and the old file goes when the new one is written
    monkeypatch.setattr(weightcache, "FORMAT", "999")
    _load(ckpt)
    assert [p.name for p in cache_files()] == [old.name.replace(".f1.", ".f999.")]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_damaged_cache_file_is_rebuilt(ckpt, damage):
    first = _logits(_load(ckpt))
    path = cache_files()[0]
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[:len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\xff" * 64 + data[64:])
    else:
        path.write_bytes(b"")
    notes: list[str] = []
    again = _logits(_load(ckpt, notes))
    assert len(notes) == 1 and "damaged" in notes[0] and "rebuilding" in notes[0]
    assert torch.equal(first, again)
    assert path.read_bytes() == data  # written again, whole


def test_cache_with_a_misshapen_part_is_dropped_not_used(ckpt):
    first = _logits(_load(ckpt))
    path = cache_files()[0]
    tensors = {k: t.clone() for k, t in load_file(str(path)).items()}  # before rewriting it
    meta = weightcache.describe(path)
    key = next(k for k in tensors if k.endswith(":q"))
    tensors[key] = tensors[key][:-1]  # valid file, right key, wrong shape
    writer = SafetensorsWriter(path)
    for name, t in tensors.items():
        if not name.startswith(PAD_PREFIX):
            writer.add(name, t)
    writer.close(meta)
    notes: list[str] = []
    again = _logits(_load(ckpt, notes))
    assert len(notes) == 1 and "damaged" in notes[0] and "removed" in notes[0]
    assert torch.equal(first, again)
    assert cache_files() == []  # rebuilt at the next start
    _load(ckpt)
    assert len(cache_files()) == 1


def test_failed_load_leaves_no_cache_files(tmp_path):
    version, dims = V7
    weights_path = write_checkpoint(tmp_path / "bad.pth", version, seed=1, **dims)
    weights = torch.load(weights_path, weights_only=True)
    weights["blocks.1.ffn.value.weight"] = weights["blocks.1.ffn.value.weight"][:, :-1]
    torch.save(weights, weights_path)
    with pytest.raises(Exception, match="has shape"):
        _load(weights_path)
    d = weightcache.cache_dir()
    assert not d.is_dir() or list(d.iterdir()) == []


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chatrwkv", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120, env=dict(os.environ), check=False)


def test_list_shows_caches_and_clear_removes_them(tmp_path):
    version, dims = V5
    a = write_checkpoint(tmp_path / "alpha.pth", version, seed=1, **dims)
    b = write_checkpoint(tmp_path / "beta.pth", version, seed=3, **dims)
    _load(a)
    _load(b)
    assert len(cache_files()) == 2
    listed = _cli("list")
    assert listed.returncode == 0, listed.stderr
    assert "alpha." in listed.stdout and "beta." in listed.stdout and "int8" in listed.stdout
    shown = _cli("cache")
    assert shown.returncode == 0 and str(a.resolve()) in shown.stdout.replace("\n", "")
    one = _cli("cache", "clear", "alpha")
    assert one.returncode == 0 and "removed 1 cache file " in one.stdout
    assert [p.name.split(".")[0] for p in cache_files()] == ["beta"]
    rest = _cli("cache", "clear")
    assert rest.returncode == 0 and cache_files() == []
    assert "no converted-weight caches" in _cli("cache", "list").stdout


def test_writer_streams_aligned_tensors_that_safetensors_reads_back(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {"q": torch.randint(-127, 128, (3, 5), generator=g, dtype=torch.int8),
               "scale": torch.rand(3, generator=g), "emb": torch.randn(4, 6).bfloat16(),
               "empty": torch.zeros(0), "flag": torch.tensor([True, False])}
    path = tmp_path / "t.safetensors"
    writer = SafetensorsWriter(path, reserve=1000)
    for name, t in tensors.items():
        writer.add(name, t)
    writer.close({"who": "test"})
    back = {k: v for k, v in load_file(str(path)).items() if not k.startswith(PAD_PREFIX)}
    assert back.keys() == tensors.keys()
    assert all(torch.equal(back[k], tensors[k]) for k in tensors)
    n = struct.unpack("<Q", path.read_bytes()[:8])[0]
    header = json.loads(path.read_bytes()[8:8 + n])
    assert (8 + n) % 64 == 0
    assert all(e["data_offsets"][0] % 64 == 0 for k, e in header.items()
               if k != "__metadata__" and not k.startswith(PAD_PREFIX))
    with pytest.raises(ValueError, match="exceeds"):
        small = SafetensorsWriter(tmp_path / "s.safetensors", reserve=16)
        small.add("x", torch.zeros(1))
        small.close()
    assert not (tmp_path / "s.safetensors").exists()


@pytest.mark.parametrize("version,dims", [V7, ("4", {"n_layer": 2, "n_embd": 64,
                                                     "vocab_size": 300})], ids=["v7", "v4"])
def test_int4_second_load_restores_packed_rows_and_gives_identical_logits(
        version, dims, tmp_path, monkeypatch):
    path = write_checkpoint(tmp_path / "model.pth", version, seed=3, **dims)
    first = _logits(load_model(path, "cpu", "int4"))
    files = cache_files()
    assert len(files) == 1 and ".int4." in files[0].name

    def refuse(*args, **kwargs):
        raise AssertionError("quantized although the cache should have served")
    monkeypatch.setattr(quant, "quantize_int4", refuse)
    second = _logits(load_model(path, "cpu", "int4"))
    assert torch.equal(first, second)


@pytest.mark.parametrize("dtype", ["int8", "int4"])
@pytest.mark.parametrize("key", ["blocks.1.ffn.key.weight", "head.weight", "emb.weight",
                                 "blocks.0.att.w1"])
def test_nonfinite_weights_are_refused_whether_the_quantizer_or_the_scan_sees_them(
        tmp_path, monkeypatch, dtype, key):
    """A quantized matrix is checked by its quantizer (not read again by the scan), the rest by
    the scan after the build; either way one error naming the tensor, and no cache is left."""
    version, dims = V7
    path = write_checkpoint(tmp_path / "nan.pth", version, seed=1, **dims)
    weights = torch.load(path, weights_only=True)
    bad = weights[key].clone()
    bad.view(-1)[bad.numel() // 2 + 1] = float("nan") if "ffn" in key else float("-inf")
    weights[key] = bad
    torch.save(weights, path)
    scanned: list[str] = []
    real_scan = quant.has_nonfinite

    def scan(t):
        scanned.append(tuple(t.shape))
        return real_scan(t)
    monkeypatch.setattr(quant, "has_nonfinite", scan)
    with pytest.raises(CheckpointError, match=f"tensor '{key}' holds NaN or infinite"):
        load_model(path, "cpu", dtype)
    d = weightcache.cache_dir()
    assert not d.is_dir() or list(d.iterdir()) == []
    # a clean file: the big matrices are quantized once, not also scanned as checkpoint tensors
    clean = write_checkpoint(tmp_path / "ok.pth", version, seed=1, **dims)
    scanned.clear()
    load_model(clean, "cpu", dtype)
    C = dims["n_embd"]
    assert (4 * C * C,) not in scanned  # ffn.key/value: [4C, C]; no other tensor has that size
    assert (dims["vocab_size"] * C,) in scanned  # the embedding, which stays as stored
