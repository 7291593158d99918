"""Checkpoints larger than the machine's memory, mapped read-only (safetensors and .pth).

safetensors (and torch's `from_file`) map a file privately and writable, and Linux's default
overcommit rule refuses a private writable mapping larger than memory plus swap: a 13.3B bf16
checkpoint (26.5 GB) could not even be opened on a 24 GB machine ("unable to mmap ... Cannot
allocate memory"). A read-only mapping is not charged against memory, so this reader maps the
file PROT_READ and cuts the tensors out of it by the header's offsets (the format:
https://github.com/huggingface/safetensors#format). The tensors are read-only: writing into one
would fault. Loaders only read checkpoint tensors (every prepared weight is a copy, or the
stored tensor used as it is), and this path is taken only where the ordinary one is refused.
"""

from __future__ import annotations

import json
import math
import mmap
import struct
import threading
import warnings
from pathlib import Path

import torch


def refused_for_size(e: BaseException) -> bool:
    """Whether torch or safetensors failed to map a file because the private mapping was
    refused (ENOMEM: "unable to mmap N bytes from file ...: Cannot allocate memory (12)")."""
    return "Cannot allocate memory" in str(e)


MAX_HEADER = 100 << 20  # bytes of JSON; real headers of 13B models are well under 1 MB
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
          "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16,
          "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


def map_readonly(path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors as read-only views of one read-only mapping; ValueError when the
    header does not describe the file (TypeError when it is no JSON object)."""
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8).ljust(8, b"\0"))
        if not 2 <= n <= MAX_HEADER:
            raise ValueError(f"header length {n} out of range")
        header = json.loads(f.read(n))
        mm = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
    if not isinstance(header, dict):
        raise TypeError("header is not a JSON object")
    with warnings.catch_warnings():  # "non-writable buffer": read-only is the point
        warnings.simplefilter("ignore")
        whole = torch.frombuffer(mm, dtype=torch.uint8)
    base, size = 8 + n, len(mm)
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape = DTYPES[info["dtype"]], [int(d) for d in info["shape"]]
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"entry {name[:80]!r} is not a tensor description") from None
        nbytes = math.prod(shape) * dtype.itemsize
        if min(shape, default=0) < 0 or not 0 <= begin <= end or base + end > size \
                or end - begin != nbytes or (base + begin) % dtype.itemsize:
            raise ValueError(f"tensor {name[:80]!r} does not fit the file")
        tensors[name] = whole[base + begin:base + end].view(dtype).view(shape)
    return tensors


_PATCH_LOCK = threading.Lock()


def load_torch_readonly(path: Path) -> dict:
    """`torch.load(path, mmap=True, weights_only=True)` over a read-only mapping.

    torch maps the whole zip with `UntypedStorage.from_file` (private, writable: refused past
    memory + swap, as above) and cuts every tensor out of that one storage; here that storage
    is a read-only mapping instead, handed to torch.load for the length of the call (torch
    2.x's serialization.py; with another torch where that seam is gone, the original error
    stands). Still weights_only: a pickle with code is refused as before."""
    with path.open("rb") as f:
        mm = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        storage = torch.frombuffer(mm, dtype=torch.uint8).untyped_storage()
    cls = torch.UntypedStorage
    own = "from_file" in vars(cls)  # else inherited from torch._C.StorageBase
    saved = vars(cls).get("from_file")
    original = cls.from_file
    target = str(path)

    def from_file(filename, shared=False, nbytes=0):
        if str(filename) == target and not shared and nbytes == len(mm):
            return storage
        return original(filename, shared, nbytes)

    with _PATCH_LOCK:
        cls.from_file = from_file
        try:
            return torch.load(target, map_location="cpu", mmap=True, weights_only=True)
        finally:
            if own:
                cls.from_file = saved
            else:
                del cls.from_file
