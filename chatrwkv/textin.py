"""Text made valid where it enters the program.

A string read with Python's `surrogateescape` handler (a terminal's bytes through prompt_toolkit,
piped input under a C locale) or from a JSON `\\udce9` escape can hold lone surrogates: they are
not Unicode scalar values, so encoding such text as UTF-8 fails, and it used to fail only at save
time (`+save`, `+export`, the exit autosave), losing the conversation. Every input line, imported
message and loaded text goes through `valid_text` once, where it enters: each lone surrogate
(each byte that was not UTF-8) becomes U+FFFD, the replacement character, as a UTF-8 decoder
with errors="replace" would have made it. Nothing later needs to check again.
"""

from __future__ import annotations

import re

REPLACEMENT = "\ufffd"
_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_text(text: str) -> str:
    """`text` with every lone surrogate replaced by U+FFFD (the same object when none)."""
    return _SURROGATE.sub(REPLACEMENT, text) if _SURROGATE.search(text) else text


def is_valid_text(text: str) -> bool:
    return _SURROGATE.search(text) is None
