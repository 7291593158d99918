"""The conversation tree: every turn is a node holding the session's snapshot slots after it.

A node stores the slot dict (`chat`, `chat_pre`, `chat_init`, `gen_0`, `gen_1` -> Snapshot) the
session had after the turn, plus the prompt in force. Snapshots are immutable and shared between
nodes, so a turn costs one or two new states (the ones it created), never a copy of the rest.

    undo     current <- parent (the exact snapshots from before the turn); redo walks back down
    +        a reply resampled from the same message becomes a *sibling* of the reply it replaces
    +gen     free text starts from nothing earlier: it hangs beside earlier free text, under the
             last chat turn (`above`), not nested under the free text it does not continue
    branch   names a head; turns on a branch move its head; switch jumps to another head (each
             branch keeps its own redo stack)
    goto     any node by its id (replaced replies and undone turns included)

Memory bound: only the snapshots referenced by the `max_live` most recently used nodes (plus
the current node and every branch head) keep their state and logits. The snapshots of all other
nodes are reduced to a `Hollow` (token ids, transcript, settings): a few bytes per token. Going
back to such a node rebuilds its snapshots with one prefill from the longest snapshot still in
memory whose tokens are a prefix (the prompt's `chat_init` at worst), so a session with hundreds
of turns holds at most about `5 * (max_live + branches)` states whatever its length, and a
rebuilt node agrees with the original to fp32 rounding (sequence vs token-by-token forward).
Only nodes that may hold a state (`holding`) are visited by that bound, so a turn costs O(live
nodes), not O(tree). A tree loaded from a session file builds a node when first used (`Nodes`),
and its hollows decode their token ids when first read.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Iterator, MutableMapping
from typing import TYPE_CHECKING, Protocol

from .errors import ChatRWKVError

if TYPE_CHECKING:
    from .events import Snapshot, Turn
    from .prompts import Prompt
    from .sampling import SamplingSettings

DEFAULT_MAX_LIVE = 32  # recent nodes whose states stay in memory (0.1B v7: ~2.6 MB per state)
MAIN = "main"


class HollowSource(Protocol):
    """Where a hollow read from a session file decodes its token ids and transcript from."""

    def tokens(self, row: int) -> tuple[int, ...]: ...
    def transcript(self, row: int) -> tuple[Turn, ...]: ...
    def n_tokens(self, row: int) -> int: ...


class Hollow:
    """A snapshot without its state: enough to rebuild it by prefill.

    One read from a session file holds only its row in the file (`source`, `row`): its token ids
    and transcript are decoded on first use, so resuming a long session decodes no turn it does
    not visit, and saving it again copies the row's spans without decoding them."""

    __slots__ = ("_tokens", "_transcript", "row", "settings", "source")

    def __init__(self, tokens: tuple[int, ...] | None, transcript: tuple[Turn, ...] | None,
                 settings: SamplingSettings, source: HollowSource | None = None, row: int = -1):
        if source is None and (tokens is None or transcript is None):
            raise ValueError("a Hollow needs its tokens and transcript, or a source to read")
        self._tokens, self._transcript = tokens, transcript
        self.settings, self.source, self.row = settings, source, row

    @property
    def tokens(self) -> tuple[int, ...]:
        if self._tokens is None:
            self._tokens = self.source.tokens(self.row)  # type: ignore[union-attr]
        return self._tokens

    @property
    def transcript(self) -> tuple[Turn, ...]:
        if self._transcript is None:
            self._transcript = self.source.transcript(self.row)  # type: ignore[union-attr]
        return self._transcript

    @property
    def n_tokens(self) -> int:
        """len(tokens), without decoding them."""
        if self._tokens is None:
            return self.source.n_tokens(self.row)  # type: ignore[union-attr]
        return len(self._tokens)

    @property
    def decoded(self) -> bool:
        return self._tokens is not None

    def cached(self, field: str) -> tuple | None:
        """`tokens` or `transcript` if already at hand, without decoding."""
        return self._tokens if field == "tokens" else self._transcript

    def __repr__(self) -> str:
        return f"Hollow({self.n_tokens} tokens, row {self.row})"


@dataclasses.dataclass
class Node:
    id: int
    parent: int | None
    label: str      # "prompt", "chat", "gen", "reset", "import", "state"
    preview: str    # the turn's first words, for the tree view
    prompt: Prompt
    slots: dict[str, Snapshot | Hollow]
    children: list[int] = dataclasses.field(default_factory=list)


class Nodes(MutableMapping[int, Node]):
    """id -> Node, ids 0..len-1. Nodes of a loaded session are built from the file on first
    access (`build`), so resuming builds the current node, not the whole tree."""

    def __init__(self, count: int = 0, build: Callable[[int], Node] | None = None,
                 on_build: Callable[[Node], None] | None = None):
        self._built: dict[int, Node] = {}
        self._count, self._build, self._on_build = count, build, on_build

    def __getitem__(self, node_id: int) -> Node:
        node = self._built.get(node_id)
        if node is None:
            if self._build is None or not (isinstance(node_id, int) and 0 <= node_id < self._count):
                raise KeyError(node_id)
            node = self._built[node_id] = self._build(node_id)
            if self._on_build is not None:
                self._on_build(node)
        return node

    def __setitem__(self, node_id: int, node: Node) -> None:
        if node_id != self._count and node_id not in self:
            raise KeyError(f"node ids are consecutive: {node_id} after {self._count - 1}")
        self._built[node_id] = node
        self._count = max(self._count, node_id + 1)

    def __delitem__(self, node_id: int) -> None:
        raise TypeError("nodes are never removed from a conversation")

    def __contains__(self, node_id: object) -> bool:
        return isinstance(node_id, int) and 0 <= node_id < self._count

    def __iter__(self) -> Iterator[int]:
        return iter(range(self._count))

    def __len__(self) -> int:
        return self._count

    def built(self) -> int:
        """How many nodes exist as objects (the rest are rows of a session file)."""
        return len(self._built)


class TreeError(ChatRWKVError):
    """An undo / redo / branch / switch that cannot be done (nothing changes)."""


class Conversation:
    """Nodes, the current position, named branch heads and a redo stack."""

    def __init__(self, max_live: int = DEFAULT_MAX_LIVE):
        self.max_live = max(1, max_live)
        self.nodes: Nodes = Nodes()
        self.current = -1
        self.branch = MAIN
        self.branches: dict[str, int] = {}
        self.redo_stack: list[int] = []
        self.parked_redo: dict[str, list[int]] = {}  # the redo stacks of the other branches
        self.live: OrderedDict[int, None] = OrderedDict()
        self.holding: set[int] = set()  # nodes whose slots may hold a state
        # a session file's stored snapshots and their hollow twins (which can be saved again
        # without decoding): id(snapshot) -> (snapshot, twin)
        self.twins: dict[int, tuple[Snapshot, Hollow]] = {}
        # id(tokens) -> (tokens, the longest earlier tokens that are a prefix), found once per
        # new snapshot when its turn is recorded, so a save compares no token lists
        self.prefix_of: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {}

    def adopt(self, count: int, build: Callable[[int], Node]) -> None:
        """Take `count` nodes that `build` makes on first access (a loaded session)."""
        self.nodes = Nodes(count, build, self._note_built)

    def _note_built(self, node: Node) -> None:
        if any(not isinstance(s, Hollow) for s in node.slots.values()):
            self.holding.add(node.id)

    # --- building ------------------------------------------------------------------------------

    def add(self, slots: dict[str, Snapshot], prompt: Prompt, label: str, preview: str,
            sibling: bool = False, above: str | None = None) -> Node:
        """A new node after the current one (or beside it), which becomes current. `above`:
        hang it above the run of nodes with that label that ends at the current one."""
        parent: int | None = self.current if self.nodes else None
        if sibling and parent is not None:
            parent = self.nodes[parent].parent
        while above is not None and parent is not None and self.nodes[parent].label == above:
            parent = self.nodes[parent].parent
        node = Node(len(self.nodes), parent, label, preview, prompt, dict(slots))
        self._note_prefixes(node)
        self.nodes[node.id] = node
        self.holding.add(node.id)
        if parent is not None:
            self.nodes[parent].children.append(node.id)
        self.redo_stack.clear()
        self._enter(node.id)
        return node

    def _note_prefixes(self, node: Node) -> None:
        near = [] if node.parent is None else list(self.nodes[node.parent].slots.values())
        for slot in node.slots.values():
            if all(slot is not other for other in near) and id(slot.tokens) not in self.prefix_of:
                base = longest_prefix(slot.tokens, [o.tokens for o in near])
                if base is not None:
                    self.prefix_of[id(slot.tokens)] = (slot.tokens, base)
            near.append(slot)

    def _enter(self, node_id: int) -> None:
        self.current = node_id
        self.branches[self.branch] = node_id
        self.live[node_id] = None
        self.live.move_to_end(node_id)
        self._bound_memory()

    # --- moving --------------------------------------------------------------------------------

    def undo(self) -> Node:
        node = self.nodes[self.current]
        if node.parent is None:
            raise TreeError("nothing to undo: this is the start of the conversation")
        self.redo_stack.append(node.id)
        self._enter(node.parent)
        return self.nodes[self.current]

    def redo(self) -> Node:
        if not self.redo_stack:
            raise TreeError("nothing to redo")
        self._enter(self.redo_stack.pop())
        return self.nodes[self.current]

    def fork(self, name: str) -> None:
        """Name the current node as the head of a new branch and continue on it."""
        if name in self.branches:
            raise TreeError(f"a branch named '{name}' exists already (+switch {name} goes there)")
        self.parked_redo[self.branch] = list(self.redo_stack)  # both heads are here: both redo
        self.branch = name
        self._enter(self.current)

    def switch(self, name: str) -> Node:
        if name not in self.branches:
            known = ", ".join(sorted(self.branches))
            raise TreeError(f"no branch named '{name}' (branches: {known})")
        if name != self.branch:
            self.parked_redo[self.branch] = self.redo_stack
            self.redo_stack = self.parked_redo.pop(name, [])
        self.branch = name
        self._enter(self.branches[name])
        return self.nodes[self.current]

    def goto(self, node_id: int) -> Node:
        """Go to any node; the current branch's head moves there. Going up to an ancestor is
        a run of undos (+redo walks back down); anywhere else starts a fresh redo stack."""
        if node_id not in self.nodes:
            raise TreeError(f"no node #{node_id} (+tree shows the nodes, #0 to "
                            f"#{len(self.nodes) - 1})")
        below = [n.id for n in self.path()]
        if node_id in below:
            self.redo_stack.extend(reversed(below[below.index(node_id) + 1:]))
        elif node_id != self.current:
            self.redo_stack = []
        self._enter(node_id)
        return self.nodes[self.current]

    def path(self, node_id: int | None = None) -> list[Node]:
        """Root ... node (default: the current node)."""
        out, at = [], self.current if node_id is None else node_id
        while at is not None:
            out.append(self.nodes[at])
            at = self.nodes[at].parent
        return out[::-1]

    def walk(self) -> Iterator[tuple[int, Node]]:
        """(depth, node) in depth-first order, for the tree view."""
        roots = [n for n in self.nodes.values() if n.parent is None]
        stack = [(0, n) for n in reversed(roots)]
        while stack:
            depth, node = stack.pop()
            yield depth, node
            stack.extend((depth + 1, self.nodes[c]) for c in reversed(node.children))

    def heads(self) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for name, node_id in self.branches.items():
            out.setdefault(node_id, []).append(name)
        return out

    # --- memory --------------------------------------------------------------------------------

    def materialize(self, node: Node,
                    rebuild: Callable[[Hollow, list[Snapshot]], Snapshot]) -> dict[str, Snapshot]:
        """The node's slots with every Hollow rebuilt (and kept: the node is live now)."""
        from .events import Snapshot

        if any(isinstance(s, Hollow) for s in node.slots.values()):
            kept = self.kept_snapshots()
            for name, slot in node.slots.items():
                if isinstance(slot, Hollow):
                    node.slots[name] = rebuild(slot, kept)
                    kept.append(node.slots[name])  # type: ignore[arg-type]
            self.holding.add(node.id)
        assert all(isinstance(s, Snapshot) for s in node.slots.values())
        return dict(node.slots)  # type: ignore[arg-type]

    def kept_snapshots(self) -> list[Snapshot]:
        from .events import Snapshot

        seen: dict[int, Snapshot] = {}
        for node_id in sorted(self.holding):
            for s in self.nodes[node_id].slots.values():
                if isinstance(s, Snapshot):
                    seen[id(s)] = s
        return list(seen.values())

    def _bound_memory(self) -> None:
        protected = {self.current, *self.branches.values()}
        while len(self.live) > self.max_live:
            victim = next((n for n in self.live if n not in protected), None)
            if victim is None:
                break
            del self.live[victim]
        keep = {id(s) for n in (*self.live, *protected) for s in self.nodes[n].slots.values()}
        # only nodes in `holding` can hold a state: a turn costs O(live nodes), not O(tree)
        for node_id in sorted(self.holding - protected - self.live.keys()):
            node = self.nodes[node_id]
            for name, s in node.slots.items():
                if not isinstance(s, Hollow) and id(s) not in keep:
                    node.slots[name] = self.hollow_of(s)
            if all(isinstance(s, Hollow) for s in node.slots.values()):
                self.holding.discard(node_id)

    def hollow_of(self, snapshot: Snapshot) -> Hollow:
        twin = self.twins.get(id(snapshot))
        if twin is not None and twin[0] is snapshot:
            return twin[1]
        return Hollow(snapshot.tokens, snapshot.transcript, snapshot.settings)


def longest_prefix(tokens: tuple[int, ...],
                   candidates: list[tuple[int, ...]]) -> tuple[int, ...] | None:
    """The longest candidate that `tokens` starts with (one full comparison, mostly)."""
    n = len(tokens)
    for other in sorted(candidates, key=len, reverse=True):
        m = len(other)
        if m > n or (m and tokens[m - 1] != other[m - 1]):
            continue
        if other is tokens or (tokens[:m] if m < n else tokens) == other:
            return other
    return None


def first_words(text: str, limit: int = 48) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"
