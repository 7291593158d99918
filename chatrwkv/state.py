"""Typed recurrent state: named tensors stacked over layers, with clone / to / save / load.

A version's state class is a dataclass subclass of `State` whose fields are all tensors with the
layer as their first dimension. Everything here is generic over those fields, so snapshots,
branches and files work the same for every RWKV version.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import ClassVar

import torch
from typing_extensions import Self

from .errors import StateFileError

STATE_FORMAT = "chatrwkv-state"
STATE_FORMAT_VERSION = 1


@dataclasses.dataclass
class State:
    """Base class. Subclasses declare tensor fields, e.g. `att_x: torch.Tensor  # [L, C]`."""

    kind: ClassVar[str] = "state"

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def clone(self) -> Self:
        """An independent copy: later updates of either do not reach the other."""
        return type(self)(**{k: v.clone() for k, v in self.tensors().items()})

    def to(self, device: torch.device | str) -> Self:
        return type(self)(**{k: v.to(device) for k, v in self.tensors().items()})

    def copy_(self, other: Self) -> Self:
        """Overwrite this state in place with `other` (same shapes): restores a snapshot."""
        for k, v in self.tensors().items():
            v.copy_(getattr(other, k))
        return self

    @property
    def device(self) -> torch.device:
        return next(iter(self.tensors().values())).device

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def equal(self, other: State) -> bool:
        a, b = self.tensors(), other.tensors()
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # --- files -------------------------------------------------------------------------------

    def save(self, path: Path | str, identity: dict[str, str]) -> None:
        """Write atomically as safetensors; `identity` (the model's) goes into the metadata."""
        from safetensors.torch import save_file

        meta = {"format": STATE_FORMAT, "format_version": str(STATE_FORMAT_VERSION),
                "kind": self.kind, "identity": json.dumps(identity, sort_keys=True)}
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.tensors().items()}
        path = Path(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata=meta)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    @classmethod
    def load(cls, path: Path | str, identity: dict[str, str],
             device: torch.device | str = "cpu") -> Self:
        """Read a state written by `save`; refuse a file of another model or another format."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise StateFileError(f"{path}: not a readable state file ({str(e)[:160]})") from None
        if meta.get("format") != STATE_FORMAT:
            raise StateFileError(f"{path}: not a chatrwkv state file")
        if int(meta.get("format_version", "0")) > STATE_FORMAT_VERSION:
            raise StateFileError(f"{path}: written by a newer chatrwkv (format "
                                 f"{meta.get('format_version')}); please upgrade")
        theirs = json.loads(meta.get("identity", "{}"))
        if theirs != identity:
            diff = sorted(k for k in set(theirs) | set(identity) if theirs.get(k) != identity.get(k))
            raise StateFileError(f"{path}: belongs to another model (differs in {', '.join(diff)})")
        names = [f.name for f in dataclasses.fields(cls)]
        if meta.get("kind") != cls.kind or sorted(tensors) != sorted(names):
            raise StateFileError(f"{path}: holds a different kind of state")
        return cls(**{k: tensors[k].to(device) for k in names})


@dataclasses.dataclass
class WKVState(State):
    """State of RWKV v5, v6 and v7: two token-shift vectors and one WKV matrix per head per layer.

    The WKV matrices keep the orientation of the official `rwkv` package for each version
    (v5/v6: [H, N_k, N_v]; v7: [H, N_v, N_k]), so state-tuning files mount without transposes.
    All fields are fp32 whatever the weight dtype.
    """

    kind: ClassVar[str] = "wkv"

    att_x: torch.Tensor  # [L, C] last input of the time-mix block (token shift)
    wkv: torch.Tensor    # [L, H, N, N] fp32
    ffn_x: torch.Tensor  # [L, C] last input of the channel-mix block (token shift)

    @classmethod
    def zeros(cls, n_layer: int, n_embd: int, n_head: int, head_size: int,
              device: torch.device | str = "cpu") -> WKVState:
        return cls(
            att_x=torch.zeros(n_layer, n_embd, device=device),
            wkv=torch.zeros(n_layer, n_head, head_size, head_size, device=device),
            ffn_x=torch.zeros(n_layer, n_embd, device=device),
        )
