"""Plain data shared by the session, the conversation tree, session files and the UI: a turn of
the transcript, a snapshot of a point in the conversation, and the events the UI renders."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from .samplingsettings import SamplingSettings
from .stats import Stats

if TYPE_CHECKING:  # torch stays unimported until the model loads (start-up, issue 15)
    import torch

    from .state import State


@dataclasses.dataclass(frozen=True)
class Turn:
    role: str   # "prompt", "user", "think" (a reply's thinking, before its "bot" turn), "bot",
                # "input" (free-generation input), "text" (free output)
    text: str


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """A point in a conversation. `logits` is None only for the zero state."""

    state: State
    logits: torch.Tensor | None
    tokens: tuple[int, ...]
    transcript: tuple[Turn, ...]
    settings: SamplingSettings


# --- events the UI renders ---------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Info:
    text: str


@dataclasses.dataclass(frozen=True)
class Problem:
    text: str


@dataclasses.dataclass(frozen=True)
class ReplyStart:
    speaker: str | None  # the bot's name for a chat reply, None for free text


@dataclasses.dataclass(frozen=True)
class Chunk:
    text: str  # whole characters, literal text


@dataclasses.dataclass(frozen=True)
class ThinkChunk:
    text: str  # a piece of a reply's thinking (inside <think>...</think>), literal text


@dataclasses.dataclass(frozen=True)
class ReplyEnd:
    stats: Stats
    interrupted: bool


@dataclasses.dataclass(frozen=True)
class ShowHelp:
    pass


@dataclasses.dataclass(frozen=True)
class ExitRequested:
    pass


@dataclasses.dataclass(frozen=True)
class TreeRow:
    depth: int
    label: str
    preview: str
    branches: tuple[str, ...]  # branch names whose head is this node
    current: bool
    node_id: int = -1          # what `+goto` takes


@dataclasses.dataclass(frozen=True)
class ShowTree:
    rows: tuple[TreeRow, ...]


@dataclasses.dataclass(frozen=True)
class ShowTranscript:
    turns: tuple[Turn, ...]


@dataclasses.dataclass(frozen=True)
class ShowSettings:
    rows: tuple[tuple[str, str], ...]  # (name, value), in the order to print


Event = (Info | Problem | ReplyStart | Chunk | ThinkChunk | ReplyEnd | ShowHelp | ExitRequested
         | ShowTree | ShowTranscript | ShowSettings)
