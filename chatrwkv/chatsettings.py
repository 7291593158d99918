"""Chat settings beyond sampling (think mode, what a thinking turn leaves in the state, reply
lengths), the defaults each kind of model starts with, and `+set KEY VALUE` / `+show`.

Defaults follow the model, never its file name:
- an RWKV-7 model with the World vocabulary (every G1 / G1a ... G1f) gets the G1 chat: the `g1`
  prompt (no few-shot init: `User:` / `Assistant:` as in RWKV-LM `RWKV-v7/RWKV7-G1x-templates.txt`),
  think mode `fast`, and the sampling of the official G1 chat demo, ChatRWKV `API_DEMO_CHAT.py`
  (model rwkv7-g1b: GEN_TEMP = 1.0, GEN_TOP_P = 0.3, GEN_alpha_presence = 0.5,
  GEN_alpha_frequency = 0.5, GEN_penalty_decay = 0.996);
- v4, v5, v6 (World or Pile) and v7 Pile models keep ChatRWKV v2's prompts and sampling.
"""

from __future__ import annotations

import dataclasses
import math

from .commands import check_temperature, check_top_p
from .errors import ChatRWKVError
from .prompts import default_prompt_name
from .samplingsettings import SamplingSettings
from .templates import THINK_MODES, check_think_mode

CHAT_MAX_TOKENS = 999      # ChatRWKV v2's bound; its newline schedule ends replies long before
G1_CHAT_MAX_TOKENS = 4096  # a G1 reply thinks first: ChatRWKV's demo allows 99999
HISTORY_MODES = ("answer", "full")


class SettingError(ChatRWKVError):
    """A `+set` that cannot be applied (nothing changes)."""


@dataclasses.dataclass(frozen=True)
class ChatOptions:
    """think: a mode of templates.THINK_MODES. history: what a finished turn leaves in the state,
    "answer" (re-read as `Assistant: <answer>\\n\\n` from before the reply, as the templates lay
    out earlier turns) or "full" (the thinking stays). Lengths in tokens."""

    think: str = "off"
    history: str = "answer"
    max_tokens: int = 256              # free text: +gen, +i, +qq, +qa
    chat_max_tokens: int = CHAT_MAX_TOKENS


@dataclasses.dataclass(frozen=True)
class Profile:
    name: str            # "g1" or "chatrwkv-v2"
    prompt: str          # shipped prompt name
    think: str
    sampling: SamplingSettings
    chat_max_tokens: int


G1_SAMPLING = SamplingSettings(temperature=1.0, top_p=0.3, top_k=0, presence=0.5, frequency=0.5,
                               decay=0.996)


def profile_for(version: str, tokenizer_name: str) -> Profile:
    """The defaults for a model of this RWKV version ("7.0", ...) and vocabulary."""
    if version.startswith("7") and tokenizer_name == "world":
        return Profile("g1", "g1", "fast", G1_SAMPLING, G1_CHAT_MAX_TOKENS)
    return Profile("chatrwkv-v2", default_prompt_name(tokenizer_name), "off", SamplingSettings(),
                   CHAT_MAX_TOKENS)


# +set KEY: (canonical key, where it lives)
KEYS: dict[str, str] = {
    "temperature": "temperature", "temp": "temperature", "top_p": "top_p", "top-p": "top_p",
    "top_k": "top_k", "top-k": "top_k", "presence": "presence", "frequency": "frequency",
    "decay": "decay", "max_tokens": "max_tokens", "max-tokens": "max_tokens",
    "chat_max_tokens": "chat_max_tokens", "chat-max-tokens": "chat_max_tokens",
    "think": "think", "history": "history",
}
SET_USAGE = ("+set KEY VALUE: temperature, top_p, top_k, presence, frequency, decay, "
             "max_tokens, chat_max_tokens, think, history")


def _float(raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        return math.nan


def _int(raw: str, minimum: int) -> tuple[int | None, str | None]:
    try:
        value = int(raw)
    except ValueError:
        return None, f"not a whole number: {raw}"
    return (value, None) if value >= minimum else (None, f"must be >= {minimum}")


def apply_setting(sampling: SamplingSettings, options: ChatOptions, key: str,
                  raw: str) -> tuple[SamplingSettings, ChatOptions, str]:
    """The settings with KEY set from its text; raises SettingError (one line) if it cannot be."""
    name = KEYS.get(key.lower())
    if name is None:
        raise SettingError(f"unknown setting '{key}' ({SET_USAGE})")
    problem: str | None = None
    value: object = None
    if name in ("temperature", "top_p", "presence", "frequency", "decay"):
        value = _float(raw)
        checks = {"temperature": check_temperature, "top_p": check_top_p,
                  "presence": lambda v: None if math.isfinite(v) and v >= 0 else "must be >= 0",
                  "frequency": lambda v: None if math.isfinite(v) and v >= 0 else "must be >= 0",
                  "decay": lambda v: None if 0 <= v <= 1 else "must be in [0, 1]"}
        problem = checks[name](value)
    elif name in ("top_k", "max_tokens", "chat_max_tokens"):
        value, problem = _int(raw, 0 if name == "top_k" else 1)
    elif name == "think":
        value, problem = raw.lower(), check_think_mode(raw.lower())
    else:
        value = raw.lower()
        problem = None if value in HISTORY_MODES else f"use {' or '.join(HISTORY_MODES)}"
    if problem is not None:
        raise SettingError(f"bad {name} {raw}: {problem}")
    if name in {f.name for f in dataclasses.fields(SamplingSettings)}:
        return dataclasses.replace(sampling, **{name: value}), options, name
    return sampling, dataclasses.replace(options, **{name: value}), name


def setting_value(sampling: SamplingSettings, options: ChatOptions, name: str) -> str:
    value = getattr(sampling, name) if hasattr(sampling, name) else getattr(options, name)
    return f"{value:g}" if isinstance(value, float) else str(value)


def think_modes_help() -> str:
    return ", ".join(THINK_MODES)
