"""Tab completion in the chat: command names after '+', and each command's argument:

    +prompt   shipped prompt names, then file paths
    +load     saved session names
    +switch   branch names
    +state, +import, +export md|json    file paths (~ expanded)

Names are read when Tab is pressed (a `+save` or `+branch` a moment ago is offered at once).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prompt_toolkit.completion import CompleteEvent, Completer, Completion, PathCompleter
from prompt_toolkit.document import Document

from . import commands as C
from .prompts import shipped_names

PATH_COMMANDS = ("+state", "+import")


class ChatCompleter(Completer):
    """`sessions()` and `branches()` give the names to offer after +load and +switch."""

    def __init__(self, sessions: Callable[[], Iterable[str]] = tuple,
                 branches: Callable[[], Iterable[str]] = tuple) -> None:
        self.paths = PathCompleter(expanduser=True)
        self.sessions, self.branches = sessions, branches

    def get_completions(self, document: Document,
                        complete_event: CompleteEvent) -> Iterator[Completion]:
        text = document.text_before_cursor
        command, space, arg = text.partition(" ")
        command = command.lower()
        if not space:
            if text.startswith("+"):
                for name in C.COMMANDS:
                    if name.startswith(command) and name != command:
                        yield Completion(name, start_position=-len(text))
            return
        arg = arg.lstrip()
        if command == "+prompt":
            if "/" not in arg:
                yield from _names(shipped_names(), arg)
            yield from self._paths(arg, complete_event)
        elif command == "+load":
            yield from _names(self.sessions(), arg)
        elif command == "+switch":
            yield from _names(self.branches(), arg)
        elif command in PATH_COMMANDS:
            yield from self._paths(arg, complete_event)
        elif command == "+export":
            fmt, space, path = arg.partition(" ")
            if not space:
                yield from _names(("md", "json"), fmt)
            elif fmt.lower() in ("md", "json"):
                yield from self._paths(path.lstrip(), complete_event)

    def _paths(self, arg: str, complete_event: CompleteEvent) -> Iterator[Completion]:
        yield from self.paths.get_completions(Document(arg, len(arg)), complete_event)


def _names(names: Iterable[str], typed: str) -> Iterator[Completion]:
    for name in sorted(set(names)):
        if name.startswith(typed) and name != typed:
            yield Completion(name, start_position=-len(typed))
