"""The conversation saved when a chat ends, one per model, and `--resume` reading it back.

`last` is kept per model: `states/last/FINGERPRINT.session` (the weights' fingerprint, the same
one a session file is checked against), so a chat with another model never replaces it and
`--resume` after using another model still finds this model's conversation. A chat in which
nothing happened (the prompt only: start, then Ctrl-D) is not saved, so it never replaces a
conversation; before a save replaces one, the old file is kept as `FINGERPRINT.previous.session`.
A `states/last.session` written by an older chatrwkv is still read when this model has no
per-model file. `+save last` / `+load last` / `--resume last` all mean this model's file.

An autosave runs while the program exits: it never raises. If the session file cannot be
written (disk full, read-only folder, a bug), the transcript is written as JSON beside it when
possible, and the user gets one line saying what happened and where the text is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ChatRWKVError, StateFileError, first_line
from .sessionfile import AUTOSAVE, SUFFIX, atomic_write, session_path

if TYPE_CHECKING:
    from .session import Session

FOLDER = AUTOSAVE  # states/last/
PREVIOUS = ".previous"


def autosave_path(folder: Path, identity: dict[str, str]) -> Path:
    fingerprint = "".join(ch for ch in str(identity.get("fingerprint", "")) if ch.isalnum())
    return folder / FOLDER / ((fingerprint[:32] or "model") + SUFFIX)


def path_for(name: str, folder: Path, identity: dict[str, str], reading: bool = False) -> Path:
    """Where session NAME lives for this model: `last` is per model, other names are shared."""
    if name != AUTOSAVE:
        return session_path(name, folder)
    path = autosave_path(folder, identity)
    legacy = session_path(AUTOSAVE, folder)
    if reading and not os.path.lexists(path) and os.path.lexists(legacy):
        return legacy
    return path


def exists(name: str, folder: Path, identity: dict[str, str]) -> bool:
    return os.path.lexists(path_for(name, folder, identity, reading=True))


def worth_saving(session: Session) -> bool:
    """False for a chat where nothing happened (only its start node)."""
    return len(session.tree.nodes) > 1


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP are ignored while the autosave writes (a second or so for a
    big session): the save finishes, and no traceback lands on the way out."""
    names = ("SIGINT", "SIGTERM", "SIGHUP")
    previous = {}
    for name in names:
        sig = getattr(signal, name, None)
        if sig is not None:
            with contextlib.suppress(ValueError, OSError):  # not the main thread
                previous[sig] = signal.signal(sig, signal.SIG_IGN)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(sig, handler)


def autosave(session: Session) -> tuple[bool, str | None]:
    """Save the session as this model's `last`. Returns (saved, a line for the user or None).
    Never raises: it runs on the way out, where a traceback would be the last thing seen."""
    try:
        if not worth_saving(session):
            return False, None
        with signals_deferred():
            _keep_previous(autosave_path(session.states_folder, session.model.identity()))
            path = session.save_named(AUTOSAVE)  # this model's file (treecommands.py)
        return True, str(path)
    except KeyboardInterrupt:  # a Ctrl-C that came in just before the signals were deferred
        return False, "autosave skipped (interrupted); the previous `last` is kept"
    except Exception as e:  # noqa: BLE001 - the last line of defence on exit, see above
        why = str(e) if isinstance(e, ChatRWKVError) else f"{type(e).__name__}: {first_line(e)}"
        return False, f"autosave failed: {why}{_rescue(session)}"


def _keep_previous(path: Path) -> None:
    """A hard link to the file about to be replaced: free, and the atomic rename of the new file
    leaves it holding the old one (and `last` untouched if the save fails)."""
    if os.path.isfile(path) and not os.path.islink(path):
        previous = path.with_name(path.stem + PREVIOUS + SUFFIX)
        with contextlib.suppress(OSError):
            if os.path.lexists(previous):
                os.unlink(previous)
            os.link(path, previous)


def _rescue(session: Session) -> str:
    """Write the current transcript as JSON beside the session files; say where (or nothing)."""
    try:
        from .transcript import to_json

        turns = session.slots["chat"].transcript
        path = session.states_folder / FOLDER / "rescued.json"
        with signals_deferred():
            atomic_write(path, to_json(turns, session.prompt).encode("utf-8"))
        return f"; the transcript is in {path} (+import reads it)"
    except Exception:  # noqa: BLE001 - best effort on exit; the first failure was reported
        return ""


def resume(session: Session, name: str) -> str | None:
    """`--resume [NAME]`: load it. With no saved `last` for this model, start fresh and return
    the note to show; a missing other NAME, or a file refused, raises StateFileError."""
    fresh = "no saved conversation for this model yet: starting a new one"
    if name != AUTOSAVE:
        session.load_named(name)
        return None
    folder, identity = session.states_folder, session.model.identity()
    path = path_for(name, folder, identity, reading=True)
    if not os.path.lexists(path):
        session.start(session.prompt)
        return fresh
    try:
        session.load_named(name)
    except StateFileError:
        if path == autosave_path(folder, identity):
            raise
        session.start(session.prompt)  # an older chatrwkv's shared `last`, of another model
        return fresh
    return None


@dataclasses.dataclass(frozen=True)
class SavedLast:
    """One model's autosaved `last`, as `+sessions` lists it."""

    path: Path
    mine: bool               # this model's (what `--resume` reads now)
    model: str               # "RWKV v7.0 L12 D768" from the file's identity, "?" if unreadable
    model_path: str | None   # the checkpoint it was saved with (files from before 0.x: None)
    saved_at: float          # modification time


def _header(path: Path) -> dict[str, str]:
    """A session file's metadata (identity, model path), or {} when it cannot be read: the
    listing never fails on a damaged file (loading it says what is wrong)."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as f:
            return dict(f.metadata() or {})
    except Exception:  # noqa: BLE001 - a listing shows what it can; the load gives the error
        return {}


def saved_lasts(folder: Path, identity: dict[str, str]) -> list[SavedLast]:
    """Every model's `states/last/FINGERPRINT.session` (not the `.previous` copies), this
    model's first, then the newest first."""
    mine = autosave_path(folder, identity)
    out = []
    for path in (folder / FOLDER).glob("*" + SUFFIX):
        if path.stem.endswith(PREVIOUS) or not path.is_file():
            continue
        meta = _header(path)
        try:
            ident = json.loads(meta.get("identity", "{}"))
            model = f"RWKV v{ident['version']} L{ident['n_layer']} D{ident['n_embd']}"
        except (ValueError, TypeError, KeyError):
            model = "?"
        with contextlib.suppress(OSError):
            out.append(SavedLast(path, path == mine, model, meta.get("model_path") or None,
                                 path.stat().st_mtime))
    return sorted(out, key=lambda s: (not s.mine, -s.saved_at))


def resume_hint(model_path: str | None, demo: Path | None = None) -> str:
    """The command that continues a model's `last` (no --model for the demo model)."""
    if model_path is None:
        return "chatrwkv --model PATH --resume"
    if demo is not None and os.path.realpath(model_path) == os.path.realpath(demo):
        return "chatrwkv --resume"
    return f"chatrwkv --model {shlex.quote(model_path)} --resume"


def describe_last(last: SavedLast, demo: Path | None = None) -> str:
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(last.saved_at))
    whose = "this model" if last.mine else last.model
    name = f", {Path(last.model_path).name}" if last.model_path else ""
    how = "`--resume` continues it" if last.mine else f"`{resume_hint(last.model_path, demo)}`"
    return f"last ({whose}{name}, saved {when}): {how}"


__all__ = ["StateFileError", "autosave", "autosave_path", "describe_last", "path_for", "resume",
           "saved_lasts"]
