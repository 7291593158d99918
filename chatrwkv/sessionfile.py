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
Writes are atomic: temp file in the same directory, fsync, rename.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import weakref
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch

from .chatsettings import ChatOptions, SettingError, apply_setting
from .conversation import Conversation, Hollow, Node, longest_prefix
from .errors import ChatRWKVError, StateFileError
from .prompts import Prompt
from .safeio import FileRefused, check_regular
from .sampling import SamplingSettings, settings_from_dict
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
from .textin import is_valid_text

if TYPE_CHECKING:
    from .events import Snapshot, Turn


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

    def _source(self, obj: Snapshot | Hollow) -> tuple[_Table, int] | None:
        if isinstance(obj, Hollow) and isinstance(obj.source, _Table):
            return obj.source, obj.row
        twin = self.twins.get(id(obj))
        if twin is not None and twin[0] is obj and isinstance(twin[1].source, _Table):
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


# --- reading -----------------------------------------------------------------------------------

@dataclasses.dataclass
class Loaded:
    tree: Conversation
    rng: torch.Tensor
    initial_state: object | None
    mounted_name: str | None
    settings: tuple[SamplingSettings, ChatOptions] | None = None  # None: an older file


def _chat_settings(saved: object) -> tuple[SamplingSettings, ChatOptions] | None:
    """The saved settings, each checked as `+set` checks it (ValueError: a damaged file)."""
    if saved is None:
        return None
    if not isinstance(saved, dict):
        raise TypeError("chat_settings: a table expected")
    sampling, options = SamplingSettings(), ChatOptions()
    for key, value in saved.items():
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise TypeError(f"chat_settings.{key}: a value expected")
        try:
            sampling, options, _ = apply_setting(sampling, options, str(key), str(value))
        except SettingError as e:
            raise ValueError(str(e)) from None
    return sampling, options


def load_session(session: SessionLike, path: Path) -> Loaded:
    """Read and check a session file for `session`'s model; changes nothing in `session`."""
    from safetensors import SafetensorError, safe_open

    if not os.path.lexists(path):
        raise StateFileError(f"no saved session '{path.stem}' (in {path.parent})")
    try:
        check_regular(path, "session file")
    except FileRefused as e:
        raise StateFileError(str(e)) from None
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not iterable
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as e:
        raise StateFileError(f"{path}: not a readable session file ({str(e)[:120]})") from None
    if meta.get("format") != FORMAT:
        raise StateFileError(f"{path}: not a chatrwkv session file")
    try:
        version = int(meta.get("format_version", "0"))
    except ValueError:
        version = 0
    if version > FORMAT_VERSION:
        raise StateFileError(f"{path}: written by a newer chatrwkv (session format {version}); "
                             "please upgrade")
    if version < FORMAT_VERSION:  # format 1 was only ever written by unreleased code
        raise StateFileError(f"{path}: session format {version} is from a development version "
                             f"of chatrwkv and no longer read (this one reads {FORMAT_VERSION})")
    mine = session.model.identity()
    try:
        theirs = json.loads(meta.get("identity", "{}"))
        if theirs != mine:
            diff = sorted(k for k in set(theirs) | set(mine) if theirs.get(k) != mine.get(k))
            raise StateFileError(f"{path}: saved with another model (differs in "
                                 f"{', '.join(diff)}); the current session is kept")
        return _decode(session, json.loads(meta["body"]), tensors)
    except ChatRWKVError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure to decode untrusted data is damage;
        # nothing of the session was touched, and every check runs here, before `Loaded`
        # exists, so a file that passes cannot fail later (a node built, +path, +save)
        raise StateFileError(f"{path}: damaged session file ({type(e).__name__}: "
                             f"{str(e)[:80]})") from None


def _decode(session: SessionLike, body: dict, tensors: dict[str, torch.Tensor]) -> Loaded:
    """The tree, with only the stored snapshots decoded: nothing here runs once per turn."""
    from .events import Snapshot

    state_class, shapes, device, dtypes = _state_spec(session.model)

    def state_from(prefix: str):
        parts = {k: tensors[f"{prefix}.{k}"] for k in shapes}
        for k, v in parts.items():
            if v.shape != shapes[k]:
                raise ValueError(f"{prefix}.{k} has shape {list(v.shape)}")
            _require(v.dtype == dtypes[k] and (not v.is_floating_point()
                                               or bool(torch.isfinite(v).all())),
                     f"{prefix}.{k}: finite values of the state's dtype expected")
        return state_class(**{k: v.to(device) for k, v in parts.items()})

    def logits_from(j: int):
        logits = tensors.get(f"snap{j}.logits")
        if logits is None:  # only a snapshot of no tokens has no logits (nothing was read)
            _require(table.n_tokens(j) == 0, f"snap{j}.logits missing")
            return None
        _require(logits.dtype == torch.float32 and tuple(logits.shape) == (vocab,)
                 and bool(torch.isfinite(logits).all()), f"snap{j}.logits")
        return logits.to(device)

    _require(isinstance(body, dict), "body")
    _require(isinstance(body["tokenizer"], str), "tokenizer")
    if body["tokenizer"] != session.tokenizer.name:
        raise StateFileError(f"session uses the {body['tokenizer']} tokenizer, "
                             f"this chat the {session.tokenizer.name} one")
    vocab = session.model.config.vocab_size
    table = _Table(body, tensors, vocab)
    tree = Conversation(session.tree.max_live)
    _require(isinstance(body["stored"], list) and len(set(map(_int_or_none, body["stored"])))
             == len(body["stored"]), "stored rows")
    for j in body["stored"]:
        if not (_is_int(j) and 0 <= j < table.n_rows):
            raise ValueError("stored row out of range")
        twin = table.hollow(j)
        snap = Snapshot(state_from(f"snap{j}"), logits_from(j),
                        twin.tokens, twin.transcript, twin.settings)
        table.snapshots[j] = snap
        tree.twins[id(snap)] = (snap, twin)
    tree.adopt(table.n_nodes, table.node)
    branches, branch = body["branches"], body["branch"]
    _require(isinstance(branches, dict) and all(
        isinstance(k, str) and _NAME.fullmatch(k) and _is_int(v) for k, v in branches.items())
        and isinstance(branch, str) and branch in branches, "branches")
    _require(_is_int(body["current"]) and isinstance(body["redo"], list)
             and all(map(_is_int, body["redo"])), "current node and redo stack")
    _require(body.get("mounted") is None or isinstance(body["mounted"], str), "mounted")
    parked = body.get("parked_redo", {})
    _require(isinstance(parked, dict) and all(
        k in branches and k != branch and isinstance(v, list) and all(map(_is_int, v))
        for k, v in parked.items()), "parked redo stacks")
    tree.branches = dict(branches)
    tree.branch = branch
    tree.current = body["current"]
    tree.redo_stack = list(body["redo"])
    tree.parked_redo = {k: list(v) for k, v in parked.items()}
    heads = {tree.current, *tree.branches.values(), *tree.redo_stack,
             *chain.from_iterable(tree.parked_redo.values())}
    if any(n not in tree.nodes for n in heads):
        raise ValueError("node index out of range")
    # the sampler's state: set on a scratch generator, so a bad one fails here, not after the
    # tree was swapped in
    torch.Generator().set_state(tensors["rng"])
    for node_id in {tree.current, *tree.branches.values()}:
        tree.live[node_id] = None
        tree.holding.add(node_id)
    initial = state_from("init") if f"init.{next(iter(shapes))}" in tensors else None
    return Loaded(tree, tensors["rng"], initial, body.get("mounted"),
                  _chat_settings(body.get("chat_settings")))


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


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(what)


def _is_int(x: object) -> bool:
    return type(x) is int


def _int_or_none(x: object) -> int | None:
    return x if type(x) is int else None


def _strings(items: object) -> bool:
    """A list of valid strings; C-level calls only (no Python call per item: resume cost)."""
    return isinstance(items, list) and set(map(type, items)) <= {str} \
        and is_valid_text("\x00".join(items))


def _prompt(data: object) -> Prompt:
    """A Prompt from stored data, each field checked (the chat formats turns with them)."""
    if not isinstance(data, dict):
        raise TypeError("prompt must be a table")
    fields = {f.name: str(f.type) for f in dataclasses.fields(Prompt)}
    _require(set(data) <= set(fields), "unknown prompt field")
    for name, value in data.items():
        if fields[name] == "str":
            _require(isinstance(value, str) and is_valid_text(value), f"prompt {name}")
    prompt = Prompt(**data)
    _require(all(x and "\n" not in x for x in (prompt.user, prompt.bot)), "prompt speakers")
    return prompt


class _Table:
    """A session file's snapshot and node rows, decoded on demand (a `HollowSource`)."""

    def __init__(self, body: dict, tensors: dict[str, torch.Tensor], vocab_size: int):
        self.flat, self.tok, self.turn = tensors["tokens"], tensors["snap.tokens"], \
            tensors["snap.turns"]
        self.setting_rows, self.parent = tensors["snap.settings"], tensors["node.parent"]
        self.node_prompt, self.node_slots = tensors["node.prompt"], tensors["node.slots"]
        self.roles, self.texts = body["roles"], body["texts"]
        self.labels, self.previews = body["labels"], body["previews"]
        self.slot_names = body["slot_names"]
        _require(isinstance(body["prompts"], list) and isinstance(body["settings"], list),
                 "prompt and settings lists")
        self.prompts = [_prompt(p) for p in body["prompts"]]
        self.settings = [settings_from_dict(s) for s in body["settings"]]
        self.n_rows, self.n_nodes = len(self.tok), len(self.parent)
        self._check(vocab_size)
        self._hollows: list[Hollow | None] = [None] * self.n_rows
        self.snapshots: dict[int, Snapshot] = {}

    def _check(self, vocab_size: int) -> None:
        """Every index in range, every length consistent: a few tensor ops, whatever the size."""
        flat, tok, turn, n, s = self.flat, self.tok, self.turn, self.n_nodes, self.n_rows
        _require(all(_strings(x) for x in (self.roles, self.texts, self.labels, self.previews,
                                           self.slot_names)), "lists of text expected")
        _require(flat.dtype == torch.int32 and flat.dim() == 1, "tokens: int32 vector expected")
        # in pieces below torch's parallel grain: no wake-up of its thread pool (which costs
        # milliseconds on a busy machine) for a scan of a few microseconds
        _require(all(int(c.min()) >= 0 and int(c.max()) < vocab_size
                     for c in flat.split(_GRAIN) if c.numel()), "token id out of range")
        ints = (tok, turn, self.setting_rows, self.parent, self.node_prompt, self.node_slots)
        _require(all(t.dtype == torch.int64 for t in ints), "int64 tables expected")
        _require(tok.shape == (s, 4) and turn.shape == (s, 4) and self.setting_rows.shape == (s,),
                 "snapshot tables of different lengths")
        _require(n >= 1 and self.parent.shape == (n,) and self.node_prompt.shape == (n,)
                 and self.node_slots.shape == (n, len(self.slot_names))
                 and len(self.labels) == n and len(self.previews) == n, "node tables")
        _require(len(self.roles) == len(self.texts), "turn lists of different lengths")
        rows = torch.arange(s)
        for table, stop in ((tok, len(flat)), (turn, len(self.roles))):
            anchor, start, end, length = table.unbind(1)
            _require(bool(((anchor >= -1) & (anchor < rows)).all()), "anchor out of range")
            _require(bool(((start >= 0) & (start <= end) & (end <= stop)).all()), "span")
            before = torch.where(anchor >= 0, length[anchor.clamp(min=0)], 0)
            _require(bool((length == before + end - start).all()), "lengths disagree")
        _require(bool(((self.setting_rows >= 0)
                       & (self.setting_rows < len(self.settings))).all()), "settings index")
        _require(bool(((self.parent >= -1) & (self.parent < torch.arange(n))).all()), "parent")
        _require(bool(((self.node_prompt >= 0) & (self.node_prompt < len(self.prompts))).all()),
                 "prompt index")
        _require(bool(((self.node_slots >= -1) & (self.node_slots < s)).all()), "slot index")
        # every node has the slots the commands start from (`+path`, a message, `+reset`)
        _require(all(k in self.slot_names for k in REQUIRED_SLOTS), "required slots")
        for k in REQUIRED_SLOTS:
            _require(bool((self.node_slots[:, self.slot_names.index(k)] >= 0).all()),
                     f"a node without '{k}'")
        # the slots a reply is sampled from hold tokens (so they have logits)
        for k in GENERATED_FROM:
            if k in self.slot_names:
                rows = self.node_slots[:, self.slot_names.index(k)]
                rows = rows[rows >= 0]
                _require(bool((tok[rows, 3] > 0).all()), f"an empty '{k}'")

    # --- HollowSource: one row's tokens / turns, walking its few anchors -----------------------

    def _walk(self, table: torch.Tensor, row: int, attr: str) -> tuple[tuple, list[tuple]]:
        """(what an already decoded anchor holds, the spans after it in order)."""
        spans, at = [], row
        while at >= 0:
            h = self._hollows[at]
            done = h.cached(attr) if at != row and h is not None else None
            if done is not None:
                return done, spans[::-1]
            at, start, stop, _ = table[at].tolist()
            spans.append((start, stop))
        return (), spans[::-1]

    def tokens(self, row: int) -> tuple[int, ...]:
        prefix, spans = self._walk(self.tok, row, "tokens")
        ids: list[int] = []
        for start, stop in spans:
            ids += self.flat[start:stop].tolist()
        return prefix + tuple(ids)

    def transcript(self, row: int) -> tuple[Turn, ...]:
        from .events import Turn

        prefix, spans = self._walk(self.turn, row, "transcript")
        roles = chain.from_iterable(self.roles[a:b] for a, b in spans)
        texts = chain.from_iterable(self.texts[a:b] for a, b in spans)
        return prefix + tuple(map(Turn, map(str, roles), map(str, texts)))

    def n_tokens(self, row: int) -> int:
        return int(self.tok[row, 3])

    def origin(self, row: int):
        """(token anchor, new token ids, turn anchor, roles, texts, n_tokens, n_turns) of a row,
        for writing it again undecoded."""
        t_anchor, start, stop, n_tok = self.tok[row].tolist()
        r_anchor, r_start, r_stop, n_turn = self.turn[row].tolist()
        return (self.hollow(t_anchor) if t_anchor >= 0 else None, self.flat[start:stop],
                self.hollow(r_anchor) if r_anchor >= 0 else None,
                list(map(str, self.roles[r_start:r_stop])),
                list(map(str, self.texts[r_start:r_stop])), n_tok, n_turn)

    # --- objects -------------------------------------------------------------------------------

    def hollow(self, row: int) -> Hollow:
        h = self._hollows[row]
        if h is None:
            h = self._hollows[row] = Hollow(None, None, self.settings[int(self.setting_rows[row])],
                                            self, row)
        return h

    def node(self, node_id: int) -> Node:
        parent = int(self.parent[node_id])
        slots = {self.slot_names[c]: self.snapshots.get(j) or self.hollow(j)
                 for c, j in enumerate(self.node_slots[node_id].tolist()) if j >= 0}
        children = (self.parent == node_id).nonzero().flatten().tolist()
        return Node(node_id, None if parent < 0 else parent, str(self.labels[node_id]),
                    str(self.previews[node_id]), self.prompts[int(self.node_prompt[node_id])],
                    slots, children)
