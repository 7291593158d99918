"""The parsed World vocabulary (id -> token bytes), cached between runs: reading the 65,536
Python literals (`ast.literal_eval`, checked line by line) is the larger part of building the
tokenizer, and the chat builds it at every start.

One flat file per vocabulary text under $CHATRWKV_HOME/cache/tokenizer, named by the SHA-256 of
that text: a magic line, the count, the ids (uint32), the lengths (uint16), the token bytes.
It is data read with `array`, never code; a file that is short, inconsistent or holds repeated
ids or tokens is ignored and written again, and a cache that cannot be written changes nothing.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from array import array
from collections.abc import Callable
from pathlib import Path

MAGIC = b"chatrwkv-world-vocab 1\n"


def default_folder() -> Path:
    from ..sessionfile import home_dir

    return home_dir() / "cache" / "tokenizer"


def cached_vocab(text: str, source: str, parse: Callable[[str, str], dict[int, bytes]],
                 folder: Path | None = None) -> dict[int, bytes]:
    """`parse(text, source)`, or the result of an earlier run on the same text."""
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    path = (folder or default_folder()) / f"world-{digest}.bin"
    vocab = read(path)
    if vocab is None:
        vocab = parse(text, source)
        write(path, vocab)
    return vocab


def _array(code: str, data: bytes) -> array:
    a = array(code)
    a.frombytes(data)
    if sys.byteorder != "little":
        a.byteswap()
    return a


def read(path: Path) -> dict[int, bytes] | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 4:
        return None
    at = len(MAGIC)
    (n,) = _array("I", data[at:at + 4])
    at += 4
    if len(data) < at + 6 * n:
        return None
    ids = _array("I", data[at:at + 4 * n])
    lengths = _array("H", data[at + 4 * n:at + 6 * n])
    at += 6 * n
    if len(data) - at != sum(lengths) or 0 in lengths:
        return None
    vocab: dict[int, bytes] = {}
    for token_id, length in zip(ids, lengths):
        vocab[token_id] = data[at:at + length]
        at += length
    if len(vocab) != n or len(set(vocab.values())) != n:
        return None
    return vocab


def write(path: Path, vocab: dict[int, bytes]) -> bool:
    ids = array("I", vocab.keys())
    lengths = array("H", (len(v) for v in vocab.values()))
    if sys.byteorder != "little":
        ids.byteswap()
        lengths.byteswap()
    blob = (MAGIC + array("I", [len(vocab)]).tobytes() + ids.tobytes() + lengths.tobytes()
            + b"".join(vocab.values()))
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, path)
        tmp = None
        return True
    except (OSError, OverflowError):
        return False
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
