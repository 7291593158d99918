"""How chat text is laid out before it is encoded: message cleaning, and the RWKV-7 G1 think
modes. Pure text, no model, no tokenizer.

Reference: RWKV-LM `RWKV-v7/RWKV7-G1x-templates.txt` (the templates the G1 series was trained on):

    "User: xxx\\n\\nAssistant:"                        off (plain)
    "System: xxx\\n\\nUser: xxx\\n\\nAssistant:"        with a system prompt
    "Assistant: <think"                               think
    "Assistant: <think>\\n</think"                     fast ("fake thinking, nice results and fast")
    "User: xxx (think a bit)\\n\\nAssistant: <think"    think-bit (also "(think)", "(think a lot)")

Note the fake think ends `</think` without its `>`: the model writes the `>` itself. Inputs are
cleaned as the file says (`clean_txt`: CRLF to LF, runs of newlines to one, stripped), since a
blank line ends a turn.
"""

from __future__ import annotations

import dataclasses
import re

# mode -> (appended to the user's text, appended after "Assistant:")
THINK_MODES: dict[str, tuple[str, str]] = {
    "off": ("", ""),
    "fast": ("", " <think>\n</think"),
    "think": ("", " <think"),
    "think-bit": (" (think a bit)", " <think"),
    "think-lot": (" (think a lot)", " <think"),
}
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def collapse_blank_lines(text: str) -> str:
    """A blank line would end the turn, so a message keeps single newlines only."""
    return re.sub(r"\n\s*\n", "\n", text.replace("\r\n", "\n")).strip()


def clean_text(text: str) -> str:
    """The templates' `clean_txt`: CRLF to LF, newline runs to one newline, stripped."""
    return re.sub(r"\n{2,}", "\n", text.replace("\r\n", "\n")).strip()


def check_think_mode(mode: str) -> str | None:
    """None if `mode` is a think mode, else the complaint."""
    if mode not in THINK_MODES:
        return f"unknown think mode '{mode}' (use {', '.join(THINK_MODES)})"
    return None


def user_suffix(mode: str) -> str:
    return THINK_MODES[mode][0]


def assistant_prefix(mode: str) -> str:
    return THINK_MODES[mode][1]


@dataclasses.dataclass(frozen=True)
class Split:
    """A reply's raw text cut in two: the thinking (inside <think>...</think>) and the answer."""

    thinking: str
    answer: str
    closed: bool          # the </think> was seen, or there is no think block
    think_at: int | None  # where `thinking` starts in the raw text (None: no think block)
    answer_at: int        # where `answer` starts in the raw text


def split_reply(raw: str, final: bool = False) -> Split:
    """Cut `raw` (the reply as the model sees it, think prefix included) at the think tags. A
    reply whose first non-blank text is not <think> is all answer; while `raw` may still become
    a <think> tag (`<thi`) nothing is given out, unless `final`."""
    lead = len(raw) - len(raw.lstrip())
    body = raw[lead:]
    n = min(len(body), len(THINK_OPEN))
    if not body or body[:n] != THINK_OPEN[:n] or (final and n < len(THINK_OPEN)):
        return Split("", raw, True, None, 0)
    if n < len(THINK_OPEN):
        return Split("", "", False, None, len(raw))
    start = lead + len(THINK_OPEN)
    end = raw.find(THINK_CLOSE, start)
    if end < 0:
        return Split(raw[start:], "", False, start, len(raw))
    stop = end + len(THINK_CLOSE)
    return Split(raw[start:end], raw[stop:], True, start, stop)
