"""Where session files live and how one is written: no torch here, so the terminal UI can use
the folder (history, completion of names) before the model is loaded.

`$CHATRWKV_HOME/states/NAME.session` (default `~/.local/state/chatrwkv/states`, or
`$XDG_STATE_HOME/chatrwkv/states`); NAME is a plain word, so no path leaves `states/`.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from .errors import StateFileError
from .safeio import check_write_target, expand

SUFFIX = ".session"
AUTOSAVE = "last"  # what Ctrl-D / +exit / a closed terminal write, and `--resume` reads
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")


def home_dir() -> Path:
    """$CHATRWKV_HOME, else $XDG_STATE_HOME/chatrwkv, else ~/.local/state/chatrwkv."""
    if home := os.environ.get("CHATRWKV_HOME"):
        return expand(home)
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "chatrwkv"


def states_dir() -> Path:
    return home_dir() / "states"


def session_path(name: str, folder: Path | None = None) -> Path:
    """`states/NAME.session`; refuses a name that is not a plain word."""
    if not _NAME.fullmatch(name):
        raise StateFileError(f"bad session name '{name}': use letters, digits, '-', '_' and '.' "
                             "(at most 64, not starting with '.')")
    return (folder or states_dir()) / (name + SUFFIX)


def list_sessions(folder: Path | None = None) -> list[str]:
    folder = folder or states_dir()
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(SUFFIX)] for p in folder.glob("*" + SUFFIX))


def atomic_write(path: Path, data: bytes) -> None:
    """Temp file beside `path`, fsync, rename: a crash leaves the old file or the new one."""
    check_write_target(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise StateFileError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise StateFileError(f"cannot write {path}: {e.strerror or e}; the old file is kept") \
            from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
