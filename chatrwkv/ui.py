"""The terminal: prompt_toolkit reads lines, rich draws the banner, help and stats; model text is
written literally (never parsed as markup). The only module that reads the keyboard or prints.

Two modes: interactive (a terminal on both ends) and piped (each stdin line is a message or
command, replies go to stdout without decoration, notes and errors to stderr).
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from . import commands as C
from .errors import ChatRWKVError
from .events import (
    Chunk,
    Event,
    ExitRequested,
    Info,
    Problem,
    ReplyEnd,
    ReplyStart,
    ShowHelp,
    ShowSettings,
    ShowTranscript,
    ShowTree,
    Stats,
    ThinkChunk,
)
from .sessionpaths import home_dir, list_sessions
from .stats import format_stats
from .termtext import terminal_safe
from .textin import valid_text
from .typeahead import quiet_keys

if TYPE_CHECKING:  # torch loads with the model, after the prompt shows (start-up, issue 15);
    # prompt_toolkit only in the terminal (piped mode never imports it)
    from prompt_toolkit import PromptSession

    from .backgroundload import BackgroundLoad
    from .history import PrivateHistory
    from .prompts import Prompt
    from .session import Session

BLOCK = '"""'  # a line of three quotes starts and ends a multi-line message


def print_error(message: str) -> None:
    print(f"chatrwkv: {message}", file=sys.stderr)


def print_note(message: str) -> None:
    """One muted line on stderr (so piped replies on stdout stay clean)."""
    Console(stderr=True, highlight=False, soft_wrap=True).print(Text(message, style="dim"))


@contextmanager
def ctrl_c_stops(session: Session) -> Iterator[None]:
    """While a command runs, Ctrl-C asks the session to stop (between tokens) instead of raising
    in the middle of a forward pass."""
    def on_sigint(signum, frame):
        session.cancel.set()
    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def help_rows() -> list[tuple[str, str]]:
    return [(spec.usage, spec.help) for spec in C.COMMANDS.values()]


def tree_lines(event: ShowTree) -> list[str]:
    """The tree as indented plain text (piped mode)."""
    out = []
    for row in event.rows:
        mark = "*" if row.current else "-"
        heads = f" [{', '.join(row.branches)}]" if row.branches else ""
        preview = f": {row.preview}" if row.preview else ""
        out.append(f"{'  ' * row.depth}{mark} #{row.node_id} {row.label}{preview}{heads}")
    return out


def transcript_lines(session: Session, event: ShowTranscript) -> list[str]:
    p = session.prompt
    names = {"user": p.user, "bot": p.bot}
    return [f"{names[t.role]}{p.separator} {t.text}" for t in event.turns if t.role in names]


def stats_line(stats: Stats, interrupted: bool) -> str:
    return format_stats(stats, interrupted)


# --- piped mode --------------------------------------------------------------------------------

def run_piped(session: Session, lines: Iterable[str], out: TextIO, err: TextIO,
              show_thinking: bool = False, verbose: bool = False) -> int:
    """Replies on `out`: the answer only, unless `show_thinking` (then `<think>...</think>`
    and a newline come first, as the model wrote them). `verbose`: each reply's end-to-end
    stats line on `err` after it (as llama-cli prints its timings to stderr), so `out` stays
    the text alone."""
    for line in lines:
        thinking = False
        for event in _run_command(session, line.rstrip("\r\n")):
            if isinstance(event, ThinkChunk) and show_thinking:
                out.write(("" if thinking else "<think>") + event.text)
                thinking = True
            elif isinstance(event, Chunk):
                if thinking:
                    out.write("</think>\n")
                    thinking = False
                out.write(event.text)
                out.flush()
            elif isinstance(event, ReplyEnd):
                out.write("</think>\n" if thinking else "\n")
                thinking = False
                out.flush()
                if verbose:
                    err.write(stats_line(event.stats, event.interrupted) + "\n")
                    err.flush()
            elif isinstance(event, ShowSettings):
                out.write("".join(f"{k}: {v}\n" for k, v in event.rows))
            elif isinstance(event, (Info, Problem)):
                err.write(("chatrwkv: " if isinstance(event, Problem) else "") + event.text + "\n")
                err.flush()
            elif isinstance(event, ShowHelp):
                out.write("".join(f"{u:<22} {h}\n" for u, h in help_rows()))
                out.write(C.OPTIONS_HELP + "\n")
            elif isinstance(event, ShowTree):
                out.write("".join(line + "\n" for line in tree_lines(event)))
            elif isinstance(event, ShowTranscript):
                out.write("".join(line + "\n" for line in transcript_lines(session, event)))
            elif isinstance(event, ExitRequested):
                return 0
    return 0


def _run_command(session: Session, line: str) -> Iterator[Event]:
    with ctrl_c_stops(session):
        yield from session.handle(C.parse(valid_text(line)))  # made valid where it enters


# --- interactive mode --------------------------------------------------------------------------

class Terminal:
    """The interactive chat. With `loading` (and the `prompt` it will use), the session is still
    loading on a thread: the prompt shows at once and the first command waits for the load."""

    def __init__(self, session: Session | None, console: Console | None = None,
                 loading: BackgroundLoad[Session] | None = None, prompt: Prompt | None = None):
        self.session = session
        self.loading = loading
        self.early_prompt = prompt
        self.console = console or Console(highlight=False)
        self.history: PrivateHistory | None = None

    def banner(self) -> None:
        if self.session is not None:
            self.model_lines()
        else:
            self.console.print(Text.assemble(("chatrwkv", "bold"), "  loading the model...",
                                             style="cyan"))
        p = self.session.prompt if self.session is not None else self.early_prompt
        self.console.print(Text(f"prompt '{p.name}': you are {p.user}, talking with {p.bot}. "
                                "+help lists commands, Ctrl-C stops a reply, Ctrl-D leaves.",
                                style="dim"))

    def model_lines(self) -> None:
        s = self.session
        describe = getattr(s.model, "describe", lambda: "model")()
        self.console.print(Text.assemble(("chatrwkv", "bold"), f"  {describe}", style="cyan"))
        if engine := getattr(s.model, "engine_path", None):
            self.console.print(Text(f"engine: {engine}", style="dim"))

    def finish_load(self) -> bool:
        """Wait for a load still running (the first command): True once the session is here;
        False after its error, printed as one line. Ctrl-C while waiting raises KeyboardInterrupt
        (the run leaves with 130: there is nothing to save yet)."""
        if self.session is not None:
            return True
        if not self.loading.done():
            self.console.print(Text("(waiting for the model to load)", style="dim"))
        # Ctrl-C leaves even where SIGINT came in ignored (a chat started by a background job),
        # as it stops a reply there (ctrl_c_stops)
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            self.session = self.loading.result()
        except ChatRWKVError as e:
            print_error(str(e))
            return False
        finally:
            signal.signal(signal.SIGINT, previous)
        self.model_lines()
        return True

    def show_help(self) -> None:
        table = Table(show_header=False, box=None, padding=(0, 2))
        for usage, text in help_rows():
            table.add_row(Text(usage, style="bold"), Text(text))
        self.console.print(table)
        self.console.print(Text(C.OPTIONS_HELP, style="dim"))
        self.console.print(Text("Alt+Enter (or Esc Enter) adds a line; a line of \"\"\" starts "
                                "and ends a block.", style="dim"))

    def show_settings(self, event: ShowSettings) -> None:
        table = Table(show_header=False, box=None, padding=(0, 2))
        for name, value in event.rows:
            table.add_row(Text(name, style="bold"), Text(terminal_safe(value)))
        self.console.print(table)

    def show_tree(self, event: ShowTree) -> None:
        root = Tree(Text("conversation", style="bold"))
        stack: list[Tree] = [root]
        for row in event.rows:
            del stack[row.depth + 1:]
            label = Text.assemble((f"#{row.node_id} {row.label} ", "dim"),
                                  terminal_safe(row.preview))
            if row.branches:
                label.append(f"  [{', '.join(row.branches)}]", style="cyan")
            if row.current:
                label.stylize("bold")
                label.append("  <- here", style="green")
            stack.append(stack[-1].add(label))
        self.console.print(root)
        self.console.print(Text("+goto N goes to node #N", style="dim"))

    def toolbar(self) -> str:
        s = self.session
        if s is None:
            state = ("the model did not load (Enter says why)" if self.loading.failed() else
                     "model ready" if self.loading.done() else "loading the model...")
            return f" {state} | prompt {self.early_prompt.name} "
        describe = getattr(s.model, "describe", lambda: "model")()
        think = f"think {s.think_mode()} | " if s.prompt.style == "g1" else ""
        system = "system on | " if s.prompt.system else ""
        return (f" {describe} | prompt {s.prompt.name} | {think}{system}branch {s.tree.branch} | "
                f"T {s.settings.temperature:g} top-p {s.settings.top_p:g} ")

    def render(self, events: Iterable[Event]) -> bool:
        """Print events; False when the user asked to leave."""
        out = self.console.file
        thinking = False  # a reply's thinking is on screen (dim) and its answer not yet
        for event in events:
            if isinstance(event, ReplyStart):
                if event.speaker:
                    out.write(terminal_safe(f"{event.speaker}{self.session.prompt.separator} "))
                out.flush()
            elif isinstance(event, ThinkChunk):
                # literal text in the dim style, streamed as it comes; the answer starts below
                self.console.print(Text(terminal_safe(event.text), style="dim"), end="",
                                   soft_wrap=True)
                out.flush()
                thinking = True
            elif isinstance(event, Chunk):
                if thinking:
                    out.write("\n")
                    thinking = False
                out.write(terminal_safe(event.text))  # literal: never markup, no escapes
                out.flush()
            elif isinstance(event, ReplyEnd):
                thinking = False
                out.write("\n")
                self.console.print(Text(stats_line(event.stats, event.interrupted), style="dim"))
                out.write("\n")
                out.flush()
            elif isinstance(event, Info):
                self.console.print(Text(terminal_safe(event.text), style="dim"))
            elif isinstance(event, Problem):
                self.console.print(Text(terminal_safe(event.text), style="bold red"))
            elif isinstance(event, ShowHelp):
                self.show_help()
            elif isinstance(event, ShowTree):
                self.show_tree(event)
            elif isinstance(event, ShowSettings):
                self.show_settings(event)
            elif isinstance(event, ShowTranscript):
                for line in transcript_lines(self.session, event):
                    self.console.print(Text(terminal_safe(line)))
            elif isinstance(event, ExitRequested):
                return False
        return True

    def prompt_session(self) -> PromptSession:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import InMemoryHistory
        from prompt_toolkit.key_binding import KeyBindings

        from .completion import ChatCompleter
        from .history import PrivateHistory

        keys = KeyBindings()

        @keys.add("escape", "enter")
        def _newline(event) -> None:
            event.current_buffer.insert_text("\n")

        history = InMemoryHistory()
        try:
            folder = home_dir()
            folder.mkdir(parents=True, exist_ok=True)
            history = self.history = PrivateHistory(str(folder / "history"))
        except (OSError, ChatRWKVError) as e:
            self.console.print(Text(f"(history not kept: {getattr(e, 'strerror', None) or e})",
                                    style="dim"))
        completer = ChatCompleter(
            sessions=lambda: list_sessions(self.session.states_folder if self.session else None),
            branches=lambda: self.session.tree.branches if self.session else [])
        return PromptSession(history=history, completer=completer, key_bindings=keys,
                             bottom_toolbar=self.toolbar, complete_while_typing=False,
                             enable_history_search=False)

    def read(self, prompt_session: PromptSession) -> str:
        """One input: a line, an Alt+Enter multi-line text, or a \"\"\" block (Ctrl-D in a
        block cancels the block, not the chat)."""
        p = self.session.prompt if self.session is not None else self.early_prompt
        # while loading, redraw twice a second so the toolbar says when the model is ready
        text = prompt_session.prompt(f"{p.user}{p.separator} ",
                                     refresh_interval=0.5 if self.session is None else 0)
        for note in self.history.take_notes() if self.history else ():
            self.console.print(Text(f"({note})", style="dim"))
        if text.strip() != BLOCK:
            return text
        lines = []
        try:
            while (line := prompt_session.prompt("... ")).strip() != BLOCK:
                lines.append(line)
        except EOFError:
            self.console.print(Text("block cancelled (nothing sent)", style="dim"))
            return ""
        return "\n".join(lines)

    def loop(self) -> int:
        self.banner()
        prompt_session = self.prompt_session()
        while True:
            try:
                line = self.read(prompt_session)
            except KeyboardInterrupt:
                continue  # Ctrl-C on the prompt clears the line
            except EOFError:
                return 0
            with quiet_keys():  # keys typed during a reply wait for the next prompt, unseen
                if not self.finish_load():
                    return 1
                if not self.render(_run_command(self.session, line)):
                    return 0


class HangUp(Exception):
    """The terminal closed (SIGHUP) or the process was asked to end (SIGTERM): leave through
    the autosave."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


def _on_signal(signum, frame):
    from prompt_toolkit.application import get_app_or_none

    app = get_app_or_none()
    if app is not None and app.is_running and not app.future.done():
        # leave the prompt through its own exit: an exception raised across prompt_toolkit's
        # event loop leaves a task behind that asyncio reports as a traceback on the way out
        app.exit(exception=HangUp(128 + signum))
        return
    raise HangUp(128 + signum)


def autosave(session: Session, resume_command: str = "chatrwkv --resume") -> None:
    """Save the session as this model's `last` (what `--resume` reads); a failure is one line,
    never a traceback, and a dead terminal (closed window) is not written to."""
    from .autosave import autosave as save_last

    saved, line = save_last(session)
    try:
        if not saved and line:
            print_error(line)
        elif saved and sys.stderr.isatty():
            print(f"session saved; `{resume_command}` continues it ({line})", file=sys.stderr)
    except OSError:
        pass  # the terminal is gone: the file is written, there is no one to tell


def _piped_lines() -> Iterable[str]:
    """stdin lines, with bytes that are not UTF-8 as U+FFFD (say so: replaced, not escaped)."""
    if sys.stdin is None:
        return ()
    if hasattr(sys.stdin, "reconfigure"):
        try:
            sys.stdin.reconfigure(errors="replace")
        except (ValueError, OSError):
            pass
    return sys.stdin


def run(session: Session | None, interactive: bool, save_at_exit: bool = True,
        resume_command: str = "chatrwkv --resume", show_thinking: bool = False,
        verbose: bool = False, loading: BackgroundLoad[Session] | None = None,
        prompt: Prompt | None = None) -> int:
    """The chat loop; the session is saved when it ends (Ctrl-D, +exit, end of input, SIGHUP,
    SIGTERM, Ctrl-C while piped input waits). Interactive only: with `loading` instead of a
    session, the prompt shows while the session loads (see Terminal)."""
    handled = [s for s in (getattr(signal, "SIGHUP", None), signal.SIGTERM) if s is not None]
    previous = {s: signal.signal(s, _on_signal) for s in handled}
    code = 0
    terminal = None
    try:
        if interactive:
            terminal = Terminal(session, loading=loading, prompt=prompt)
            code = terminal.loop()
        else:
            code = run_piped(session, _piped_lines(), sys.stdout, sys.stderr, show_thinking,
                             verbose)
    except HangUp as e:
        code = e.code
    except KeyboardInterrupt:  # Ctrl-C while piped mode waits for a line
        code = 130
    except OSError:  # the terminal went away under the prompt (EIO) or stdout closed
        code = 129
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        session = terminal.session if terminal is not None else session
        if save_at_exit and session is not None:  # None: left before the load ended
            autosave(session, resume_command)
    return code
