"""The conversation tree: every turn is a node holding the session's snapshot slots after it.

A node stores the slot dict (`chat`, `chat_pre`, `chat_init`, `gen_0`, `gen_1` -> Snapshot) the
session had after the turn, plus the prompt in force. Snapshots are immutable and shared between
nodes, so a turn costs one or two new states (the ones it created), never a copy of the rest.

    undo     current <- parent (the exact snapshots from before the turn); redo walks back down
    +        a reply resampled from the same message becomes a *sibling* of the reply it replaces
    branch   names a head; turns on a branch move its head; switch jumps to another head

Memory bound: only the snapshots referenced by the `max_live` most recently used nodes (plus
the current node and every branch head) keep their state and logits. The snapshots of all other
nodes are reduced to a `Hollow` (token ids, transcript, settings): a few bytes per token. Going
back to such a node rebuilds its snapshots with one prefill from the longest snapshot still in
memory whose tokens are a prefix (the prompt's `chat_init` at worst), so a session with hundreds
of turns holds at most about `5 * (max_live + branches)` states whatever its length, and a
rebuilt node agrees with the original to fp32 rounding (sequence vs token-by-token forward).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from .errors import ChatRWKVError

if TYPE_CHECKING:
    from .events import Snapshot, Turn
    from .prompts import Prompt
    from .sampling import SamplingSettings

DEFAULT_MAX_LIVE = 32  # recent nodes whose states stay in memory (0.1B v7: ~2.6 MB per state)
MAIN = "main"


@dataclasses.dataclass(frozen=True)
class Hollow:
    """A snapshot without its state: enough to rebuild it by prefill."""

    tokens: tuple[int, ...]
    transcript: tuple[Turn, ...]
    settings: SamplingSettings



@dataclasses.dataclass
class Node:
    id: int
    parent: int | None
    label: str      # "prompt", "chat", "gen", "reset", "import", "state"
    preview: str    # the turn's first words, for the tree view
    prompt: Prompt
    slots: dict[str, Snapshot | Hollow]
    children: list[int] = dataclasses.field(default_factory=list)


class TreeError(ChatRWKVError):
    """An undo / redo / branch / switch that cannot be done (nothing changes)."""


class Conversation:
    """Nodes, the current position, named branch heads and a redo stack."""

    def __init__(self, max_live: int = DEFAULT_MAX_LIVE):
        self.max_live = max(1, max_live)
        self.nodes: dict[int, Node] = {}
        self.current = -1
        self.branch = MAIN
        self.branches: dict[str, int] = {}
        self.redo_stack: list[int] = []
        self.live: OrderedDict[int, None] = OrderedDict()

    # --- building ------------------------------------------------------------------------------

    def add(self, slots: dict[str, Snapshot], prompt: Prompt, label: str, preview: str,
            sibling: bool = False) -> Node:
        """A new node after the current one (or beside it), which becomes current."""
        parent: int | None = self.current if self.nodes else None
        if sibling and parent is not None:
            parent = self.nodes[parent].parent
        node = Node(len(self.nodes), parent, label, preview, prompt, dict(slots))
        self.nodes[node.id] = node
        if parent is not None:
            self.nodes[parent].children.append(node.id)
        self.redo_stack.clear()
        self._enter(node.id)
        return node

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
        self.branch = name
        self._enter(self.current)

    def switch(self, name: str) -> Node:
        if name not in self.branches:
            known = ", ".join(sorted(self.branches))
            raise TreeError(f"no branch named '{name}' (branches: {known})")
        self.branch = name
        self.redo_stack.clear()
        self._enter(self.branches[name])
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
        assert all(isinstance(s, Snapshot) for s in node.slots.values())
        return dict(node.slots)  # type: ignore[arg-type]

    def kept_snapshots(self) -> list[Snapshot]:
        from .events import Snapshot

        seen: dict[int, Snapshot] = {}
        for node in self.nodes.values():
            for s in node.slots.values():
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
        for node in self.nodes.values():
            if node.id in self.live or node.id in protected:
                continue
            for name, s in node.slots.items():
                if not isinstance(s, Hollow) and id(s) not in keep:
                    node.slots[name] = Hollow(s.tokens, s.transcript, s.settings)


def first_words(text: str, limit: int = 48) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"
