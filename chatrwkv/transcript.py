"""Transcript export (Markdown, JSON) and import (JSON -> a conversation, in one prefill).

JSON is a list of `{"role": ..., "content": ...}` messages, the common chat format:
    system     the prompt's init text (optional on import: the current prompt's is used)
    user       a user message
    assistant  a bot reply
On import the messages are laid out exactly as the chat feeds them ("User: msg\\n\\nBot: reply
\\n\\n"), so the rebuilt state matches a conversation typed turn by turn, up to tokenization: a
reply the model sampled as different tokens than `encode` gives is re-read as `encode` gives it.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Protocol

from .errors import ChatRWKVError
from .events import Snapshot, Turn
from .prompts import Prompt
from .sampling import SamplingSettings
from .templates import collapse_blank_lines

ROLE_OUT = {"prompt": "system", "user": "user", "bot": "assistant"}
MAX_IMPORT_BYTES = 64 << 20


class TranscriptError(ChatRWKVError):
    """A transcript file that cannot be read."""


class Feeder(Protocol):
    """What `rebuild` needs from a session (the session module sits above this one)."""

    prompt: Prompt
    settings: SamplingSettings
    runtime: object
    cancel: threading.Event

    def zero(self) -> Snapshot: ...
    def feed(self, base: Snapshot, text: str, turns: tuple[Turn, ...],
             settings: SamplingSettings) -> Snapshot: ...
    def encode_fed(self, text: str) -> list[int]: ...


def to_messages(turns: tuple[Turn, ...]) -> list[dict[str, str]]:
    return [{"role": ROLE_OUT[t.role], "content": t.text} for t in turns if t.role in ROLE_OUT]


def to_json(turns: tuple[Turn, ...], prompt: Prompt) -> str:
    return json.dumps(to_messages(turns), ensure_ascii=False, indent=1) + "\n"


def to_markdown(turns: tuple[Turn, ...], prompt: Prompt) -> str:
    names = {"user": prompt.user, "bot": prompt.bot}
    out = [f"# chatrwkv conversation ({prompt.name})", ""]
    for t in turns:
        if t.role == "prompt":
            out += ["<details><summary>prompt</summary>", "", "```", t.text.strip("\n"), "```",
                    "", "</details>", ""]
        elif t.role in names:
            out += [f"**{names[t.role]}:** {t.text}", ""]
    return "\n".join(out)


def read_json(path: Path) -> list[dict[str, str]]:
    try:
        if path.stat().st_size > MAX_IMPORT_BYTES:
            raise TranscriptError(f"{path}: too large to import")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TranscriptError(f"{path}: cannot read a JSON transcript ({e})") from None
    if not isinstance(data, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str) for m in data):
        raise TranscriptError(f"{path}: expected a list of {{role, content}} messages")
    for m in data:
        if m["role"] not in ("system", "user", "assistant"):
            raise TranscriptError(f"{path}: unknown role '{m['role']}' "
                                  "(use system, user, assistant)")
    return data


def rebuild(session: Feeder, messages: list[dict[str, str]]) -> tuple[dict[str, Snapshot], int]:
    """New slots (`chat_init`, `chat_pre`, `chat`) for `messages`, each token read once."""
    p = session.prompt
    system = [m["content"] for m in messages if m["role"] == "system"]
    init = system[0] if system else p.init
    init_snap = session.feed(session.zero(), init, (Turn("prompt", init),), session.settings)
    # everything up to the last reply's "Bot:" (chat_pre), then the last reply
    pieces: list[tuple[str, Turn]] = []
    for m in messages:
        text = collapse_blank_lines(m["content"])
        if m["role"] == "user":
            pieces.append((f"{p.turn(p.user, text)}\n\n{p.turn(p.bot, '')}", Turn("user", text)))
        elif m["role"] == "assistant":
            if not pieces or pieces[-1][1].role != "user":
                raise TranscriptError("an assistant message must follow a user message")
            pieces.append((f" {text}\n\n", Turn("bot", text)))
    last_reply = len(pieces) - 1 if pieces and pieces[-1][1].role == "bot" else len(pieces)
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
