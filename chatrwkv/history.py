"""The prompt's input history file: private, and never a reason for the chat to stop.

prompt_toolkit's FileHistory creates the file world-readable (0644, while session files are
0600), opens it with a blocking `open` (a FIFO there hangs the chat), and lets a write error (a
full disk while typing) escape from `prompt()` as a traceback. This one creates and keeps the
file 0600, reads only a regular file, and on a write error stops writing with one note (shown by
the UI after the prompt returns) while the chat goes on.
"""

from __future__ import annotations

import datetime
import os
import stat

from prompt_toolkit.history import FileHistory

from .safeio import FileRefused, read_regular
from .textin import valid_text

MAX_HISTORY_BYTES = 16 << 20  # a history past this is not loaded (the chat still starts)


class PrivateHistory(FileHistory):
    def __init__(self, filename: str) -> None:
        super().__init__(filename)
        self.notes: list[str] = []
        self.broken = False

    def _fail(self, why: str) -> None:
        if not self.broken:
            self.broken = True
            self.notes.append(f"history not kept: {why}")

    def take_notes(self) -> list[str]:
        notes, self.notes = self.notes, []
        return notes

    def load_history_strings(self):
        if not os.path.lexists(self.filename):
            return []
        try:
            data = read_regular(self.filename, MAX_HISTORY_BYTES, "history file")
        except FileRefused as e:
            self._fail(str(e))
            return []
        strings: list[str] = []
        lines: list[str] = []
        for raw in data.splitlines(keepends=True):
            line = raw.decode("utf-8", errors="replace")
            if line.startswith("+"):
                lines.append(line[1:])
            else:
                if lines:
                    strings.append("".join(lines)[:-1])
                lines = []
        if lines:
            strings.append("".join(lines)[:-1])
        return reversed(strings)  # newest first, as FileHistory gives them

    def store_string(self, string: str) -> None:
        if self.broken:
            return
        text = f"\n# {datetime.datetime.now()}\n" + "".join(
            f"+{line}\n" for line in valid_text(string).split("\n"))
        try:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NONBLOCK", 0)
            fd = os.open(self.filename, flags, 0o600)
            try:
                st = os.fstat(fd)
                if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() \
                        and stat.S_IMODE(st.st_mode) & 0o077:
                    os.fchmod(fd, 0o600)  # a history file from before was 0644
                data = text.encode("utf-8")
                while data:
                    data = data[os.write(fd, data):]
            finally:
                os.close(fd)
        except OSError as e:
            self._fail(e.strerror or str(e))
