"""Prompt files: TOML data (never executed) naming the two speakers and an init conversation.

    user = "User"
    bot = "Assistant"
    separator = ":"                   # optional, what follows a name ("User: hi")
    description = "..."               # optional, one line for the banner
    init = '''
    User: hi

    Assistant: Hello! How can I help?
    '''

Shipped prompts live in `chatrwkv/data/prompts/NAME.toml` and are found by NAME; anything else is
a path. The init text is normalized as ChatRWKV does: each line stripped, then
`"\\n" + text + "\\n\\n"`, so the first user turn follows a blank line.
"""

from __future__ import annotations

import dataclasses
import sys
from importlib import resources
from pathlib import Path

from .errors import ChatRWKVError
from .safeio import FileRefused, expand, read_regular

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - python 3.10 (dependency `tomli; python_version < "3.11"`)
    import tomli as tomllib

DEFAULT_FOR_TOKENIZER = {"world": "english-world", "pile": "english-pile"}
MAX_PROMPT_BYTES = 1 << 20  # a prompt is text someone wrote; refuse anything huge


class PromptError(ChatRWKVError):
    """A prompt file that cannot be read or lacks a field."""


@dataclasses.dataclass(frozen=True)
class Prompt:
    name: str
    user: str
    bot: str
    init: str             # normalized: starts with "\n", ends with "\n\n"
    separator: str = ":"
    description: str = ""

    def turn(self, speaker: str, text: str) -> str:
        """`"User: text"` (the text may be empty: then `"User:"`, where a reply starts)."""
        return f"{speaker}{self.separator} {text}" if text else f"{speaker}{self.separator}"


def shipped_dir() -> Path:
    return Path(str(resources.files("chatrwkv") / "data" / "prompts"))


def shipped_names() -> list[str]:
    return sorted(p.stem for p in shipped_dir().glob("*.toml"))


def normalize_init(text: str) -> str:
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
    for key, required in (("user", True), ("bot", True), ("init", True),
                          ("separator", False), ("description", False)):
        value = data.get(key)
        if value is None and not required:
            continue
        if not isinstance(value, str) or (required and not value.strip()):
            raise PromptError(f"{name}: '{key}' must be a non-empty string")
        fields[key] = value
    unknown = sorted(set(data) - {"user", "bot", "init", "separator", "description"})
    if unknown:
        raise PromptError(f"{name}: unknown key(s) {', '.join(unknown)}")
    user, bot = fields["user"].strip(), fields["bot"].strip()
    if user == bot or "\n" in user + bot:
        raise PromptError(f"{name}: user and bot must be two different one-line names")
    return Prompt(name=name, user=user, bot=bot, init=normalize_init(fields["init"]),
                  separator=fields.get("separator", ":"),
                  description=fields.get("description", "").strip())


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
