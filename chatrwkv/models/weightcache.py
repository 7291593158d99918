"""Converted weights kept on disk, so a quantized model starts in seconds the second time.

Quantizing a big model (`--dtype int8`, `int4`) reads every weight in fp32 and rounds it: tens of
seconds for a 7B checkpoint, at every start. The first load writes what it prepared into one
safetensors file in the model store (`$CHATRWKV_HOME/models/converted/`), tensor by tensor as it
goes (stwriter.py: no second copy in memory); later loads memory-map that file and skip the
conversion. The cache is generic over what a dtype prepares: a big matrix becomes any object
with `parts() -> {name: tensor}`, rebuilt by the version's `restore(parts)`; the file holds the
tensors as `KEY:PART`.

A cache file is keyed by the checkpoint's fingerprint (checkpoint.py), the dtype and `FORMAT`
(its name), and it records the source file's size and modification time: any mismatch, a damaged
or truncated file, or a missing or misshapen part makes the load convert from the checkpoint as
if there were no cache, say so in one line, and write a fresh file. Data bytes are not
checksummed (that would read the whole file at every start); a file is only ever renamed into
place complete, after an fsync.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar

import torch

from ..modelstore import models_dir
from ..stwriter import PAD_PREFIX, SafetensorsWriter, header_room
from .pages import PageReleaser, populate
from .quant import Int4Linear, Int8Linear, NonFiniteWeights

FORMAT = "1"  # bump when what a dtype prepares changes: old files are then rebuilt
CACHED_DTYPES = frozenset({"int8", "int4"})  # dtypes whose preparation is worth caching
SUFFIX = ".safetensors"
TMP_PREFIX = ".tmp-"
_SEP = ":"


class Prepared(Protocol):
    def parts(self) -> dict[str, torch.Tensor]: ...


P = TypeVar("P", bound=Prepared)


def cache_dir() -> Path:
    return models_dir() / "converted"


def cache_path(model_path: Path, fingerprint: str, dtype: str) -> Path:
    return cache_dir() / f"{model_path.stem}.{fingerprint}.{dtype}.f{FORMAT}{SUFFIX}"


def cache_files() -> list[Path]:
    """The complete cache files, sorted by name (temporary files of a load are not listed)."""
    d = cache_dir()
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.is_file() and p.name.endswith(SUFFIX)
                  and not p.name.startswith("."))


def clear(model_stem: str | None = None) -> list[Path]:
    """Remove the cache files (of one model, by its file stem) and leftovers of broken loads."""
    d = cache_dir()
    if not d.is_dir():
        return []
    removed = []
    for p in sorted(d.iterdir()):
        ours = p.name.endswith(SUFFIX) or p.name.startswith(TMP_PREFIX)
        if p.is_file() and ours and (model_stem is None or p.name.startswith(model_stem + ".")):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def describe(path: Path) -> dict[str, str]:
    """What `list` shows about a cache file: its metadata, or {} when it is unreadable."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception:  # noqa: BLE001 (a damaged file of any kind is only listed as such)
        return {}


def _source_facts(model_path: Path) -> dict[str, str]:
    st = model_path.stat()
    return {"source": str(model_path.resolve()), "source_size": str(st.st_size),
            "source_mtime_ns": str(st.st_mtime_ns)}


def _say(line: str) -> None:
    print(f"chatrwkv: {line}", file=sys.stderr)


class WeightCache:
    """The converted matrices of one load: `matrix(key, build, restore)` for each, then
    `finish()` (or `abort()` when the load fails)."""

    def __init__(self, model_path: Path, fingerprint: str, dtype: str,
                 notice: Callable[[str], None] | None = None):
        self.path = cache_path(Path(model_path), fingerprint, dtype)
        self.stem = Path(model_path).stem
        self.notice = notice or _say
        self.meta = {"format": FORMAT, "fingerprint": fingerprint, "dtype": dtype,
                     **_source_facts(Path(model_path))}
        self._reader = None
        self._pages: PageReleaser | None = None
        self._parts: dict[str, list[str]] = {}
        self._writer: SafetensorsWriter | None = None
        self._spoiled: str | None = None  # why a cache file in use turned out bad
        self._write_failed = False
        self.hits = self.built = 0
        self.built_keys: set[str] = set()
        if self.path.is_file():
            reason = self._open()
            if reason is not None:
                self.notice(f"converted-weight cache {self.path.name} {reason}; rebuilding it")
                self._reader = None

    def _open(self) -> str | None:
        """Opens the file for reading; returns why it cannot be used, or None."""
        from safetensors import SafetensorError, safe_open

        try:
            reader = safe_open(str(self.path), framework="pt")
            meta = dict(reader.metadata() or {})
            names = list(reader.keys())
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            return f"is damaged ({str(e).splitlines()[0][:80] if str(e) else type(e).__name__})"
        stale = [k for k, v in self.meta.items() if meta.get(k) != v]
        if stale:
            return f"is stale ({stale[0]} differs)"
        for name in names:
            if not name.startswith(PAD_PREFIX) and _SEP in name:
                key, part = name.rsplit(_SEP, 1)
                self._parts.setdefault(key, []).append(part)
        self._reader = reader
        self._pages = PageReleaser(self.path)
        return None

    @property
    def reading(self) -> bool:
        return self._reader is not None and self._spoiled is None

    def served_keys(self) -> set[str]:
        """Checkpoint keys this cache will restore (none when it is being written)."""
        return set(self._parts) if self._reader is not None and self._spoiled is None else set()

    def matrix(self, key: str, build: Callable[[], P],
               restore: Callable[[dict[str, torch.Tensor]], P]) -> P:
        """The prepared matrix `key`: restored from the cache file, else built (and written)."""
        if self._reader is not None and self._spoiled is None:
            try:
                parts = {p: self._reader.get_tensor(f"{key}{_SEP}{p}")
                         for p in self._parts.get(key, [])}
                if not parts:
                    raise ValueError(f"has no '{key}'")
                for t in parts.values():
                    populate(t)  # one call, not a fault per page, before they are copied
                obj = restore(parts)
            except (ValueError, RuntimeError, OSError) as e:
                self._spoiled = str(e).splitlines()[0][:80] if str(e) else type(e).__name__
            else:
                self.hits += 1
                self._release(parts, obj)
                return obj
        obj = build()
        self.built += 1
        self.built_keys.add(key)  # its quantizer saw every weight: checked for NaN/Inf
        if self._reader is None and not self._write_failed:
            try:
                self._write(key, obj)
            except OSError as e:  # a full disk costs the cache, never the load
                self.notice(f"cannot write the converted-weight cache ({e})")
                self.abort()
                self._write_failed = True
        return obj

    def _release(self, parts: dict[str, torch.Tensor], obj: object) -> None:
        """Drop the file pages of parts that `obj` copied (kept ones stay mapped)."""
        kept = {t.untyped_storage().data_ptr() for t in vars(obj).values()
                if isinstance(t, torch.Tensor)} if hasattr(obj, "__dict__") else set()
        for t in parts.values():
            if t.untyped_storage().data_ptr() not in kept and self._pages is not None:
                self._pages.release(t)

    def _write(self, key: str, obj: Prepared) -> None:
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f"{TMP_PREFIX}{os.getpid()}-{self.path.name}")
            self._writer = SafetensorsWriter(tmp, reserve=header_room(8192))
        for part, t in obj.parts().items():
            self._writer.add(f"{key}{_SEP}{part}", t)

    def finish(self) -> None:
        """After a whole load: put a newly written file in place (replacing stale ones of
        this model and dtype), or drop a file that turned out bad."""
        if self._spoiled is not None:
            self.notice(f"converted-weight cache {self.path.name} is damaged "
                        f"({self._spoiled}); it is removed and rebuilt at the next start")
            self._reader = None
            self.path.unlink(missing_ok=True)
            return
        if self._writer is None:
            return
        try:
            tmp = self._writer.close(self.meta)
        except OSError as e:
            self.notice(f"cannot write the converted-weight cache ({e})")
            self.abort()
            return
        self._writer = None
        for old in cache_files():  # the same model's older caches of this dtype are stale
            rest = old.name[len(self.stem) + 1:].split(".")
            if old != self.path and old.name.startswith(self.stem + ".") and len(rest) == 4 \
                    and rest[1] == self.meta["dtype"]:
                old.unlink(missing_ok=True)
        os.replace(tmp, self.path)

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()
            self._writer = None


def open_cache(model_path: Path, fingerprint: str, dtype: str,
               notice: Callable[[str], None] | None = None) -> WeightCache | None:
    """The cache for this load, or None where the dtype prepares nothing worth caching or the
    store cannot be written (a load without a cache is only slower)."""
    if dtype not in CACHED_DTYPES or not Path(model_path).is_file():
        return None
    try:
        return WeightCache(Path(model_path), fingerprint, dtype, notice)
    except OSError as e:
        (notice or _say)(f"no converted-weight cache ({e})")
        return None


def int8_matrix(cache: WeightCache | None, key: str, weight: torch.Tensor,
                rows: torch.Tensor | None = None,
                done: Callable[[torch.Tensor], None] | None = None) -> Int8Linear:
    """`Int8Linear(weight)` for checkpoint tensor `key`, through the cache when there is one.
    `rows`: memory for the plain int8 rows a C step reads (kept); `done`: as Int8Linear's."""
    shape = (weight.shape[0], weight.shape[1]) if weight.dim() == 2 else tuple(weight.shape)

    def build() -> Int8Linear:
        try:
            return Int8Linear(weight, keep_rows=rows is not None, rows_out=rows, done=done)
        except NonFiniteWeights:
            raise NonFiniteWeights(key) from None

    def restore(parts: dict[str, torch.Tensor]) -> Int8Linear:
        return Int8Linear.from_parts(parts, shape, keep_rows=rows is not None, rows_out=rows)

    return build() if cache is None else cache.matrix(key, build, restore)


def int4_matrix(cache: WeightCache | None, key: str, weight: torch.Tensor,
                packed: torch.Tensor | None = None,
                done: Callable[[torch.Tensor], None] | None = None) -> Int4Linear:
    """`Int4Linear(weight)` for checkpoint tensor `key`, through the cache when there is one.
    `packed`: memory for the packed rows (the C step's arena); `done`: as Int4Linear's."""
    shape = (weight.shape[0], weight.shape[1])

    def build() -> Int4Linear:
        try:
            return Int4Linear(weight, packed_out=packed, done=done)
        except NonFiniteWeights:
            raise NonFiniteWeights(key) from None

    def restore(parts: dict[str, torch.Tensor]) -> Int4Linear:
        return Int4Linear.from_parts(parts, shape, packed_out=packed)

    return build() if cache is None else cache.matrix(key, build, restore)
