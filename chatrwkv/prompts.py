"""Prompt files: TOML data (never executed) naming the two speakers and an init conversation.

    user = "User"
    bot = "Assistant"
    separator = ":"                   # optional, what follows a name ("User: hi")
    description = "..."               # optional, one line for the banner
    style = "g1"                      # optional: "g1" (RWKV-7 G1 chat: think modes, no newline
                                      # schedule) or "v2" (ChatRWKV v2's chat, the default)
    system = "..."                    # optional: "System: ...\n\n" starts the conversation
    init = '''                        # optional for style g1 (which starts with no example)
    User: hi

    Assistant: Hello! How can I help?
    '''

Shipped prompts live in `chatrwkv/data/prompts/NAME.toml` and are found by NAME; anything else is
a path. The init text is normalized as ChatRWKV does: each line stripped, then
`"\\n" + text + "\\n\\n"`, so the first user turn follows a blank line. A system prompt is cleaned
as RWKV-LM `RWKV-v7/RWKV7-G1x-templates.txt` says (see templates.clean_text).
"""

from __future__ import annotations

import dataclasses
import sys
from importlib import resources
from pathlib import Path

from .errors import ChatRWKVError
from .safeio import FileRefused, expand, read_regular
from .templates import clean_text

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - python 3.10 (dependency `tomli; python_version < "3.11"`)
    import tomli as tomllib

DEFAULT_FOR_TOKENIZER = {"world": "english-world", "pile": "english-pile"}
STYLES = ("v2", "g1")
KEYS = ("user", "bot", "init", "separator", "description", "style", "system")
MAX_PROMPT_BYTES = 1 << 20  # a prompt is text someone wrote; refuse anything huge


class PromptError(ChatRWKVError):
    """A prompt file that cannot be read or lacks a field."""


@dataclasses.dataclass(frozen=True)
class Prompt:
    name: str
    user: str
    bot: str
    init: str             # normalized: starts with "\n", ends with "\n\n"; or empty
    separator: str = ":"
    description: str = ""
    style: str = "v2"     # "v2" (ChatRWKV v2) or "g1" (RWKV-7 G1 templates)
    system: str = ""      # cleaned; empty: none

    def turn(self, speaker: str, text: str) -> str:
        """`"User: text"` (the text may be empty: then `"User:"`, where a reply starts)."""
        return f"{speaker}{self.separator} {text}" if text else f"{speaker}{self.separator}"

    def start_text(self) -> str:
        """What the conversation starts with: `System: ...\\n\\n` (if any), then the init."""
        if not self.system:
            return self.init
        return f"{self.turn('System', self.system)}\n\n{self.init.lstrip(chr(10))}"


def shipped_dir() -> Path:
    return Path(str(resources.files("chatrwkv") / "data" / "prompts"))


def shipped_names() -> list[str]:
    return sorted(p.stem for p in shipped_dir().glob("*.toml"))


def normalize_init(text: str) -> str:
    if not text.strip():
        return ""
    lines = [line.strip().strip("\u3000").strip("\r") for line in text.strip().split("\n")]
    return "\n" + "\n".join(lines).strip() + "\n\n"


def parse_prompt(text: str, name: str) -> Prompt:
    """Build a Prompt from TOML text; `name` is used in messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PromptError(f"{name}: not a valid TOML prompt file ({e})") from None
    except RecursionError:  # arrays nested thousands deep
        raise PromptError(f"{name}: not a valid TOML prompt file (nested too deeply)") from None
    fields: dict[str, str] = {}
    g1 = data.get("style") == "g1"
    for key in KEYS:
        required = key in ("user", "bot") or (key == "init" and not g1)
        value = data.get(key)
        if value is None and not required:
            continue
        if not isinstance(value, str) or (required and not value.strip()):
            raise PromptError(f"{name}: '{key}' must be a non-empty string")
        fields[key] = value
    if fields.get("style", "v2") not in STYLES:
        raise PromptError(f"{name}: 'style' must be one of {', '.join(STYLES)}")
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise PromptError(f"{name}: unknown key(s) {', '.join(unknown)}")
    user, bot = fields["user"].strip(), fields["bot"].strip()
    if user == bot or "\n" in user + bot:
        raise PromptError(f"{name}: user and bot must be two different one-line names")
    return Prompt(name=name, user=user, bot=bot, init=normalize_init(fields.get("init", "")),
                  separator=fields.get("separator", ":"),
                  description=fields.get("description", "").strip(),
                  style=fields.get("style", "v2"), system=clean_text(fields.get("system", "")))


def resolve_prompt_path(spec: str) -> Path:
    """A shipped prompt's name, or a path (with or without `.toml`)."""
    candidates = [expand(spec)]
    if not spec.endswith(".toml"):
        candidates.append(expand(spec + ".toml"))
    if "/" not in spec and "\\" not in spec:
        candidates.append(shipped_dir() / (spec.removesuffix(".toml") + ".toml"))
    for path in candidates:
        if path.is_file():
            return path
    raise PromptError(f"no prompt file '{spec}' (shipped prompts: {', '.join(shipped_names())})")


def load_prompt(spec: str | Path) -> Prompt:
    path = resolve_prompt_path(str(spec))
    try:
        raw = read_regular(path, MAX_PROMPT_BYTES, "prompt file")
    except FileRefused as e:
        raise PromptError(str(e)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PromptError(f"{path}: not UTF-8 text") from None
    return parse_prompt(text, path.stem)


def default_prompt_name(tokenizer_name: str) -> str:
    return DEFAULT_FOR_TOKENIZER.get(tokenizer_name, "english-world")
