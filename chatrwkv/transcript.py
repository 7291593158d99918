"""Transcript export (Markdown, JSON) and import (JSON -> a conversation, in one prefill).

JSON is a list of `{"role": ..., "content": ...}` messages, the common chat format:
    system     the system prompt for a G1-style prompt (none: the message is left out); with a
               ChatRWKV v2 prompt, its init text (optional on import: the current prompt's)
    user       a user message
    assistant  a bot reply; a reply that thought carries it apart, in "reasoning"
Markdown keeps the thinking apart too, in a collapsed <details> block above the answer.
On import the messages are laid out exactly as the chat feeds them ("User: msg\\n\\nBot: reply
\\n\\n"), so the rebuilt state matches a conversation typed turn by turn, up to tokenization: a
reply the model sampled as different tokens than `encode` gives is re-read as `encode` gives it.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path
from typing import Protocol

from .errors import ChatRWKVError, first_line
from .events import Snapshot, Turn
from .prompts import Prompt
from .safeio import FileRefused, read_regular
from .sampling import SamplingSettings
from .templates import clean_text, collapse_blank_lines
from .textin import valid_text

ROLE_OUT = {"prompt": "system", "user": "user", "bot": "assistant"}
MAX_IMPORT_BYTES = 64 << 20


class TranscriptError(ChatRWKVError):
    """A transcript file that cannot be read."""


class Feeder(Protocol):
    """What `rebuild` needs from a session (the session module sits above this one)."""

    prompt: Prompt
    settings: SamplingSettings
    options: object  # chatsettings.ChatOptions: its `history`
    runtime: object
    cancel: threading.Event

    def zero(self) -> Snapshot: ...
    def feed(self, base: Snapshot, text: str, turns: tuple[Turn, ...],
             settings: SamplingSettings) -> Snapshot: ...
    def encode_fed(self, text: str) -> list[int]: ...


def to_messages(turns: tuple[Turn, ...], prompt: Prompt | None = None) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    reasoning = ""
    for t in turns:
        if t.role == "think":
            reasoning = t.text
        elif t.role == "prompt" and prompt is not None and prompt.style == "g1":
            if prompt.system:
                out.append({"role": "system", "content": prompt.system})
        elif t.role in ROLE_OUT:
            out.append({"role": ROLE_OUT[t.role], "content": t.text})
            if t.role == "bot" and reasoning:
                out[-1]["reasoning"] = reasoning
            reasoning = ""
    return out


def to_json(turns: tuple[Turn, ...], prompt: Prompt) -> str:
    return json.dumps(to_messages(turns, prompt), ensure_ascii=False, indent=1) + "\n"


def to_markdown(turns: tuple[Turn, ...], prompt: Prompt) -> str:
    names = {"user": prompt.user, "bot": prompt.bot}
    out = [f"# chatrwkv conversation ({prompt.name})", ""]
    for t in turns:
        if t.role == "think":
            out += ["<details><summary>thinking</summary>", "", t.text, "", "</details>", ""]
        elif t.role == "prompt" and prompt.style == "g1":
            if prompt.system:
                out += [f"**System:** {prompt.system}", ""]
        elif t.role == "prompt":
            out += ["<details><summary>prompt</summary>", "", "```", t.text.strip("\n"), "```",
                    "", "</details>", ""]
        elif t.role in names:
            out += [f"**{names[t.role]}:** {t.text}", ""]
    return "\n".join(out)


def read_json(path: Path) -> list[dict[str, str]]:
    """The messages of a JSON transcript; TranscriptError (one line) for anything else. Text is
    made valid here, where it enters (a `\\udce9` escape is a lone surrogate: U+FFFD)."""
    try:
        raw = read_regular(path, MAX_IMPORT_BYTES, "JSON transcript")
    except FileRefused as e:
        raise TranscriptError(str(e)) from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        # ValueError: bad JSON, or an integer past Python's 4300-digit limit;
        # RecursionError: arrays or objects nested thousands deep
        why = "nested too deeply" if isinstance(e, RecursionError) else first_line(e, 120)
        raise TranscriptError(f"{path}: cannot read a JSON transcript ({why})") from None
    if not isinstance(data, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
            and isinstance(m.get("reasoning", ""), str) for m in data):
        raise TranscriptError(f"{path}: expected a list of {{role, content}} messages "
                              "(and text in reasoning)")
    for m in data:
        if m["role"] not in ("system", "user", "assistant"):
            raise TranscriptError(f"{path}: unknown role '{valid_text(m['role'][:40])}' "
                                  "(use system, user, assistant)")
    return [{**m, **{k: valid_text(m[k]) for k in ("content", "reasoning") if k in m}}
            for m in data]


def rebuild(session: Feeder, messages: list[dict[str, str]]) -> tuple[dict[str, Snapshot], int]:
    """New slots (`chat_init`, `chat_pre`, `chat`) for `messages`, each token read once."""
    p = prompt_for(session.prompt, messages)
    system = [m["content"] for m in messages if m["role"] == "system"]
    init = p.start_text() if p.style == "g1" else system[0] if system else p.init
    if init:
        init_snap = session.feed(session.zero(), init, (Turn("prompt", init),), session.settings)
    else:  # a G1 chat with no system prompt, or an empty system message: the start state
        init_snap = dataclasses.replace(session.zero(), transcript=(Turn("prompt", ""),))
    full = getattr(session.options, "history", "answer") == "full"
    # everything up to the last reply's "Bot:" (chat_pre), then the last reply
    pieces: list[tuple[str, Turn]] = []
    for m in messages:
        text = collapse_blank_lines(m["content"])
        if m["role"] == "user":
            pieces.append((f"{p.turn(p.user, text)}\n\n{p.turn(p.bot, '')}", Turn("user", text)))
        elif m["role"] == "assistant":
            if not pieces or pieces[-1][1].role != "user":
                raise TranscriptError("an assistant message must follow a user message")
            reasoning = m.get("reasoning", "").strip()
            if reasoning:
                pieces.append(("", Turn("think", reasoning)))
            fed = f" <think>\n{reasoning}\n</think>\n{text}" if reasoning and full else f" {text}"
            pieces.append((f"{fed}\n\n", Turn("bot", text)))
    last_reply = len(pieces) - 1 if pieces and pieces[-1][1].role == "bot" else len(pieces)
    if last_reply < len(pieces) and last_reply > 0 and pieces[last_reply - 1][1].role == "think":
        last_reply -= 1  # chat_pre is before the last reply's thinking too
    slots = {"chat_init": init_snap}
    snap = init_snap
    head = pieces[:last_reply]
    if head:
        snap = _feed_pieces(session, snap, head)
    if last_reply < len(pieces):
        slots["chat_pre"] = snap
        snap = _feed_pieces(session, snap, pieces[last_reply:])
    slots["chat"] = snap
    return slots, len(snap.tokens)


def _feed_pieces(session: Feeder, base: Snapshot, pieces: list[tuple[str, Turn]]) -> Snapshot:
    """Each piece encoded on its own, as the chat encodes each turn; one prefill for all."""
    ids = [t for text, _ in pieces for t in session.encode_fed(text)]
    state = base.state.clone()
    logits = session.runtime.prefill(ids, state, cancel=session.cancel)
    return Snapshot(state, logits, base.tokens + tuple(ids),
                    base.transcript + tuple(turn for _, turn in pieces), session.settings)


def prompt_for(prompt: Prompt, messages: list[dict[str, str]]) -> Prompt:
    """A G1-style prompt takes the transcript's system message as its system prompt."""
    if prompt.style != "g1":
        return prompt
    system = [m["content"] for m in messages if m["role"] == "system"]
    return dataclasses.replace(prompt, system=clean_text(system[0]) if system else "")
