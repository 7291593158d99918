"""Model registry and loader: the version is read from the checkpoint's keys and shapes."""

from __future__ import annotations

from pathlib import Path

from ..checkpoint import Checkpoint
from ..errors import ChatRWKVError, CheckpointError, first_line
from .base import DEFAULT_CHUNK_LEN, ModelConfig, RWKVModel, resolve_device, resolve_dtype
from .v4 import RWKV4
from .v5 import RWKV5
from .v6 import RWKV6
from .v7 import RWKV7

MODEL_CLASSES: tuple[type[RWKVModel], ...] = (RWKV7, RWKV6, RWKV5, RWKV4)

__all__ = ["MODEL_CLASSES", "ModelConfig", "RWKVModel", "detect_version", "load_model"]


def detect_version(ckpt: Checkpoint) -> tuple[type[RWKVModel], str]:
    """The model class and exact version string of a checkpoint, or a CheckpointError."""
    found = [(cls, v) for cls in MODEL_CLASSES if (v := cls.detect(ckpt)) is not None]
    if len(found) != 1:
        raise CheckpointError(f"{ckpt.path}: not a known RWKV layout (v4, v5.x, v6, v7)"
                              + ("" if not found else " (ambiguous)"))
    return found[0]


def load_model(path: Path | str, device: str | None = None, dtype: str | None = None,
               chunk_len: int = DEFAULT_CHUNK_LEN) -> RWKVModel:
    """Load any official RWKV checkpoint; every failure is one line naming the file."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    ckpt = Checkpoint.open(path)
    cls, _ = detect_version(ckpt)
    ckpt.check_finite()
    try:
        return cls(ckpt, device=dev, dtype=dt, chunk_len=chunk_len)
    except ChatRWKVError:
        raise
    except (RuntimeError, OSError, ValueError, TypeError, IndexError, KeyError) as e:
        # shapes that passed each tensor's check but not the builder's arithmetic are a file the
        # loader does not understand: one line, not a traceback
        # A damaged tensor in an mmap-ed file surfaces only when it is read; anything else
        # (a missing optional library, say) is not the file's fault and is not called damage.
        what = "damaged checkpoint" if _is_read_error(e) else "cannot load the model"
        raise CheckpointError(f"{ckpt.path}: {what} ({first_line(e, 160)})") from None


def _is_read_error(e: BaseException) -> bool:
    """True for the errors torch and safetensors raise on bytes they cannot read."""
    if isinstance(e, OSError):
        return True
    text = str(e)
    return any(s in text for s in ("PytorchStreamReader", "storage", "unpickl", "zip archive",
                                   "invalid load key", "SafetensorError", "deserializ"))
