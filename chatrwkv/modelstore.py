"""The local models directory: where `pull` puts models, what `list` shows, what `--model` finds.

Layout of `$CHATRWKV_HOME/models` (default `~/.cache/chatrwkv/models`):

    rwkv7-g1a-0.4b-20250905-ctx4096.pth        a verified model (moved here only after its check)
    rwkv7-g1a-0.4b-20250905-ctx4096.pth.json   where it came from, its sha256 and its config
    .partial/                                  downloads in progress; never read as models

A model file is only ever created by an atomic rename of a download that passed its checks, so
anything at the top level is whole; a file the user copied in by hand is listed too.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .checkpoint import Checkpoint
from .errors import ChatRWKVError, CheckpointError
from .modelnames import newest, parse_release, parse_short_name
from .safeio import expand

MODEL_SUFFIXES = (".pth", ".safetensors")
META_SUFFIX = ".json"
PARTIAL_DIR = ".partial"
META_FORMAT = "chatrwkv-model"

TOKENIZERS = {65536: "World", 50277: "Pile (20B)"}
DISK_DTYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def models_dir() -> Path:
    """`$CHATRWKV_HOME/models`, else `$XDG_CACHE_HOME/chatrwkv/models` (`~/.cache/...`)."""
    home = os.environ.get("CHATRWKV_HOME")
    if home:
        return Path(home).expanduser() / "models"
    cache = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(cache).expanduser() / "chatrwkv" / "models"


def tokenizer_name(vocab_size: int) -> str:
    return TOKENIZERS.get(vocab_size, f"custom ({vocab_size} tokens)")


@dataclasses.dataclass(frozen=True)
class FileFacts:
    """What the tensor shapes and dtypes tell without building the model (mmap: cheap)."""

    params: int
    vocab_size: int
    n_layer: int
    n_embd: int
    disk_dtype: str
    version: str | None   # None when no version module recognises the layout


def inspect_checkpoint(path: Path | str) -> FileFacts:
    from .models import detect_version

    ckpt = Checkpoint.open(path)
    vocab_size, n_embd = ckpt.shape("emb.weight")
    counts: dict[str, int] = {}
    for tensor in ckpt.tensors.values():
        name = DISK_DTYPES.get(tensor.dtype, str(tensor.dtype).removeprefix("torch."))
        counts[name] = counts.get(name, 0) + tensor.numel()
    try:
        _, version = detect_version(ckpt)
    except CheckpointError:
        version = None
    return FileFacts(params=sum(counts.values()), vocab_size=vocab_size, n_layer=ckpt.n_layers(),
                     n_embd=n_embd, disk_dtype=max(counts, key=counts.__getitem__),
                     version=version)


def check_model(path: Path | str) -> dict[str, Any]:
    """Load the model once (CPU, bf16 weights: the smallest copy) and return what `info` shows.

    Raises CheckpointError when the file is damaged or not a known RWKV layout.
    """
    from .models import load_model

    facts = inspect_checkpoint(path)
    model = load_model(path, device="cpu", dtype="bf16")
    c = model.config
    config = {k: getattr(c, k) for k in ("version", "n_layer", "n_embd", "n_head", "head_size",
                                         "vocab_size", "ffn_dim")}
    # a token reads one row of these tables, not the whole: counted apart from the matrices
    table_params = sum(t.numel() for t in model.embedding_tables())
    return {**dataclasses.asdict(facts), **config, "state_bytes": model.zero_state().nbytes,
            "table_params": table_params, "n_tables": len(model.embedding_tables())}


@dataclasses.dataclass(frozen=True)
class LocalModel:
    path: Path
    meta: dict[str, Any]   # the sidecar written by `pull`, or {} for a file copied in by hand

    @property
    def name(self) -> str:
        return self.path.stem

    def facts(self) -> FileFacts | None:
        """From the sidecar when it still describes this file, else from the file itself."""
        m = self.meta
        if m.get("size") == self.path.stat().st_size and _facts_fit(m):
            return FileFacts(**{f.name: m[f.name] for f in dataclasses.fields(FileFacts)})
        try:
            return inspect_checkpoint(self.path)
        except CheckpointError:
            return None


def _facts_fit(meta: dict[str, Any]) -> bool:
    """Whether a sidecar holds every FileFacts field with its type (a hand-edited or damaged
    sidecar is ignored and the file itself is read)."""
    kinds = {"int": int, "str": str, "str | None": (str, type(None))}
    return all(f.name in meta and not isinstance(meta[f.name], bool)
               and isinstance(meta[f.name], kinds.get(str(f.type), object))
               for f in dataclasses.fields(FileFacts))


def meta_path(model_path: Path) -> Path:
    return model_path.with_name(model_path.name + META_SUFFIX)


def read_meta(model_path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(meta_path(model_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) and meta.get("format") == META_FORMAT else {}


def write_meta(model_path: Path, meta: dict[str, Any]) -> None:
    """Atomic, so a crash never leaves half a sidecar."""
    target = meta_path(model_path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"format": META_FORMAT, **meta}, f, indent=2, sort_keys=True)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def local_models(root: Path | None = None) -> list[LocalModel]:
    """Model files at the top level of the models directory, sorted by name."""
    root = models_dir() if root is None else root
    if not root.is_dir():
        return []
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix in MODEL_SUFFIXES
                   and not p.name.startswith("."))
    return [LocalModel(p, read_meta(p)) for p in files]


def resolve_model(name_or_path: str, root: Path | None = None) -> Path:
    """A checkpoint path from `--model`: an existing file, a local model's name or file name,
    the short name it was pulled by (`g1-0.4b`, newest local match), or a unique part of a name.
    """
    given = expand(name_or_path)
    if given.is_file():
        return given
    root = models_dir() if root is None else root
    models = local_models(root)
    wanted = name_or_path.strip()
    basename = wanted.rsplit("/", 1)[-1]   # `owner/repo/file.pth`, as it was pulled
    for m in models:
        if basename in (m.path.name, m.name):
            return m.path
    if (short := parse_short_name(wanted)) is not None:
        releases = [r for m in models if (r := parse_release(m.path.name)) and short.matches(r)]
        if (best := newest(releases)) is not None:
            return root / best.filename
    found = [m for m in models if wanted.lower() in m.name.lower()]
    if len(found) == 1:
        return found[0].path
    if len(found) > 1:
        names = ", ".join(m.name for m in found[:4]) + (", ..." if len(found) > 4 else "")
        raise ChatRWKVError(f"model name '{wanted}' is ambiguous: it matches {names}")
    if "/" in wanted or wanted.endswith(MODEL_SUFFIXES):
        raise ChatRWKVError(f"{wanted}: no such file, and no local model by that name in {root}")
    raise ChatRWKVError(f"no model named '{wanted}' in {root} (see `chatrwkv list`, "
                        f"or get it with `chatrwkv pull {wanted}`)")
