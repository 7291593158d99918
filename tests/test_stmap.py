"""Safetensors files bigger than memory: read through a read-only mapping (chatrwkv/stmap.py)."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from chatrwkv.stmap import map_readonly
from chatrwkv.synth import write_checkpoint

ROOT = Path(__file__).resolve().parents[1]
DIMS = {"n_layer": 2, "n_embd": 128, "vocab_size": 300, "head_size": 32}


def test_readonly_map_gives_the_same_tensors_as_safetensors(tmp_path):
    path = write_checkpoint(tmp_path / "m.safetensors", "7.0", seed=3, **DIMS)
    ours, theirs = map_readonly(path), load_file(str(path))
    assert ours.keys() == theirs.keys()
    for k, v in theirs.items():
        assert ours[k].dtype == v.dtype and torch.equal(ours[k], v)


def _with_header(path: Path, header: object) -> Path:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    body = json.dumps(header).encode()
    out = path.with_name("bad.safetensors")
    out.write_bytes(struct.pack("<Q", len(body)) + body + raw[8 + n:])
    return out


@pytest.mark.parametrize("damage", ["past_end", "wrong_size", "bad_dtype", "not_object",
                                    "misaligned"])
def test_readonly_map_refuses_a_header_that_does_not_fit(tmp_path, damage):
    path = write_checkpoint(tmp_path / "m.safetensors", "7.0", seed=3, **DIMS)
    raw = path.read_bytes()
    header = json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])
    key = next(k for k in header if k != "__metadata__" and header[k]["dtype"] == "BF16")
    b, e = header[key]["data_offsets"]
    if damage == "past_end":
        header[key]["data_offsets"] = [b, e + len(raw)]
    elif damage == "wrong_size":
        header[key]["shape"] = [header[key]["shape"][0] + 1, *header[key]["shape"][1:]]
    elif damage == "bad_dtype":
        header[key]["dtype"] = "Q4"
    elif damage == "misaligned":
        header[key]["data_offsets"] = [b + 1, e + 1]
    else:
        header = [1, 2]
    with pytest.raises((ValueError, TypeError)):
        map_readonly(_with_header(path, header))


@pytest.mark.parametrize("version", ["7.0", "6.0", "5.2", "4"])
def test_a_model_too_big_to_map_privately_loads_read_only(tmp_path, version):
    """The refusal is simulated (safetensors' load_file raises what it raises on a 26 GB file
    here); the loaders must then never write into a checkpoint tensor: it would fault, so the
    load runs in a child process."""
    dims = dict(DIMS, **({"head_size": 64} if version == "4" else {}))
    path = write_checkpoint(tmp_path / "m.safetensors", version, seed=3, **dims)
    script = textwrap.dedent(f"""
        import safetensors.torch, torch
        from chatrwkv.models import load_model
        want = {{}}
        for dtype in ("fp32", "bf16", "int8", "int4"):
            m = load_model({str(path)!r}, "cpu", dtype, use_cache=False)
            want[dtype] = m.forward([1, 2, 3], m.zero_state())
        def refuse(*a, **k):
            raise RuntimeError("unable to mmap 26478415936 bytes from file <x>: Cannot "
                               "allocate memory (12)")
        safetensors.torch.load_file = refuse
        for dtype, logits in want.items():
            m = load_model({str(path)!r}, "cpu", dtype, use_cache=False)
            got = m.forward([1, 2, 3], m.zero_state())
            assert torch.equal(got, logits), dtype
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, check=False,
                          text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_a_pth_too_big_to_map_privately_loads_read_only(tmp_path):
    """torch.load's own mapping refused (as for a 26.5 GB .pth on the 24 GB machine): the same
    tensors through a read-only mapping, torch left as it was, code-carrying pickles refused."""
    path = write_checkpoint(tmp_path / "m.pth", "7.0", seed=3, **DIMS)
    script = textwrap.dedent(f"""
        import torch
        from chatrwkv.checkpoint import Checkpoint
        want = Checkpoint.open({str(path)!r}).tensors
        before = torch.UntypedStorage.__dict__.get("from_file")
        original = torch.UntypedStorage.from_file
        def refuse(filename, shared=False, nbytes=0):
            raise RuntimeError(f"unable to mmap {{nbytes}} bytes from file <{{filename}}>: "
                               "Cannot allocate memory (12)")
        torch.UntypedStorage.from_file = refuse
        got = Checkpoint.open({str(path)!r}).tensors
        assert torch.UntypedStorage.from_file is refuse  # put back as it was
        assert want.keys() == got.keys()
        assert all(torch.equal(want[k], got[k]) for k in want)
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          check=False, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
