"""Safe reading of checkpoint files (.pth state dicts and .safetensors).

The format is sniffed from the file's first bytes, never from its name. `.pth` files are read with
`torch.load(weights_only=True, mmap=True)`, so a pickle that carries code is refused; safetensors
files are memory-mapped. Every failure is a `CheckpointError` whose message names the file.
"""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch

from .errors import CheckpointError, first_line
from .safeio import FileRefused, check_regular
from .stmap import load_torch_readonly, map_readonly, refused_for_size

_ZIP_MAGIC = b"PK\x03\x04"
# Weights are floating point; int8 / uint8 may hold quantized weights. Anything else (int64,
# bool, complex, ...) is no RWKV weight and would be misread or crash later.
WEIGHT_DTYPES = frozenset({torch.float32, torch.float16, torch.bfloat16, torch.float64,
                           torch.int8, torch.uint8})
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
        try:
            return torch.load(path, map_location="cpu", mmap=mmap, weights_only=True)
        except RuntimeError as e:
            if not (mmap and refused_for_size(e)):
                raise
            return load_torch_readonly(path)  # bigger than memory: map it read-only
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused to load: the file holds Python objects or code, not only tensors "
            f"({first_line(e, 160)})"
        ) from None
    except Exception as e:  # noqa: BLE001 - untrusted bytes: a flipped byte in the zip or the
        # pickle surfaces as KeyError, IndexError, TypeError, AttributeError, AssertionError, ...
        raise CheckpointError(f"{path}: damaged or truncated checkpoint "
                              f"({type(e).__name__}: {first_line(e)})") from None


def _read_safetensors(path: Path) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # noqa: BLE001 - untrusted bytes (see _read_torch)
        if refused_for_size(e):  # bigger than memory: map it read-only
            try:
                return map_readonly(path)
            except (ValueError, TypeError, OSError, RuntimeError) as e2:
                e = e2
        raise CheckpointError(f"{path}: damaged or truncated safetensors file "
                              f"({type(e).__name__}: {first_line(e)})") from None


def _check_tensor(path: Path, key: str, t: torch.Tensor) -> None:
    """Dtype and shape only (no data is read: the file stays memory-mapped)."""
    if t.dtype not in WEIGHT_DTYPES:
        raise CheckpointError(f"{path}: tensor '{key[:80]}' has dtype "
                              f"{str(t.dtype).removeprefix('torch.')}, not a weight type")
    if t.dim() and 0 in t.shape:
        raise CheckpointError(f"{path}: tensor '{key[:80]}' is empty (shape {tuple(t.shape)})")


class Checkpoint:
    """A mapping of tensor names to tensors read from one file, with named-key errors.

    Model builders call `require` for each tensor they use; `check_consumed` then reports a key
    that no builder asked for, so an unknown variant is refused instead of silently misread.
    """

    def __init__(self, path: Path | str, tensors: Mapping[str, torch.Tensor]):
        self.path = Path(path)
        self.tensors = dict(tensors)
        self._used: set[str] = set()
        self._fingerprint: str | None = None

    @classmethod
    def open(cls, path: Path | str) -> Checkpoint:
        try:
            path = check_regular(path, "checkpoint file")
            kind = _sniff(path)
        except FileRefused as e:
            raise CheckpointError(str(e)) from None
        except OSError as e:
            raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from None
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
                raise CheckpointError(f"{path}: entry {str(key)[:80]!r} is not a named tensor")
            _check_tensor(path, key, value)
        return cls(path, obj)

    def check_finite(self, skip: Iterable[str] = (),
                     release: Callable[[torch.Tensor], None] | None = None) -> None:
        """Refuse NaN or Inf in any weight (one pass over the data, in slices, no full copy):
        such a model gives NaN logits, and nothing it says means anything. `skip`: keys not to
        read; `release(tensor)`: called on each checked slice, to hand a mapped file's pages
        back (else the pass would leave the whole file resident: 14 GB for a 7B bf16 file)."""
        from .models.quant import has_nonfinite  # in C where built: at memory speed

        skipped = set(skip)
        for key in sorted(self.tensors):
            t = self.tensors[key]
            if not t.is_floating_point() or key in skipped:
                continue
            flat = t.detach().reshape(-1)
            for part in flat.split(1 << 22):
                if has_nonfinite(part):
                    raise CheckpointError(f"{self.path}: tensor '{key}' holds NaN or infinite "
                                          "values: the file is damaged")
                if release is not None:
                    release(part)

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
               and k.split(".")[1].isdecimal() and len(k.split(".")[1]) < 7}
        if not ids:
            raise CheckpointError(f"{self.path}: no 'blocks.N.' tensors: not an RWKV checkpoint")
        if len(ids) != max(ids) + 1:  # (no set of range(max): a huge N would not fit)
            missing = [i for i in range(len(ids) + 1) if i not in ids][:1]
            raise CheckpointError(f"{self.path}: missing tensors of layer {missing[0]} ('blocks.{missing[0]}.*')")
        return max(ids) + 1

    def check_consumed(self, ignore: Iterable[str] = ()) -> None:
        unused = sorted(set(self.tensors) - self._used - set(ignore))
        if unused:
            raise CheckpointError(f"{self.path}: unexpected tensor '{unused[0]}' for this RWKV version")

    def fingerprint(self) -> str:
        """A short hash of the layout and of a few weights: identifies the model for state files.
        Computed once: the loader (converted-weight cache) and the model both ask for it."""
        if self._fingerprint is not None:
            return self._fingerprint
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
        self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint
