"""Reading a session file (the layout is in sessionfile.py): the whole file is checked before
anything of the current chat is touched, so a damaged file is refused with one line, and a file
that passes cannot fail later (a node built on first visit, +path, +save)."""

from __future__ import annotations

import dataclasses
import json
import os
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .chatsettings import ChatOptions, SettingError, apply_setting
from .conversation import Conversation, Hollow, Node
from .errors import ChatRWKVError, StateFileError
from .prompts import Prompt
from .safeio import FileRefused, check_regular
from .sampling import SamplingSettings, settings_from_dict
from .sessionfile import (
    _GRAIN,
    FORMAT,
    FORMAT_VERSION,
    GENERATED_FROM,
    REQUIRED_SLOTS,
    SessionLike,
    _state_spec,
)
from .sessionpaths import _NAME
from .textin import is_valid_text

if TYPE_CHECKING:
    from .events import Snapshot, Turn


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
    table = FileTable(body, tensors, vocab)
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


class FileTable:
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
