"""The prompt's state, cached between runs, so that the chat's first prompt appears without
reading the prompt through the model again.

An entry is the state and the logits after a prompt fed from the zero state, stored as
safetensors under $CHATRWKV_HOME/cache/prompts. Its key is everything the result depends on:
the model (its identity and fingerprint, the file's size and modification time), the weight
dtype, the device, the prefill chunk length, chatrwkv's version, and the prompt's token ids.
The file holds the whole key in its metadata and is used only when that matches exactly, its
tensors have the model's state shapes and all are finite; anything else is a miss (and the entry
is written again). A cache that cannot be read or written never stops the chat.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .state import State

CACHE_FORMAT = "chatrwkv-prompt-cache"
CACHE_FORMAT_VERSION = 1
MAX_ENTRIES = 32  # the oldest entries beyond this are removed when one is written
LOGITS_KEY = "__logits__"


def default_folder() -> Path:
    from .sessionfile import home_dir

    return home_dir() / "cache" / "prompts"


class PromptCache:
    """`load(ids)` gives (state, logits) after `ids` from the zero state, or None; `store(ids,
    state, logits)` remembers them. One cache per loaded model."""

    def __init__(self, model: Any, folder: Path | None = None):
        self.model = model
        self.folder = folder or default_folder()
        self.hits = self.misses = 0

    def key(self, ids: list[int]) -> dict[str, str]:
        m = self.model
        try:
            st = Path(m.path).stat()
            file = f"{st.st_size}:{st.st_mtime_ns}"
        except (OSError, TypeError, AttributeError):
            file = "?"
        return {"format_version": str(CACHE_FORMAT_VERSION), "chatrwkv": __version__,
                "identity": json.dumps(m.identity(), sort_keys=True), "file": file,
                "dtype": str(getattr(m, "dtype_name", "?")),
                "device": str(getattr(m, "device", "cpu")),
                "chunk_len": str(getattr(m, "chunk_len", "?")),
                "tokens": hashlib.sha256(json.dumps(ids).encode()).hexdigest()}

    def path(self, key: dict[str, str]) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        return self.folder / f"{digest[:32]}.safetensors"

    def load(self, ids: list[int]) -> tuple[State, torch.Tensor] | None:
        key = self.key(ids)
        found = self._read(self.path(key), key)
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
        return found

    def _read(self, path: Path, key: dict[str, str]) -> tuple[State, torch.Tensor] | None:
        from safetensors import SafetensorError, safe_open

        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
        except (SafetensorError, OSError, ValueError, RuntimeError):
            return None
        if meta.get("format") != CACHE_FORMAT or meta.get("key") != json.dumps(key,
                                                                                 sort_keys=True):
            return None
        zero = self.model.zero_state()
        expected = zero.tensors()
        logits = tensors.pop(LOGITS_KEY, None)
        if logits is None or sorted(tensors) != sorted(expected) or any(
                tensors[k].shape != v.shape or tensors[k].dtype != v.dtype
                for k, v in expected.items()):
            return None
        if not all(torch.isfinite(t).all() for t in (logits, *tensors.values())):
            return None
        device = zero.device
        state = type(zero)(**{k: t.to(device) for k, t in tensors.items()})
        return state, logits.to(device)

    def store(self, ids: list[int], state: State, logits: torch.Tensor) -> bool:
        """Write the entry atomically; False (and nothing left behind) when that fails."""
        from safetensors.torch import save_file

        key = self.key(ids)
        path = self.path(key)
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in
                   state.tensors().items()}
        tensors[LOGITS_KEY] = logits.detach().to("cpu").contiguous().clone()
        meta = {"format": CACHE_FORMAT, "key": json.dumps(key, sort_keys=True)}
        tmp = None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{path.name}.", suffix=".tmp")
            os.close(fd)
            save_file(tensors, tmp, metadata=meta)
            os.replace(tmp, path)
            tmp = None
            self._trim()
            return True
        except (OSError, ValueError, RuntimeError):
            return False
        finally:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)

    def _trim(self) -> None:
        entries = sorted(self.folder.glob("*.safetensors"), key=lambda p: p.stat().st_mtime_ns)
        for old in entries[:-MAX_ENTRIES]:
            old.unlink(missing_ok=True)
