"""Cutting text into pieces at boundaries that the World vocabulary guarantees, with C-level
bytes/re operations only (see `VocabFacts` for why such cuts keep greedy matching exact).

The main cut is at spaces and newlines, so that the pieces are words like b" word," or b"\\nWhat",
which repeat and can be looked up. A space or newline that may continue a token from the byte
before it ("sticky") must not be cut before. Two bytes that UTF-8 text never contains carry the
marks through one `bytes.split(b" ")`:
- 0xFF hides a sticky space, so it is not a separator;
- b" \\xfe" stands for a newline that is cut before: the space separates, 0xFE says "newline".
"""

from __future__ import annotations

import re
from collections.abc import Callable

from .world_vocab import VocabFacts

HIDDEN_SPACE = b"\xff"
NEWLINE_MARK = b"\xfe"
MAX_STICKY = 8  # more sticky bytes than this (an odd custom vocabulary): use the regex path


def byte_class(values: bytes, negate: bool = False) -> bytes:
    return b"[" + (b"^" if negate else b"") + b"".join(re.escape(bytes([b])) for b in values) + b"]"


def _before(facts: VocabFacts, byte: int) -> bytes:
    """Bytes that precede `byte` inside some token."""
    return bytes(sorted({p[0] for p in facts.pairs if p[1] == byte}))


def _after(facts: VocabFacts, byte: int) -> bytes:
    """Bytes that follow `byte` inside some token."""
    return bytes(sorted({p[1] for p in facts.pairs if p[0] == byte}))


class PieceSplitter:
    """Splits bytes into a head and pieces; a piece key stands for the bytes `unkey(key)`."""

    def __init__(self, facts: VocabFacts) -> None:
        before_space, before_nl = facts.before_space, _before(facts, 0x0A)
        # The marks below rely on: a byte that may precede a space in a token may also precede
        # a newline (true of World: both are {"\t", "\n", " "} plus a few), so a newline after
        # it is never marked and hiding spaces never touches a mark's separator.
        self._fast = (len(before_nl) <= MAX_STICKY and set(before_space) <= set(before_nl))
        # Newlines: mark all, then unmark those after a byte that may precede "\n" in a token.
        # When "\n" is such a byte, a newline after a newline (marked or not) is unmarked too.
        self._unmark = [(bytes([x]) + b" " + NEWLINE_MARK, bytes([x, 0x0A]))
                        for x in before_nl if x != 0x0A]
        self._chain = []
        if 0x0A in before_nl:
            self._chain = [(NEWLINE_MARK + b" " + NEWLINE_MARK, NEWLINE_MARK + b"\n"),
                           (b"\n " + NEWLINE_MARK, b"\n\n")]
        # Spaces: hide those after a byte that may precede a space in a token; a marked newline
        # is a newline, and a hidden space is a space, for that purpose.
        self._hide = [(bytes([x, 0x20]), bytes([x]) + HIDDEN_SPACE) for x in before_space]
        if 0x0A in before_space:
            self._hide.append((NEWLINE_MARK + b" ", NEWLINE_MARK + HIDDEN_SPACE))
        if 0x20 in before_space:
            self._hide.append((HIDDEN_SPACE + b" ", HIDDEN_SPACE + HIDDEN_SPACE))
        # The twin for bytes that do hold 0xFE/0xFF: split at spaces only, with a lookbehind
        # over the two bytes ending with the space (a space at position 0 splits: head b"").
        self._space_split = (re.compile(b" (?<!" + byte_class(before_space) + b" )").split
                             if before_space else re.compile(b" ").split)

        # Cuts inside a piece: before a byte that always starts a token; before "\n" unless the
        # byte before may precede it in a token; after "\n" unless the byte after may follow it.
        after_nl = _after(facts, 0x0A)
        cuts = []
        if facts.always_start:
            cuts.append(b"(?=" + byte_class(facts.always_start) + b")")
        cuts.append((b"(?<!" + byte_class(before_nl) + b")" if before_nl else b"") + b"(?=\n)")
        cuts.append(b"(?<=\n)" + (b"(?!" + byte_class(after_nl) + b")" if after_nl else b""))
        self.cut: Callable[[bytes], list[bytes]] = re.compile(b"|".join(cuts)).split

    def split(self, data: bytes) -> tuple[list[bytes], bool]:
        """(parts, keyed): when keyed, parts[0] is the head bytes and the rest are piece keys
        (see `unkey`); otherwise every part is plain bytes. Either way the parts join back to
        `data` with a sure token boundary at every join."""
        if not self._fast or HIDDEN_SPACE in data or NEWLINE_MARK in data:
            head, *rest = self._space_split(data)
            return [head, *(b" " + piece for piece in rest)], False
        if b"\n" in data:
            data = data.replace(b"\n", b" " + NEWLINE_MARK)
            for old, new in self._unmark:
                data = data.replace(old, new)
            for old, new in self._chain:
                while old in data:
                    data = data.replace(old, new)
        for old, new in self._hide:
            while old in data:  # a run of sticky spaces needs more than one non-overlapping pass
                data = data.replace(old, new)
        parts = data.split(b" ")
        parts[0] = parts[0].replace(HIDDEN_SPACE, b" ")
        return parts, True

    @staticmethod
    def unkey(key: bytes) -> bytes:
        """The bytes a piece key stands for: b"\xfe..." is a newline piece, others follow a space."""
        if key[:1] == NEWLINE_MARK:
            key = b"\n" + key[1:]
        else:
            key = b" " + key
        return key.replace(HIDDEN_SPACE, b" ")
