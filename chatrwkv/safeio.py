"""Reading and writing files a user names, without hanging, exhausting memory or crashing.

Every path that comes from the user (`+import`, `--tokenizer`, `+export`, a prompt file) goes
through here, so the rules live in one place:
- `~user` that names no user is one clear line, not a RuntimeError from `Path.expanduser`;
- only regular files are read: a FIFO would block forever (and ignore Ctrl-C), `/dev/zero`
  would be read until memory runs out. The file is opened non-blocking and checked with `fstat`
  on the open descriptor (no window between the check and the read), then read with a byte limit
  (`stat` sizes lie for special files);
- a file is written only where a regular file or nothing is: never onto a symbolic link (which
  an atomic rename would silently replace) or a device.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import ChatRWKVError


class FileRefused(ChatRWKVError):
    """A path that cannot be read or written safely; the message is one line for the user."""


def expand(spec: str | Path) -> Path:
    """`Path(spec).expanduser()`, with an unknown `~user` as a one-line error."""
    try:
        return Path(spec).expanduser()
    except RuntimeError:
        raise FileRefused(f"{spec}: cannot expand '~' (no such user or no home directory)") \
            from None


def read_regular(path: str | Path, limit: int, what: str = "file") -> bytes:
    """The bytes of a regular file of at most `limit` bytes; FileRefused for anything else."""
    path = expand(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise FileRefused(f"{path}: no such file") from None
    except OSError as e:
        raise FileRefused(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise FileRefused(f"{path}: is a directory, not a {what}")
        if not stat.S_ISREG(mode):
            raise FileRefused(f"{path}: not a regular file (a device, FIFO or socket); "
                              f"refused as a {what}")
        chunks, total = [], 0
        while total <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as e:
        raise FileRefused(f"{path}: cannot read ({e.strerror or e})") from None
    finally:
        os.close(fd)
    if total > limit:
        raise FileRefused(f"{path}: too large for a {what} (over {limit >> 20} MB)"
                          if limit >= 1 << 20 else f"{path}: too large for a {what}")
    return b"".join(chunks)


def check_regular(path: str | Path, what: str = "file") -> Path:
    """`path` if it names a regular file (following links); FileRefused otherwise. For readers
    that open the file themselves (torch.load, safetensors' mmap)."""
    path = expand(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise FileRefused(f"{path}: no such file") from None
    except OSError as e:
        raise FileRefused(f"{path}: cannot read ({e.strerror or e})") from None
    if stat.S_ISDIR(mode):
        raise FileRefused(f"{path}: is a directory, not a {what}")
    if not stat.S_ISREG(mode):
        raise FileRefused(f"{path}: not a regular file (a device, FIFO or socket); "
                          f"refused as a {what}")
    return path


def check_write_target(path: Path) -> None:
    """Refuse to replace a symbolic link or a special file: an atomic rename would swap the link
    itself for a regular file (breaking it without a word), and a device is no place for text."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise FileRefused(f"cannot write {path}: {e.strerror or e}") from None
    if stat.S_ISLNK(st.st_mode):
        raise FileRefused(f"{path} is a symbolic link: not replaced; write to its target "
                          "or to another name")
    if not stat.S_ISREG(st.st_mode):
        raise FileRefused(f"{path} is not a regular file: not replaced")
