"""Write a safetensors file one tensor at a time, holding no more than the tensor in hand.

`safetensors.torch.save_file` serializes every tensor to bytes before it writes (a second copy
of the whole model in memory); a converted 7B model or a random 13B checkpoint cannot afford
that. This writer reserves room for the header, streams each tensor's bytes as it comes, and
writes the header last. The format (https://github.com/huggingface/safetensors) allows the
header JSON to be padded with spaces, and wants the data without holes: where a tensor needs
alignment, a small `__pad.N` uint8 tensor fills the gap (`PAD_PREFIX`; readers skip it).
Every tensor starts on a 64-byte boundary of the file, so memory-mapped tensors are aligned.
"""

from __future__ import annotations

import ctypes
import json
import os
import struct
from pathlib import Path

import torch

PAD_PREFIX = "__pad."
ALIGN = 64
_HEADER_ENTRY = 160  # bytes of header JSON per tensor, generously (name, dtype, shape, offsets)

ST_DTYPES: dict[torch.dtype, str] = {
    torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64",
    torch.int8: "I8", torch.uint8: "U8", torch.int16: "I16", torch.int32: "I32",
    torch.int64: "I64", torch.bool: "BOOL",
}


def header_room(n_tensors: int, longest_name: int = 64) -> int:
    """Bytes to reserve for the header of `n_tensors` tensors (and as many pads)."""
    return 4096 + 2 * n_tensors * (_HEADER_ENTRY + longest_name)


class SafetensorsWriter:
    """`add(name, tensor)` in any order, then `close(metadata)`; `abort()` removes the file."""

    def __init__(self, path: Path | str, reserve: int = 1 << 20, align: int = ALIGN):
        self.path = Path(path)
        self.align = align  # 1: no pads (a checkpoint of one dtype needs none, readers no skip)
        self.reserve = -(-(reserve + 8) // ALIGN) * ALIGN - 8  # data starts 64-byte aligned
        self.entries: dict[str, dict] = {}
        self.offset = 0
        self._file = open(self.path, "wb")  # noqa: SIM115 (closed by close/abort)
        self._file.seek(8 + self.reserve)

    def _write(self, name: str, t: torch.Tensor) -> None:
        if name in self.entries:
            raise ValueError(f"tensor {name!r} written twice")
        dtype = ST_DTYPES.get(t.dtype)
        if dtype is None:
            raise ValueError(f"tensor {name!r}: dtype {t.dtype} has no safetensors name")
        raw = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        if raw.numel():  # the tensor's own bytes, without a copy (and without numpy)
            self._file.write(memoryview((ctypes.c_char * raw.numel()).from_address(
                raw.data_ptr())))
        end = self.offset + raw.numel()
        self.entries[name] = {"dtype": dtype, "shape": list(t.shape),
                              "data_offsets": [self.offset, end]}
        self.offset = end

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name.startswith(PAD_PREFIX):
            raise ValueError(f"tensor names starting with {PAD_PREFIX!r} are reserved")
        gap = -self.offset % self.align
        if gap:
            self._write(f"{PAD_PREFIX}{len(self.entries)}", torch.zeros(gap, dtype=torch.uint8))
        self._write(name, tensor)

    def close(self, metadata: dict[str, str] | None = None) -> Path:
        """Write the header and flush to disk; the file is complete only after this returns."""
        head: dict = {"__metadata__": dict(metadata or {})}
        head.update(self.entries)
        text = json.dumps(head, separators=(",", ":")).encode()
        if len(text) > self.reserve:
            self.abort()
            raise ValueError(f"safetensors header of {len(text)} bytes exceeds the "
                             f"{self.reserve} reserved")
        self._file.seek(0)
        self._file.write(struct.pack("<Q", self.reserve) + text.ljust(self.reserve, b" "))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        return self.path

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        self.path.unlink(missing_ok=True)
