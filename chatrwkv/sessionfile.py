"""Session files: the whole conversation tree in one safetensors file, resumed without prefill.

Where: `$CHATRWKV_HOME/states/NAME.session` (default `~/.local/state/chatrwkv/states`, or
`$XDG_STATE_HOME/chatrwkv/states`): a per-user directory, so a session follows the user, not the
directory chat was started in. NAME is a plain word ([A-Za-z0-9_.-], not starting with '.');
anything else, `../x` included, is refused, so no path leaves `states/`.

Layout (format `chatrwkv-session`, version 1):
    tensors   snap{i}.{field}, snap{i}.logits   state + logits of the current node's snapshots
                                                and of every branch head (the ones a resume or a
                                                switch needs at once), fp32
              init.{field}                      a mounted state-tuning start (if any)
              rng                               the sampler's torch.Generator state
    metadata  identity (the model's: version, shapes, weight fingerprint) and body (JSON):
              tokenizer, prompts, snapshots (token ids and transcript as deltas on an earlier
              snapshot, sampling settings), nodes (parent, label, slots), branches, redo stack.
Other snapshots are stored as token ids only and rebuilt by prefill when visited (see
conversation.py), so a file holds a handful of states whatever the conversation's length.
Writes are atomic: temp file in the same directory, fsync, rename.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .conversation import Conversation, Hollow, Node
from .errors import StateFileError
from .prompts import Prompt
from .sampling import SamplingSettings

if TYPE_CHECKING:
    from .events import Snapshot
    from .session import Session

FORMAT = "chatrwkv-session"
FORMAT_VERSION = 1
SUFFIX = ".session"
AUTOSAVE = "last"  # what Ctrl-D / +exit / a closed terminal write, and `--resume` reads
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")


def home_dir() -> Path:
    """$CHATRWKV_HOME, else $XDG_STATE_HOME/chatrwkv, else ~/.local/state/chatrwkv."""
    if home := os.environ.get("CHATRWKV_HOME"):
        return Path(home).expanduser()
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
    return sorted(p.name[: -len(SUFFIX)] for p in folder.glob("*" + SUFFIX)) if folder.is_dir() else []


def atomic_write(path: Path, data: bytes) -> None:
    """Temp file beside `path`, fsync, rename: a crash leaves the old file or the new one."""
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


# --- writing -----------------------------------------------------------------------------------

def encode_session(session: Session) -> bytes:
    from safetensors.torch import save

    from .events import Snapshot

    tree = session.tree
    keep_state = {id(s) for n in {tree.current, *tree.branches.values()}
                  for s in tree.nodes[n].slots.values()}
    index: dict[int, int] = {}
    records: list[dict] = []
    objects: list[Snapshot | Hollow] = []
    tensors: dict[str, torch.Tensor] = {}
    prompts: list[Prompt] = []
    nodes = []
    for node in tree.nodes.values():
        if node.prompt not in prompts:
            prompts.append(node.prompt)
        near = [index[id(s)] for n in (node.parent, node.id) if n is not None
                for s in tree.nodes[n].slots.values() if id(s) in index]
        for slot in node.slots.values():
            if id(slot) in index:
                continue
            i = index[id(slot)] = len(objects)
            objects.append(slot)
            records.append(_record(slot, near, objects))
            near.append(i)
            if isinstance(slot, Snapshot) and id(slot) in keep_state:
                records[i]["stored"] = True
                tensors.update({f"snap{i}.{k}": v for k, v in slot.state.tensors().items()})
                if slot.logits is not None:
                    tensors[f"snap{i}.logits"] = slot.logits.float()
        nodes.append({"id": node.id, "parent": node.parent, "label": node.label,
                      "preview": node.preview, "prompt": prompts.index(node.prompt),
                      "children": node.children,
                      "slots": {k: index[id(s)] for k, s in node.slots.items()}})
    if session.initial_state is not None:
        tensors.update({f"init.{k}": v for k, v in session.initial_state.tensors().items()})
    tensors["rng"] = session.generator.get_state()
    body = {"tokenizer": session.tokenizer.name, "state_kind": session.model.zero_state().kind,
            "prompts": [dataclasses.asdict(p) for p in prompts], "snapshots": records,
            "nodes": nodes, "branches": tree.branches, "branch": tree.branch,
            "current": tree.current, "redo": tree.redo_stack,
            "mounted": session.mounted_name}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION),
            "identity": json.dumps(session.model.identity(), sort_keys=True),
            "body": json.dumps(body, ensure_ascii=False, separators=(",", ":"))}
    return save(tensors, metadata=meta)


def _record(slot: Snapshot | Hollow, near: list[int], objects: list) -> dict:
    """Token ids and transcript as a delta on the longest earlier snapshot that is a prefix."""
    base = None
    for j in near:
        other = objects[j]
        if (len(other.tokens) <= len(slot.tokens)
                and slot.tokens[:len(other.tokens)] == other.tokens
                and (base is None or len(other.tokens) > len(objects[base].tokens))):
            base = j
    start = len(objects[base].tokens) if base is not None else 0
    t_start = 0
    if base is not None:
        bt = objects[base].transcript
        if slot.transcript[:len(bt)] == bt:
            t_start = len(bt)
    return {"base": base, "tokens": list(slot.tokens[start:]), "tfrom": t_start,
            "transcript": [[t.role, t.text] for t in slot.transcript[t_start:]],
            "settings": dataclasses.asdict(slot.settings), "stored": False}


def save_session(session: Session, path: Path) -> int:
    """Write `session` to `path` atomically; returns the file size in bytes."""
    data = encode_session(session)
    atomic_write(path, data)
    return len(data)


# --- reading -----------------------------------------------------------------------------------

@dataclasses.dataclass
class Loaded:
    tree: Conversation
    rng: torch.Tensor
    initial_state: object | None
    mounted_name: str | None


def load_session(session: Session, path: Path) -> Loaded:
    """Read and check a session file for `session`'s model; changes nothing in `session`."""
    from safetensors import SafetensorError, safe_open

    if not path.exists():
        raise StateFileError(f"no saved session '{path.stem}' (in {path.parent})")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not iterable
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
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
    mine = session.model.identity()
    try:
        theirs = json.loads(meta.get("identity", "{}"))
        if theirs != mine:
            diff = sorted(k for k in set(theirs) | set(mine) if theirs.get(k) != mine.get(k))
            raise StateFileError(f"{path}: saved with another model (differs in "
                                 f"{', '.join(diff)}); the current session is kept")
        return _decode(session, json.loads(meta["body"]), tensors)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as e:
        raise StateFileError(f"{path}: damaged session file ({type(e).__name__}: "
                             f"{str(e)[:80]})") from None


def _decode(session: Session, body: dict, tensors: dict[str, torch.Tensor]) -> Loaded:
    from .events import Snapshot, Turn

    zero = session.model.zero_state()
    state_class, shapes = type(zero), {k: v.shape for k, v in zero.tensors().items()}
    device = zero.device

    def state_from(prefix: str):
        parts = {k: tensors[f"{prefix}.{k}"] for k in shapes}
        for k, v in parts.items():
            if v.shape != shapes[k]:
                raise ValueError(f"{prefix}.{k} has shape {list(v.shape)}")
        return state_class(**{k: v.to(device) for k, v in parts.items()})

    if body["tokenizer"] != session.tokenizer.name:
        raise StateFileError(f"session uses the {body['tokenizer']} tokenizer, "
                             f"this chat the {session.tokenizer.name} one")
    prompts = [Prompt(**p) for p in body["prompts"]]
    objects: list[Snapshot | Hollow] = []
    for i, r in enumerate(body["snapshots"]):
        base = objects[r["base"]] if r["base"] is not None else None
        tokens = (base.tokens if base else ()) + tuple(int(t) for t in r["tokens"])
        transcript = ((base.transcript[: r["tfrom"]] if base else ())
                      + tuple(Turn(str(a), str(b)) for a, b in r["transcript"]))
        settings = SamplingSettings(**r["settings"])
        if r["stored"]:
            logits = tensors.get(f"snap{i}.logits")
            objects.append(Snapshot(state_from(f"snap{i}"),
                                    None if logits is None else logits.to(device),
                                    tokens, transcript, settings))
        else:
            objects.append(Hollow(tokens, transcript, settings))
    tree = Conversation(session.tree.max_live)
    for n in body["nodes"]:
        node = Node(int(n["id"]), n["parent"], str(n["label"]), str(n["preview"]),
                    prompts[n["prompt"]], {str(k): objects[v] for k, v in n["slots"].items()},
                    [int(c) for c in n["children"]])
        tree.nodes[node.id] = node
    tree.branches = {str(k): int(v) for k, v in body["branches"].items()}
    tree.branch = str(body["branch"])
    tree.current = int(body["current"])
    tree.redo_stack = [int(x) for x in body["redo"]]
    if tree.current not in tree.nodes or any(v not in tree.nodes for v in tree.branches.values()):
        raise ValueError("node index out of range")
    for node_id in {tree.current, *tree.branches.values()}:
        tree.live[node_id] = None
    initial = state_from("init") if f"init.{next(iter(shapes))}" in tensors else None
    return Loaded(tree, tensors["rng"], initial, body.get("mounted"))
