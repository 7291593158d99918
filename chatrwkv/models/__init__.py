"""Model registry and loader: the version is read from the checkpoint's keys and shapes."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from ..checkpoint import Checkpoint
from ..errors import ChatRWKVError, CheckpointError, first_line
from .base import DEFAULT_CHUNK_LEN, ModelConfig, RWKVModel, resolve_device, resolve_dtype
from .pages import PageReleaser
from .quant import NonFiniteWeights
from .v4 import RWKV4
from .v5 import RWKV5
from .v6 import RWKV6
from .v7 import RWKV7
from .weightcache import open_cache

MODEL_CLASSES: tuple[type[RWKVModel], ...] = (RWKV7, RWKV6, RWKV5, RWKV4)

__all__ = ["MODEL_CLASSES", "ModelConfig", "RWKVModel", "detect_version", "load_model",
           "refused_layout"]


# Official layouts that no version module runs yet, told apart by a key no supported layout has
# (RWKV-LM `RWKV-v7/rwkv_v7b_demo.py`: `blocks.N.qkv.*`; `RWKV-v7/rwkv_v8_rc00_demo.py`:
# `ffn.enn.weight`; `RWKV-v8/*rosa*`: `blocks.N.rosa.*`). Checked before any class looks, so
# such a file is refused by name and nothing of it is loaded.
REFUSED_LAYOUTS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"blocks\.\d+\.qkv\."), "RWKV-7 DeepEmbedAttention (rwkv7b, 'blocks.N.qkv.*')"),
    (re.compile(r"blocks\.\d+\.rosa\."), "RWKV-8 ROSA ('blocks.N.rosa.*')"),
    (re.compile(r"(^|\.)ffn\.enn\.weight$"), "RWKV-8 Heron ('ffn.enn.weight')"),
)


def refused_layout(ckpt: Checkpoint) -> str | None:
    """The name of a known but unsupported layout the checkpoint has, or None."""
    for pattern, name in REFUSED_LAYOUTS:
        if any(pattern.search(k) for k in ckpt.tensors):
            return name
    return None


def detect_version(ckpt: Checkpoint) -> tuple[type[RWKVModel], str]:
    """The model class and exact version string of a checkpoint, or a CheckpointError."""
    if (refused := refused_layout(ckpt)) is not None:
        raise CheckpointError(f"{ckpt.path}: {refused} is not supported yet "
                              "(supported: v4, v5.x, v6, v7, v7 DeepEmbed)")
    found = [(cls, v) for cls in MODEL_CLASSES if (v := cls.detect(ckpt)) is not None]
    if len(found) != 1:
        raise CheckpointError(f"{ckpt.path}: not a known RWKV layout (v4, v5.x, v6, v7)"
                              + ("" if not found else " (ambiguous)"))
    return found[0]


def load_model(path: Path | str, device: str | None = None, dtype: str | None = None,
               chunk_len: int = DEFAULT_CHUNK_LEN, use_cache: bool = True,
               notice: Callable[[str], None] | None = None) -> RWKVModel:
    """Load any official RWKV checkpoint; every failure is one line naming the file.

    Quantized dtypes read and write the converted-weight cache (weightcache.py) unless
    `use_cache` is False; `notice` gets its one-line messages (default: stderr)."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    ckpt = Checkpoint.open(path)
    cls, _ = detect_version(ckpt)
    cache = open_cache(ckpt.path, ckpt.fingerprint(), dt, notice) if use_cache else None
    # NaN/Inf are refused after the build, in what it did not check already: matrices a valid
    # cache serves were checked when it was built from this very file (same fingerprint, size,
    # mtime), and those it quantizes now are checked by the quantizer, which reads every weight
    # anyway. So neither start reads the big matrices of the checkpoint twice.
    served = cache.served_keys() if cache is not None else set()
    try:
        model = cls(ckpt, device=dev, dtype=dt, chunk_len=chunk_len, cache=cache)
        ckpt.check_finite(skip=served | (cache.built_keys if cache is not None else set()),
                          release=PageReleaser(ckpt.path).release)
    except NonFiniteWeights as e:
        if cache is not None:
            cache.abort()
        raise CheckpointError(f"{ckpt.path}: tensor '{e}' holds NaN or infinite values: the "
                              "file is damaged") from None
    except BaseException as e:
        if cache is not None:
            cache.abort()
        if isinstance(e, ChatRWKVError) or not isinstance(
                e, (RuntimeError, OSError, ValueError, TypeError, IndexError, KeyError)):
            raise
        # shapes that passed each tensor's check but not the builder's arithmetic are a file the
        # loader does not understand: one line, not a traceback
        # A damaged tensor in an mmap-ed file surfaces only when it is read; anything else
        # (a missing optional library, say) is not the file's fault and is not called damage.
        what = "damaged checkpoint" if _is_read_error(e) else "cannot load the model"
        raise CheckpointError(f"{ckpt.path}: {what} ({first_line(e, 160)})") from None
    if cache is not None:
        cache.finish()
    return model


def _is_read_error(e: BaseException) -> bool:
    """True for the errors torch and safetensors raise on bytes they cannot read."""
    if isinstance(e, OSError):
        return True
    text = str(e)
    return any(s in text for s in ("PytorchStreamReader", "storage", "unpickl", "zip archive",
                                   "invalid load key", "SafetensorError", "deserializ"))
