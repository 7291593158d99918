"""Text that is safe to write to a terminal: a model (or a file) cannot move the cursor, recolour
the screen, set the window title or ring the bell.

Every C0 control character except newline and tab, DEL, and every C1 control character (U+0080
to U+009F: 8-bit CSI U+009B, OSC U+009D ... start sequences on terminals that read them) is
shown as a visible stand-in instead: C0 and DEL as their Unicode control pictures (ESC -> '␛'),
C1 as U+FFFD. A carriage return is dropped: "\\r\\n" (Windows line ends in training text) then
prints as the line end it means, and a lone "\\r" cannot overwrite the line already shown.

Bidirectional embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069) and the deprecated
invisible format controls next to them (U+206A-U+206F) are shown as U+FFFD too: text after an
unclosed RLO draws in reverse order to the end of the line, so a reply could show other text than
it holds ("Trojan Source", CVE-2021-42574; the same set rustc's `text_direction_codepoint_in_literal`
lint refuses). The implicit marks (U+200E LRM, U+200F RLM, U+061C ALM) and the zero-width joiners
stay: they only nudge neutral characters, and right-to-left text and emoji sequences need them.
The mapping is per character, so a stream can be filtered chunk by chunk with no state.

Piped mode writes the model's text unfiltered: its stdout is data for another program.
"""

from __future__ import annotations

_CONTROL_PICTURES = 0x2400  # U+2400 SYMBOL FOR NULL ... U+241F SYMBOL FOR UNIT SEPARATOR

_TABLE: dict[int, str | None] = {c: chr(_CONTROL_PICTURES + c) for c in range(0x20)
                                 if c not in (0x09, 0x0A)}
_TABLE[0x0D] = None       # carriage return: dropped
_TABLE[0x7F] = "\u2421"   # SYMBOL FOR DELETE
_TABLE.update({c: "\ufffd" for c in range(0x80, 0xA0)})
BIDI_CONTROLS = (*range(0x202A, 0x202F), *range(0x2066, 0x2070))
_TABLE.update({c: "\ufffd" for c in BIDI_CONTROLS})


def terminal_safe(text: str) -> str:
    """`text` with every control character but newline and tab, and every bidirectional
    override or isolate, made harmless (see above)."""
    return text.translate(_TABLE)
