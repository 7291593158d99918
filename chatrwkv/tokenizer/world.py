"""The RWKV World tokenizer: greedy longest match over UTF-8 bytes, exactly as the official
trie tokenizer.

The C core `_worldtrie.c` (an optional extension that `pip install` builds) walks a byte trie
and is used whenever it was built. Without it, a pure-Python path gives the same ids, several
times faster than the official tokenizer. How the Python path works (every cut is at a boundary
the vocabulary guarantees, see `VocabFacts`):
1. `PieceSplitter` cuts the text at spaces and newlines with C-level bytes operations, so that
   it falls into pieces like b" word," and b"\nWhat" that repeat.
2. A dict maps each piece to its ids packed as uint16 bytes, so that a whole text is one
   `b"".join` and one `memoryview.cast(...).tolist()`; only unseen pieces reach Python code.
3. An unseen long piece (Chinese has no spaces) is split into runs of "isolated" characters
   (most CJK ideographs), which `str.translate` turns into ids in C, and the runs between them.
4. Anything else unseen is cut further (`PieceSplitter.cut`) and matched in Python (`_greedy`),
   which tries only the token lengths that exist for the next two bytes.
`encode_reference` is the plain, obviously correct twin; the tests hold the fast path, the twin
and the official tokenizer together.
"""

from __future__ import annotations

import re
import sys
from array import array
from collections.abc import Callable
from itertools import islice
from pathlib import Path

from ..errors import TokenizerError
from .base import Tokenizer
from .world_split import PieceSplitter
from .world_vocab import VocabFacts, facts_from_ids, isolated_chars, parse_world_vocab, token_ids

try:
    from . import _worldtrie
except ImportError:  # installed without a C compiler: the Python path gives the same ids
    _worldtrie = None

CACHE_KEY_MAX = 64  # longer pieces are rarely repeated: computing them again is cheaper than memory
CACHE_ENTRIES_MAX = 1 << 17  # per cache (~20 MB at most); a full cache stops growing


class _PackedCache(dict):
    """bytes -> packed ids; computes and remembers what it has not seen."""

    __slots__ = ("_compute",)

    def __init__(self, compute: Callable[[bytes], bytes]) -> None:
        super().__init__()
        self._compute = compute

    def __missing__(self, key: bytes) -> bytes:
        packed = self._compute(key)
        if len(key) <= CACHE_KEY_MAX and len(self) < CACHE_ENTRIES_MAX:
            self[key] = packed
        return packed


def _char_class(codes: dict[int, str]) -> str:
    """A regex character class of the given code points, as ranges."""
    ranges, run_start, previous = [], None, None
    for code in sorted(codes):
        if previous is None or code != previous + 1:
            if run_start is not None:
                ranges.append((run_start, previous))
            run_start = code
        previous = code
    if run_start is not None:
        ranges.append((run_start, previous))
    if not ranges:
        return "[^\\s\\S]"  # matches nothing
    return "[" + "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges) + "]"


def native_available() -> bool:
    """Whether the C core was built (`pip install` builds it when a C compiler is present)."""
    return _worldtrie is not None


class WorldTokenizer(Tokenizer):
    """Greedy longest-match tokenizer over a World-format vocabulary.

    `native`: None uses the C core when it was built, True requires it, False uses the
    pure-Python path (the two give identical ids; the tests hold them together).
    """

    def __init__(self, vocab: dict[int, bytes], *, name: str = "world",
                 vocab_size: int | None = None, source: str = "vocabulary",
                 native: bool | None = None) -> None:
        ids = token_ids(vocab, source)
        self.name = name
        # the Python path's facts (~0.25 s for World) are built when first needed: the C core
        # needs the ids only, so a start with it skips them (issue 15: start-up)
        self._facts_built: VocabFacts | None = None
        self._ids_by_bytes = ids
        table = [b""] * (max(vocab) + 1)
        for token_id, token in vocab.items():
            table[token_id] = token
        self._token_bytes = table
        self.vocab_size = vocab_size if vocab_size is not None else len(table)
        self.newline_id = ids[b"\n"]
        # A vocabulary without a "\n\n" token falls back on "\n" (World has one: 261).
        self.double_newline_id = ids.get(b"\n\n", self.newline_id)
        self.end_of_text_id = 0
        self._typecode = "H" if len(table) <= 1 << 16 else "I"
        self._byte_ids = [ids[bytes([b])] for b in range(256)]

        if native and _worldtrie is None:
            raise TokenizerError("the C tokenizer core (chatrwkv.tokenizer._worldtrie) is not "
                                 "built: reinstall with a C compiler, or use native=False")
        self._trie = None
        if native is not False and _worldtrie is not None:
            self._trie = _worldtrie.Trie([(token, i) for i, token in vocab.items()])
        else:
            self._init_python_path()

    @property
    def _facts(self) -> VocabFacts:
        if self._facts_built is None:
            self._facts_built = facts_from_ids(self._ids_by_bytes)
        return self._facts_built

    @property
    def native(self) -> bool:
        """Whether encoding runs in the C core."""
        return self._trie is not None

    def _init_python_path(self) -> None:
        facts = self._facts
        self._splitter = PieceSplitter(facts)
        self._isolated: list[str | None] | None = None  # built on first use (~0.1 s)
        self._iso_split: Callable[[str], list[str]] | None = None
        self._utf16 = "utf-16-le" if sys.byteorder == "little" else "utf-16-be"

        self._pieces = _PackedCache(self._pack_key)
        self._plain_pieces = _PackedCache(self._pack_piece)
        self._chunks = _PackedCache(self._pack_greedy)
        # Words that are one token (" the", " Hamlet") are known pieces from the start, so that
        # short texts hit the cache too: key b"the" stands for b" the", whose greedy match is the
        # whole token.
        self._known_pieces = {
            token[1:]: array(self._typecode, [token_id]).tobytes()
            for token, token_id in facts.ids.items()
            if token[:1] == b" " and len(token) > 1 and not token[1:2].isspace()
            and self._splitter.unkey(token[1:]) == token}
        self._pieces.update(self._known_pieces)

    @classmethod
    def from_text(cls, text: str, source: str, **kwargs: object) -> WorldTokenizer:
        return cls(parse_world_vocab(text, source), source=source, **kwargs)

    @classmethod
    def from_file(cls, path: str | Path, **kwargs: object) -> WorldTokenizer:
        path = Path(path)
        return cls.from_text(path.read_text(encoding="utf-8"), str(path), **kwargs)

    def clear_caches(self) -> None:
        """Forget the pieces seen since loading (for measuring a cold start); the C core has
        no caches."""
        if self._trie is not None:
            return
        self._pieces.clear()
        self._pieces.update(self._known_pieces)
        self._plain_pieces.clear()
        self._chunks.clear()

    # -- encoding -----------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        # surrogatepass: a lone surrogate (which the official tokenizer refuses) is encoded as its
        # bytes and decodes back as U+FFFD instead of crashing the chat.
        return self.encode_bytes(text.encode("utf-8", errors="surrogatepass"))

    def encode_bytes(self, data: bytes) -> list[int]:
        if self._trie is not None:
            return self._trie.encode(data)
        parts, keyed = self._splitter.split(data)
        if keyed:
            head = self._pack_piece(parts[0]) if parts[0] else b""
            packed = head + b"".join(map(self._pieces.__getitem__, islice(parts, 1, None)))
        else:
            packed = b"".join(map(self._plain_pieces.__getitem__, parts))
        return memoryview(packed).cast(self._typecode).tolist()

    def encode_reference(self, text: str) -> list[int]:
        """The slow twin: plain greedy longest match, one candidate length after another."""
        data = text.encode("utf-8", errors="surrogatepass")
        ids, max_len = self._facts.ids, self._facts.max_len
        out, i = [], 0
        while i < len(data):
            for length in range(min(max_len, len(data) - i), 0, -1):
                token_id = ids.get(data[i:i + length])
                if token_id is not None:
                    out.append(token_id)
                    i += length
                    break
        return out

    def _pack_key(self, key: bytes) -> bytes:
        data = self._splitter.unkey(key)
        if len(data) <= CACHE_KEY_MAX and b"\n" not in data[1:]:  # a word: nothing to cut
            return array(self._typecode, self._greedy(data)).tobytes()
        return self._pack_piece(data)

    def _pack_piece(self, data: bytes) -> bytes:
        """Packed ids of bytes that start and end at sure boundaries."""
        if len(data) <= CACHE_KEY_MAX and b"\n" not in data[1:]:
            return self._pack_greedy(data)  # a word: nothing to cut
        if len(data) > CACHE_KEY_MAX and self._typecode == "H" and not data.isascii():
            try:
                return self._pack_text(data.decode("utf-8"))
            except UnicodeDecodeError:
                pass
        return self._pack_cut(data)

    def _pack_cut(self, data: bytes) -> bytes:
        return b"".join(map(self._chunks.__getitem__, self._splitter.cut(data)))

    def _pack_text(self, text: str) -> bytes:
        """Long non-ASCII text: runs of isolated characters are translated to their ids in C;
        the runs between them (punctuation, digits, Latin) go through the chunk cache."""
        if self._iso_split is None:
            isolated = isolated_chars(self._facts)
            # A list indexed by code point translates ~1.5x faster than a dict.
            self._isolated = [None] * (max(isolated, default=0) + 1)
            for code, ids in isolated.items():
                self._isolated[code] = ids
            self._iso_split = re.compile("(" + _char_class(isolated) + "+)").split
        runs = self._iso_split(text)  # [other, isolated, other, ..., other]
        table, utf16, cut = self._isolated, self._utf16, self._pack_cut
        packed: list[bytes] = [b""] * len(runs)
        packed[0::2] = [cut(run.encode("utf-8")) for run in runs[0::2]]
        packed[1::2] = [run.translate(table).encode(utf16, errors="surrogatepass")
                        for run in runs[1::2]]
        return b"".join(packed)

    def _pack_greedy(self, data: bytes) -> bytes:
        return array(self._typecode, self._greedy(data)).tobytes()

    def _greedy(self, data: bytes) -> list[int]:
        ids, lengths, byte_ids = self._facts.ids, self._facts.lengths, self._byte_ids
        out, i, n = [], 0, len(data)
        while i < n:
            for length in lengths.get(data[i:i + 2], ()):
                if i + length <= n:
                    token_id = ids.get(data[i:i + length])
                    if token_id is not None:
                        out.append(token_id)
                        i += length
                        break
            else:  # no longer token fits: the single byte is always one
                out.append(byte_ids[data[i]])
                i += 1
        return out
