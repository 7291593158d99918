"""Safe reading of checkpoint files (.pth state dicts and .safetensors).

The format is sniffed from the file's first bytes, never from its name. `.pth` files are read with
`torch.load(weights_only=True, mmap=True)`, so a pickle that carries code is refused; safetensors
files are memory-mapped. Every failure is a `CheckpointError` whose message names the file.
"""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from .errors import CheckpointError, first_line

_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = b"\x80"


def _sniff(path: Path) -> str:
    with path.open("rb") as f:
        head = f.read(16)
    if head.startswith((_ZIP_MAGIC, _PICKLE_PROTO)):
        return "torch"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    return "unknown"


def _read_torch(path: Path) -> dict:
    try:
        # mmap needs the zip format; legacy pickles are read whole (still weights_only).
        mmap = zipfile.is_zipfile(path)
        return torch.load(path, map_location="cpu", mmap=mmap, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused to load: the file holds Python objects or code, not only tensors "
            f"({first_line(e, 160)})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path}: damaged or truncated checkpoint ({first_line(e)})") from None


def _read_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: damaged or truncated safetensors file ({first_line(e)})") from None


class Checkpoint:
    """A mapping of tensor names to tensors read from one file, with named-key errors.

    Model builders call `require` for each tensor they use; `check_consumed` then reports a key
    that no builder asked for, so an unknown variant is refused instead of silently misread.
    """

    def __init__(self, path: Path | str, tensors: Mapping[str, torch.Tensor]):
        self.path = Path(path)
        self.tensors = dict(tensors)
        self._used: set[str] = set()

    @classmethod
    def open(cls, path: Path | str) -> Checkpoint:
        path = Path(path)
        if not path.exists():
            raise CheckpointError(f"{path}: no such file")
        if path.is_dir():
            raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
        kind = _sniff(path)
        if kind == "torch":
            obj = _read_torch(path)
        elif kind == "safetensors":
            obj = _read_safetensors(path)
        else:
            raise CheckpointError(f"{path}: not a PyTorch (.pth) or safetensors checkpoint")
        if not isinstance(obj, dict) or not obj:
            raise CheckpointError(f"{path}: does not hold a state dict of tensors")
        for key, value in obj.items():
            if not isinstance(key, str) or not isinstance(value, torch.Tensor):
                raise CheckpointError(f"{path}: entry {key!r} is not a named tensor")
        return cls(path, obj)

    def __contains__(self, key: str) -> bool:
        return key in self.tensors

    def keys(self) -> Iterable[str]:
        return self.tensors.keys()

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.require(key).shape)

    def require(self, key: str) -> torch.Tensor:
        try:
            tensor = self.tensors[key]
        except KeyError:
            raise CheckpointError(f"{self.path}: missing tensor '{key}'") from None
        self._used.add(key)
        return tensor

    def optional(self, key: str) -> torch.Tensor | None:
        if key not in self.tensors:
            return None
        return self.require(key)

    def expect_shape(self, key: str, shape: tuple[int, ...]) -> torch.Tensor:
        tensor = self.require(key)
        if tuple(tensor.shape) != tuple(shape):
            raise CheckpointError(
                f"{self.path}: tensor '{key}' has shape {tuple(tensor.shape)}, expected {tuple(shape)}"
            )
        return tensor

    def n_layers(self) -> int:
        """Number of `blocks.N.` prefixes; the numbering must be 0..L-1 without gaps."""
        ids = {int(k.split(".")[1]) for k in self.tensors if k.startswith("blocks.")
               and k.split(".")[1].isdigit()}
        if not ids:
            raise CheckpointError(f"{self.path}: no 'blocks.N.' tensors: not an RWKV checkpoint")
        missing = sorted(set(range(max(ids) + 1)) - ids)
        if missing:
            raise CheckpointError(f"{self.path}: missing tensors of layer {missing[0]} ('blocks.{missing[0]}.*')")
        return max(ids) + 1

    def check_consumed(self, ignore: Iterable[str] = ()) -> None:
        unused = sorted(set(self.tensors) - self._used - set(ignore))
        if unused:
            raise CheckpointError(f"{self.path}: unexpected tensor '{unused[0]}' for this RWKV version")

    def fingerprint(self) -> str:
        """A short hash of the layout and of a few weights: identifies the model for state files."""
        h = hashlib.sha256()
        for key in sorted(self.tensors):
            t = self.tensors[key]
            h.update(f"{key}:{tuple(t.shape)}:{t.dtype};".encode())
        for key in ("emb.weight", "head.weight"):
            if key in self.tensors:
                # Its bytes in native order (as numpy's tobytes() gave), through torch alone;
                # bytes(untyped_storage()) gave the same one byte at a time (0.4 s at start-up).
                sample = self.tensors[key].detach().flatten()[:4096].float().contiguous()
                h.update(bytes(sample.view(torch.uint8).tolist()))
        return h.hexdigest()[:16]
