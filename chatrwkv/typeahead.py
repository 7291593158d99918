"""Keys typed while a reply is printed: not echoed into the reply, kept for the next prompt.

Between two prompts the terminal is in its ordinary (canonical) mode, so the line discipline
echoes every key where the cursor is: in the middle of the model's text. `quiet_keys` turns
the echo off for that time and nothing else: the keys stay in the terminal's input queue and
appear at the next prompt, ready to edit or send, as a shell keeps what was typed while a
command ran. Discarding them would lose a message typed while reading a long reply; keeping
them unseen until the prompt is what bash, zsh and python's REPL do. Canonical mode stays on
(backspace still edits the queued line) and so does ISIG, so Ctrl-C still stops the reply.
The terminal chat also keeps the echo off from its start to its end (cli.main), so keys typed
while torch imports and the model loads show once, at the first prompt, not also where the
cursor happened to be (prompts run in raw mode, where the echo flag plays no part).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO


def _nothing() -> None:
    pass


@contextmanager
def quiet_keys(stream: TextIO | None = None) -> Iterator[Callable[[], None]]:
    """No echo of typed keys on the terminal `stream` (default stdin) inside the block; a no-op
    where it is not a terminal or termios is missing (Windows). Yields a function that gives
    the echo back at once, for a block that leaves through os._exit (no `finally` runs)."""
    stream = sys.stdin if stream is None else stream
    try:
        import termios
    except ImportError:
        yield _nothing
        return
    try:
        fd = stream.fileno()
        saved = termios.tcgetattr(fd)
    except (AttributeError, ValueError, OSError, termios.error):  # no terminal behind it
        yield _nothing
        return
    quiet = list(saved)
    quiet[3] = saved[3] & ~(termios.ECHO | termios.ECHONL)
    try:
        termios.tcsetattr(fd, termios.TCSANOW, quiet)
    except (termios.error, OSError):
        yield _nothing
        return

    def restore() -> None:
        try:
            # TCSANOW, not TCSAFLUSH: that would throw the typed keys away
            termios.tcsetattr(fd, termios.TCSANOW, saved)
        except (termios.error, OSError):
            pass  # the terminal is gone (hang-up): nothing to restore

    try:
        yield restore
    finally:
        restore()
