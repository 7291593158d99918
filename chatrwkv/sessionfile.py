"""Session files: the whole conversation tree in one safetensors file, resumed without prefill.

Where: `$CHATRWKV_HOME/states/NAME.session` (default `~/.local/state/chatrwkv/states`, or
`$XDG_STATE_HOME/chatrwkv/states`): a per-user directory, so a session follows the user, not the
directory chat was started in. NAME is a plain word ([A-Za-z0-9_.-], not starting with '.');
anything else, `../x` included, is refused, so no path leaves `states/`.

Layout (format `chatrwkv-session`, version 2; version 1, written only by unreleased code, is
refused with one line, like a file from a newer version):
    tensors   snap{i}.{field}, snap{i}.logits   state + logits of the current node's snapshots
                                                and of every branch head (the ones a resume or a
                                                switch needs at once), fp32
              init.{field}                      a mounted state-tuning start (if any)
              rng                               the sampler's torch.Generator state
              tokens         int32 [T]          every snapshot's new token ids, end to end
              snap.tokens    int64 [S, 4]       per snapshot row: anchor, start, stop, length:
                                                tokens = tokens(anchor) + tokens[start:stop]
              snap.turns     int64 [S, 4]       the same for the transcript (over body.roles/texts)
              snap.settings  int64 [S]          index into body.settings
              node.parent, node.prompt [N], node.slots [N, K]   the tree (-1: none)
    metadata  identity (the model's: version, shapes, weight fingerprint) and body (JSON):
              tokenizer, prompts, settings, slot names, node labels and previews, the turns'
              roles and texts, stored rows, branches, current node, redo stack (and the other
              branches' redo stacks, `parked_redo`, optional: older files have none), and the
              session's settings for the rest of the chat (`chat_settings`: sampling and
              chatsettings.ChatOptions, as `+set` leaves them; restored by --resume).
A row that continues the row written just before extends its span, so the snapshots of a linear
conversation share one span and decoding any of them is one slice. Resuming reads the tables and
decodes the current node only; every index and length is checked with a few tensor operations,
so a damaged file is refused at once, and nothing runs once per turn: other nodes are built, and
their hollow snapshots decoded, when first visited (see conversation.py), and a file saved again
copies the spans of rows it never decoded. Only the stored snapshots carry a state, so a file
holds a handful of states whatever the conversation's length.
Writes are atomic: temp file in the same directory, fsync, rename. This module writes; reading
and the whole-file check are in sessionread.py, the paths in sessionpaths.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch

from .chatsettings import ChatOptions
from .conversation import Conversation, Hollow, longest_prefix
from .errors import StateFileError  # noqa: F401 - re-exported (callers catch it from here)
from .prompts import Prompt
from .sampling import SamplingSettings
from .sessionpaths import (  # noqa: F401 - re-exported: the paths were defined here first
    _NAME,
    AUTOSAVE,
    SUFFIX,
    atomic_write,
    home_dir,
    list_sessions,
    session_path,
    states_dir,
)

if TYPE_CHECKING:
    from .events import Snapshot
    from .sessionread import FileTable, Loaded


class SessionLike(Protocol):
    """What a session file is written from and read for (the session module sits above this
    one and passes itself)."""

    model: object
    tokenizer: object
    tree: Conversation
    generator: torch.Generator
    initial_state: object | None
    mounted_name: str | None
    settings: SamplingSettings
    options: ChatOptions

FORMAT = "chatrwkv-session"
FORMAT_VERSION = 2
_GRAIN = 32768  # torch's internal parallel grain size
REQUIRED_SLOTS = ("chat_init", "chat")
GENERATED_FROM = ("chat_pre", "gen_0", "gen_1")


# --- writing -----------------------------------------------------------------------------------

def encode_session(session: SessionLike) -> bytes:
    from safetensors.torch import save

    from .events import Snapshot

    tree = session.tree
    keep_state = {id(s) for n in {tree.current, *tree.branches.values()}
                  for s in tree.nodes[n].slots.values()}
    w = _Writer(tree)
    prompts: list[Prompt] = []
    slot_names: list[str] = []
    parents, prompt_rows, slot_rows, labels, previews = [], [], [], [], []
    for node_id in range(len(tree.nodes)):
        node = tree.nodes[node_id]
        if node.prompt not in prompts:
            prompts.append(node.prompt)
        near = [i for n in (node.parent, node.id) if n is not None
                for s in tree.nodes[n].slots.values() if (i := w.row_of(s)) is not None]
        row = {}
        for name, slot in node.slots.items():
            i = row[name] = w.put(slot, near)
            near.append(i)
            if isinstance(slot, Snapshot) and id(slot) in keep_state and i not in w.stored:
                w.stored.append(i)
                w.tensors.update({f"snap{i}.{k}": v for k, v in slot.state.tensors().items()})
                if slot.logits is not None:
                    w.tensors[f"snap{i}.logits"] = slot.logits.float()
            if name not in slot_names:
                slot_names.append(name)
        parents.append(-1 if node.parent is None else node.parent)
        prompt_rows.append(prompts.index(node.prompt))
        slot_rows.append(row)
        labels.append(node.label)
        previews.append(node.preview)
    tensors = w.tensors
    tensors["node.parent"] = torch.tensor(parents, dtype=torch.int64)
    tensors["node.prompt"] = torch.tensor(prompt_rows, dtype=torch.int64)
    tensors["node.slots"] = torch.tensor([[r.get(k, -1) for k in slot_names] for r in slot_rows],
                                         dtype=torch.int64).reshape(len(slot_rows), -1)
    tensors.update(w.tables())
    if session.initial_state is not None:
        tensors.update({f"init.{k}": v for k, v in session.initial_state.tensors().items()})
    tensors["rng"] = session.generator.get_state()
    body = {"tokenizer": session.tokenizer.name, "state_kind": _state_spec(session.model)[0].kind,
            "prompts": [dataclasses.asdict(p) for p in prompts],
            "settings": [dataclasses.asdict(s) for s in w.settings], "slot_names": slot_names,
            "labels": labels, "previews": previews, "roles": w.roles, "texts": w.texts,
            "stored": w.stored, "branches": tree.branches, "branch": tree.branch,
            "current": tree.current, "redo": tree.redo_stack,
            # the other branches' redo stacks (+switch keeps one per branch); files without
            # this key (written before it existed) load with none parked
            "parked_redo": {k: v for k, v in tree.parked_redo.items()
                            if v and k != tree.branch and k in tree.branches},
            "mounted": session.mounted_name,
            "chat_settings": {**dataclasses.asdict(session.settings),
                              **dataclasses.asdict(session.options)}}
    tensors = _unshared(tensors)
    meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION),
            "identity": json.dumps(session.model.identity(), sort_keys=True),
            # which checkpoint, for `+sessions` to name another model's `last`; not checked
            "model_path": os.path.abspath(session.model.path) if getattr(session.model, "path", None) else "",
            "body": json.dumps(body, ensure_ascii=False, separators=(",", ":"))}
    return save(tensors, metadata=meta)


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, and no two sharing memory: safetensors refuses tensors that share
    storage ("Some tensors share memory"), and two stored snapshots can share one (a node
    rebuilt from a kept snapshot of the same length takes its state as it is; a mounted start is
    both `init` and the zero snapshot's state)."""
    out, seen = {}, set()
    for k, v in tensors.items():
        v = v.detach().to("cpu").contiguous()
        storage = v.untyped_storage().data_ptr()
        if storage in seen:
            v = v.clone()
        seen.add(v.untyped_storage().data_ptr())
        out[k] = v
    return out


class _Writer:
    """Snapshot rows: each one's new token ids and turns appended to the flat `tokens` / turn
    lists as a delta on an earlier row (its anchor). A row that extends the last row written
    extends that row's span instead, so a linear conversation is one span and decoding any of its
    snapshots is one slice. Rows read from a session file are copied span by span, undecoded."""

    def __init__(self, tree: Conversation):
        self.twins, self.prefix_of = tree.twins, tree.prefix_of
        self.index: dict[object, int] = {}
        self.objects: list[Snapshot | Hollow] = []
        self.tok_rows: list[list[int]] = []    # anchor, start, stop, length
        self.turn_rows: list[list[int]] = []   # the same for the transcript
        self.parts: list[torch.Tensor] = []
        self.pending: list[int] = []  # new token ids, one torch.tensor() for all of them
        self.n_tok = 0
        self.roles: list[str] = []
        self.texts: list[str] = []
        self.settings: list[SamplingSettings] = []
        self._setting_index: dict[SamplingSettings, int] = {}
        self.setting_rows: list[int] = []
        self.stored: list[int] = []
        self.tensors: dict[str, torch.Tensor] = {}

    def _source(self, obj: Snapshot | Hollow) -> tuple[FileTable, int] | None:
        from .sessionread import FileTable  # a file's rows, copied without decoding

        if isinstance(obj, Hollow) and isinstance(obj.source, FileTable):
            return obj.source, obj.row
        twin = self.twins.get(id(obj))
        if twin is not None and twin[0] is obj and isinstance(twin[1].source, FileTable):
            return twin[1].source, twin[1].row
        return None

    def _key(self, obj: Snapshot | Hollow) -> object:
        """One row per content: a snapshot and the hollows made of it share their tuples."""
        src = self._source(obj)
        if src is not None:
            return id(src[0]), src[1]
        return id(obj.tokens), id(obj.transcript), obj.settings

    def row_of(self, obj: Snapshot | Hollow) -> int | None:
        return self.index.get(self._key(obj))

    def put(self, obj: Snapshot | Hollow, near: list[int]) -> int:
        """The row of `obj`, written first if new (after the anchors it needs)."""
        pending = [obj]
        while True:  # a file row's anchors first, deepest first; no recursion
            src = self._source(pending[-1])
            if src is None:
                break
            tok_anchor, _, turn_anchor, *_ = src[0].origin(src[1])
            todo = [a for a in (tok_anchor, turn_anchor)
                    if a is not None and self.row_of(a) is None
                    and all(a is not p for p in pending)]
            if not todo:
                break
            pending.extend(todo)
        for item in reversed(pending):
            if self.row_of(item) is None:
                self._add(item, near if item is obj else [])
        return self.index[self._key(obj)]

    def _add(self, obj: Snapshot | Hollow, near: list[int]) -> None:
        src = self._source(obj)
        if src is not None:
            tok_anchor, delta, turn_anchor, roles, texts, n_tok, n_turn = src[0].origin(src[1])
            tok_at = -1 if tok_anchor is None else self.index[self._key(tok_anchor)]
            turn_at = -1 if turn_anchor is None else self.index[self._key(turn_anchor)]
        else:
            tok_at, delta, turn_at, roles, texts = self._delta(obj, near)
            n_tok, n_turn = len(obj.tokens), len(obj.transcript)
        i = len(self.objects)
        self.index[self._key(obj)] = i
        self.objects.append(obj)
        self.tok_rows.append(_row(self.tok_rows, tok_at, self.n_tok, len(delta), n_tok))
        if isinstance(delta, torch.Tensor):  # a file row's span, copied as it is
            self._flush()
            self.parts.append(delta)
        else:
            self.pending.extend(delta)
        self.n_tok += len(delta)
        self.turn_rows.append(_row(self.turn_rows, turn_at, len(self.roles), len(roles), n_turn))
        self.roles.extend(roles)
        self.texts.extend(texts)
        settings = obj.settings
        if settings not in self._setting_index:
            self._setting_index[settings] = len(self.settings)
            self.settings.append(settings)
        self.setting_rows.append(self._setting_index[settings])

    def _delta(self, obj: Snapshot | Hollow, near: list[int]):
        """Token ids and turns as a delta on the longest nearby row that is a prefix."""
        tokens = obj.tokens
        candidates = {j: self.objects[j] for j in near}
        known = self.prefix_of.get(id(tokens))
        base = -1
        if known is not None and known[0] is tokens:  # recorded with its turn: no comparison
            base = next((j for j, o in candidates.items()
                         if _decoded_tokens(o) is known[1]), -1)
        if base < 0:
            found = longest_prefix(tokens, [o.tokens for o in candidates.values()])
            base = next((j for j, o in candidates.items() if o.tokens is found), -1)
        delta = tokens[self.tok_rows[base][3]:] if base >= 0 else tokens
        turn_base, keep = -1, 0
        if base >= 0:
            bt = self.objects[base].transcript
            if obj.transcript[:len(bt)] == bt:
                turn_base, keep = base, len(bt)
        turns = obj.transcript[keep:]
        return base, delta, turn_base, [t.role for t in turns], [t.text for t in turns]

    def _flush(self) -> None:
        if self.pending:
            self.parts.append(torch.tensor(self.pending, dtype=torch.int32))
            self.pending = []

    def tables(self) -> dict[str, torch.Tensor]:
        self._flush()
        flat = torch.cat(self.parts) if self.parts else torch.zeros(0, dtype=torch.int32)
        return {"tokens": flat,
                "snap.tokens": torch.tensor(self.tok_rows, dtype=torch.int64).reshape(-1, 4),
                "snap.turns": torch.tensor(self.turn_rows, dtype=torch.int64).reshape(-1, 4),
                "snap.settings": torch.tensor(self.setting_rows, dtype=torch.int64)}


def _row(rows: list[list[int]], anchor: int, end: int, n_new: int, length: int) -> list[int]:
    """[anchor, start, stop, length] for `n_new` items appended at `end` after row `anchor`; a row
    whose span ends at `end` is extended instead, so a chain of turns stays one span."""
    a = rows[anchor] if anchor >= 0 else None
    if a is not None and a[2] == end:
        return [a[0], a[1], end + n_new, length]
    return [anchor, end, end + n_new, length]


def _decoded_tokens(obj: Snapshot | Hollow) -> tuple[int, ...] | None:
    return None if isinstance(obj, Hollow) and not obj.decoded else obj.tokens


def save_session(session: SessionLike, path: Path) -> int:
    """Write `session` to `path` atomically; returns the file size in bytes."""
    data = encode_session(session)
    remove_stale_temps(path.parent)
    atomic_write(path, data)
    return len(data)


STALE_TEMP_SECONDS = 600  # a save writes its temp file in seconds; one this old was killed


def remove_stale_temps(folder: Path, now: float | None = None) -> int:
    """Delete `.NAME.session.*.tmp` files that a killed save left behind (up to the size of a
    session each); a temp file younger than STALE_TEMP_SECONDS may be another chat's save in
    progress and is kept. Returns how many were removed."""
    import time

    now = time.time() if now is None else now
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        name = entry.name
        if not (name.startswith(".") and name.endswith(".tmp") and f"{SUFFIX}." in name):
            continue
        try:
            if entry.is_file(follow_symlinks=False) and \
                    now - entry.stat(follow_symlinks=False).st_mtime > STALE_TEMP_SECONDS:
                os.unlink(entry.path)
                removed += 1
        except OSError:
            continue
    return removed


_SPECS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _state_spec(model) -> tuple[type, dict[str, torch.Size], torch.device,
                                dict[str, torch.dtype]]:
    """The model's state class, field shapes and device, from one zero state per model (a 1.5B
    model's is 13 MB: allocating it at every resume would cost more than the rest)."""
    try:
        spec = _SPECS.get(model)
    except TypeError:  # not weak-referenceable: no cache
        spec = None
    if spec is None:
        zero = model.zero_state()
        spec = (type(zero), {k: v.shape for k, v in zero.tensors().items()}, zero.device,
                {k: v.dtype for k, v in zero.tensors().items()})
        with contextlib.suppress(TypeError):
            _SPECS[model] = spec
    return spec


def load_session(session: SessionLike, path: Path) -> Loaded:
    """Read and check a session file (sessionread.py: the whole file is checked before anything
    of the chat is touched)."""
    from .sessionread import load_session as read

    return read(session, path)
