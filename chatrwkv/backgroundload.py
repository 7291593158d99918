"""The model loads on a thread while the terminal prompt is already on screen (issue 15: importing
torch and loading are most of a start; the user can type meanwhile). The first command waits for
the load; the load's error comes back in the waiting (main) thread, where the UI makes it one line.

Only the interactive terminal uses this: piped mode loads first, so its output never depends on
timing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

POLL_S = 0.1  # the waiting thread wakes this often, so Ctrl-C (main thread only) is taken at once


class BackgroundLoad(Generic[T]):
    """`build()` runs on a daemon thread from construction; `result()` waits for it and returns
    its value or raises what it raised. `then(value)` runs once, in the first thread that gets the
    value: for what is per thread (torch's thread count is an OpenMP setting of the thread that
    sets it)."""

    def __init__(self, build: Callable[[], T], then: Callable[[T], None] | None = None):
        self._build = build
        self._then = then
        self._finished = threading.Event()
        self._value: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="chatrwkv-load", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._build()
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread, raised there
            self._error = e
        finally:
            self._finished.set()

    def done(self) -> bool:
        return self._finished.is_set()

    def failed(self) -> bool:
        return self._finished.is_set() and self._error is not None

    def result(self) -> T:
        while not self._finished.wait(POLL_S):
            pass
        if self._error is not None:
            raise self._error
        if self._then is not None:
            then, self._then = self._then, None
            then(self._value)  # type: ignore[arg-type]
        return self._value  # type: ignore[return-value]
