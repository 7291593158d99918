"""The chat command language: one input line -> one `Command`. Pure: no I/O, no model.

Grammar (ChatRWKV v2's, made strict):
    -temp=X / -top_p=Y    anywhere in a line, as their own word: apply to that line only and are
                          removed exactly as typed (ChatRWKV's `-temp=1.0` left `.0` behind)
    +NAME [TEXT]          a command from COMMANDS (names are case-insensitive)
    \\+...                 a message that starts with '+'
    anything else         a chat message
A literal two-character `\\n` becomes a newline (ChatRWKV does this, and it lets one piped line
hold a multi-line message). Any mistake is a `ParseError` with one line for the user.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable

TEMP_MAX = 5.0  # ChatRWKV's upper clamp; above it the distribution is flat noise


@dataclasses.dataclass(frozen=True)
class Overrides:
    """Per-line sampling settings; None means "the session's setting"."""

    temperature: float | None = None
    top_p: float | None = None


@dataclasses.dataclass(frozen=True)
class Command:
    """Base of every parsed line."""

    overrides: Overrides = Overrides()


@dataclasses.dataclass(frozen=True)
class Empty(Command):
    """A blank line: nothing to do."""


@dataclasses.dataclass(frozen=True)
class ParseError(Command):
    message: str = ""


@dataclasses.dataclass(frozen=True)
class Message(Command):
    text: str = ""


@dataclasses.dataclass(frozen=True)
class Regenerate(Command):
    """`+`: another reply to the last message."""


@dataclasses.dataclass(frozen=True)
class Reset(Command):
    """`+reset`: back to the init prompt."""


@dataclasses.dataclass(frozen=True)
class LoadPrompt(Command):
    path: str = ""


@dataclasses.dataclass(frozen=True)
class Generate(Command):
    """Free generation. kind: "gen" (plain text), "i" (instruction), "qq" (Q/A), "qa" (chat
    prompt as context, history ignored)."""

    kind: str = "gen"
    text: str = ""


@dataclasses.dataclass(frozen=True)
class Retry(Command):
    """`++`: the last free generation again, resampled."""


@dataclasses.dataclass(frozen=True)
class Continue(Command):
    """`+++`: continue the last free generation."""


@dataclasses.dataclass(frozen=True)
class Help(Command):
    pass


@dataclasses.dataclass(frozen=True)
class Exit(Command):
    pass


@dataclasses.dataclass(frozen=True)
class Undo(Command):
    pass


@dataclasses.dataclass(frozen=True)
class Redo(Command):
    pass


@dataclasses.dataclass(frozen=True)
class Branch(Command):
    name: str = ""


@dataclasses.dataclass(frozen=True)
class Switch(Command):
    name: str = ""


@dataclasses.dataclass(frozen=True)
class Goto(Command):
    node_id: int = -1


@dataclasses.dataclass(frozen=True)
class ShowTree(Command):
    pass


@dataclasses.dataclass(frozen=True)
class ShowPath(Command):
    pass


@dataclasses.dataclass(frozen=True)
class Save(Command):
    name: str = ""


@dataclasses.dataclass(frozen=True)
class Load(Command):
    name: str = ""


@dataclasses.dataclass(frozen=True)
class Sessions(Command):
    """`+sessions`: list saved sessions."""


@dataclasses.dataclass(frozen=True)
class Export(Command):
    fmt: str = "md"   # "md" or "json"
    path: str = ""


@dataclasses.dataclass(frozen=True)
class Import(Command):
    path: str = ""


@dataclasses.dataclass(frozen=True)
class MountState(Command):
    path: str = ""


@dataclasses.dataclass(frozen=True)
class SetOption(Command):
    """`+set KEY VALUE` (and `+think MODE`, which is `+set think MODE`)."""

    key: str = ""
    value: str = ""


@dataclasses.dataclass(frozen=True)
class ShowSettings(Command):
    """`+show`: the model, the prompt and every setting."""


@dataclasses.dataclass(frozen=True)
class SetSystem(Command):
    """`+system TEXT`: a new system prompt (empty: none); the conversation starts over."""

    text: str = ""


@dataclasses.dataclass(frozen=True)
class Spec:
    """One row of the command table."""

    usage: str
    help: str
    build: Callable[[str, Overrides], Command]
    takes_text: bool  # True: TEXT is required; False: no argument allowed
    optional: bool = False  # with takes_text: TEXT may be left out


def _export(text: str, o: Overrides) -> Command:
    fmt, _, path = text.partition(" ")
    if fmt.lower() not in ("md", "json") or not path.strip():
        return ParseError(message="usage: +export md|json FILE")
    return Export(overrides=o, fmt=fmt.lower(), path=path.strip())


def _word(cls: type, usage: str) -> Callable[[str, Overrides], Command]:
    def build(text: str, o: Overrides) -> Command:
        if any(ch.isspace() for ch in text):
            return ParseError(message=f"a name is one word (usage: {usage})")
        return cls(overrides=o, name=text)
    return build


def _set(text: str, o: Overrides) -> Command:
    key, _, value = text.partition(" ")
    if not value.strip():
        return ParseError(message="usage: +set KEY VALUE (+show lists the settings)")
    return SetOption(overrides=o, key=key, value=value.strip())


def _goto(text: str, o: Overrides) -> Command:
    digits = text.removeprefix("#")
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 9:
        return ParseError(message="+goto takes a node number from +tree (usage: +goto N)")
    return Goto(overrides=o, node_id=int(digits))


def _gen(kind: str) -> Callable[[str, Overrides], Command]:
    return lambda text, o: Generate(overrides=o, kind=kind, text=text)


COMMANDS: dict[str, Spec] = {
    "+": Spec("+", "another reply to your last message", lambda t, o: Regenerate(o), False),
    "+reset": Spec("+reset", "forget the conversation, back to the prompt",
                   lambda t, o: Reset(o), False),
    "+prompt": Spec("+prompt FILE", "load a prompt file (or a shipped prompt name) and start over",
                    lambda t, o: LoadPrompt(overrides=o, path=t), True),
    "+gen": Spec("+gen TEXT", "free text continuing TEXT", _gen("gen"), True),
    "+i": Spec("+i TEXT", "follow the instruction TEXT", _gen("i"), True),
    "+qq": Spec("+qq TEXT", "answer the question TEXT (Q/A format, no chat context)",
                _gen("qq"), True),
    "+qa": Spec("+qa TEXT", "answer TEXT in the chat format, ignoring the history",
                _gen("qa"), True),
    "++": Spec("++", "the last free text again, resampled", lambda t, o: Retry(o), False),
    "+++": Spec("+++", "continue the last free text", lambda t, o: Continue(o), False),
    "+undo": Spec("+undo", "take back the last turn (exact state before it)",
                  lambda t, o: Undo(o), False),
    "+redo": Spec("+redo", "put the undone turn back", lambda t, o: Redo(o), False),
    "+branch": Spec("+branch NAME", "start a branch NAME here (the old one keeps its turns)",
                    _word(Branch, "+branch NAME"), True),
    "+switch": Spec("+switch NAME", "go to the head of branch NAME",
                    _word(Switch, "+switch NAME"), True),
    "+tree": Spec("+tree", "the conversation tree, with branches and alternatives",
                  lambda t, o: ShowTree(o), False),
    "+goto": Spec("+goto N", "go to node #N of +tree (any turn, replaced or undone ones too)",
                  _goto, True),
    "+path": Spec("+path", "the transcript from the start to here", lambda t, o: ShowPath(o),
                  False),
    "+save": Spec("+save NAME", "save the session as states/NAME", _word(Save, "+save NAME"),
                  True),
    "+load": Spec("+load NAME", "load the session saved as NAME", _word(Load, "+load NAME"),
                  True),
    "+sessions": Spec("+sessions", "list saved sessions", lambda t, o: Sessions(o), False),
    "+export": Spec("+export md|json FILE", "write the current path as Markdown or JSON",
                    _export, True),
    "+import": Spec("+import FILE", "rebuild a conversation from an exported JSON file",
                    lambda t, o: Import(overrides=o, path=t), True),
    "+state": Spec("+state FILE", "start over from a state-tuning file (.pth / .state)",
                   lambda t, o: MountState(overrides=o, path=t), True),
    "+think": Spec("+think MODE", "think mode for G1 models: off, fast, think, think-bit, "
                   "think-lot", lambda t, o: _set("think " + t, o), True),
    "+system": Spec("+system [TEXT]", "set the system prompt (none: clear it) and start over",
                    lambda t, o: SetSystem(overrides=o, text=t), True, optional=True),
    "+set": Spec("+set KEY VALUE", "change a setting for the rest of the chat (+show lists them)",
                 _set, True),
    "+show": Spec("+show", "the model, prompt, system prompt and every setting",
                  lambda t, o: ShowSettings(o), False),
    "+help": Spec("+help", "this list", lambda t, o: Help(o), False),
    "+exit": Spec("+exit", "leave (Ctrl-D works too)", lambda t, o: Exit(o), False),
}

OPTIONS_HELP = ("-temp=X and -top_p=Y anywhere in a line apply to that line only "
                f"(0 <= X <= {TEMP_MAX:g}, X = 0 is greedy; 0 <= Y <= 1)")

# An option is a whole word: start of line or whitespace before it, no space inside the value.
_OPTION = re.compile(r"(^|\s)-(temp|top_p)=(\S*)")


def check_temperature(value: float) -> str | None:
    """None if `value` is a usable temperature, else the complaint."""
    if not (math.isfinite(value) and 0.0 <= value <= TEMP_MAX):
        return f"temperature must be a number from 0 to {TEMP_MAX:g} (0 is greedy)"
    return None


def check_top_p(value: float) -> str | None:
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        return "top-p must be a number from 0 to 1"
    return None


_CHECKS = {"temp": check_temperature, "top_p": check_top_p}


def _extract_options(line: str) -> tuple[str, Overrides] | ParseError:
    found: dict[str, float] = {}
    for m in _OPTION.finditer(line):
        name, raw = m.group(2), m.group(3)
        if name in found:
            return ParseError(message=f"-{name} is given twice")
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        problem = _CHECKS[name](value)
        if problem is not None:
            return ParseError(message=f"bad -{name}={raw}: {problem}")
        found[name] = value
    rest = _OPTION.sub(lambda m: m.group(1) if m.start() == 0 else "", line)
    return rest, Overrides(temperature=found.get("temp"), top_p=found.get("top_p"))


def parse(line: str) -> Command:
    """Parse one input line (possibly multi-line text from the editor). Never raises."""
    extracted = _extract_options(line.replace("\\n", "\n"))
    if isinstance(extracted, ParseError):
        return extracted
    text, overrides = extracted
    text = text.strip()
    if not text:
        if overrides != Overrides():
            return ParseError(message="options alone do nothing: add a message or a command")
        return Empty()
    if text.startswith("\\+"):
        return Message(overrides=overrides, text=text[1:])
    if not text.startswith("+"):
        return Message(overrides=overrides, text=text)
    word, *tail = re.split(r"\s", text, maxsplit=1)
    name, rest = word.lower(), (tail[0].strip() if tail else "")
    spec = COMMANDS.get(name)
    if spec is None:
        return ParseError(message=f"unknown command {word} (type +help for the list; "
                                  "start a message with \\+ to send a literal '+')")
    if spec.takes_text and not rest and not spec.optional:
        return ParseError(message=f"{name} needs text: {spec.usage}")
    if not spec.takes_text and rest:
        return ParseError(message=f"{name} takes no text (usage: {spec.usage})")
    return spec.build(rest, overrides)
