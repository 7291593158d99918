"""The session's tree and file commands (+undo, +redo, +branch, +switch, +tree, +path, +save,
+load, +sessions, +export, +import, +state).

`TreeCommands` works on a host (the `Session`, which owns one and dispatches these commands to
it) through the narrow `TreeHost` interface below; this module never imports the session, so
the layers run one way: session -> treecommands -> sessionfile, transcript -> conversation.
Every command here either changes nothing and yields one Problem, or swaps the session's
position as a whole (slots, prompt, tree, generator), so a refused file leaves the chat intact.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import torch

from . import autosave, sessionfile, sessionread, transcript
from . import commands as C
from .conversation import Conversation, Hollow, Node, first_words
from .errors import ChatRWKVError
from .events import Event, Info, ShowTranscript, ShowTree, Snapshot, TreeRow
from .prompts import Prompt
from .runtime import Runtime, Timing
from .safeio import expand
from .sampling import SamplingSettings
from .statetune import mount_state


class TreeHost(sessionfile.SessionLike, transcript.Feeder, Protocol):
    """What the tree and file commands need from the session."""

    tree: Conversation
    slots: dict[str, Snapshot]
    prompt: Prompt
    runtime: Runtime
    generator: torch.Generator
    states_folder: Path

    def start(self, prompt: Prompt, label: str = "prompt") -> Timing: ...
    def record(self, label: str, preview: str, sibling: bool = False) -> None: ...


def _shown(node: Node) -> str:
    """The preview without a repeat of the label: "reset" for a reset, and files saved before
    previews stopped starting with it ("prompt english-world" under the label "prompt")."""
    if node.preview == node.label:
        return ""
    if node.label in ("prompt", "state"):
        return node.preview.removeprefix(node.label + " ")
    return node.preview


class TreeCommands:
    """The handlers (`_on_<command>`) and the position changes they share, over `host`."""

    def __init__(self, host: TreeHost):
        self.s = host

    # --- position ------------------------------------------------------------------------------

    def _enter(self, node: Node) -> None:
        self.s.slots = self.s.tree.materialize(node, self._rebuild)
        self.s.prompt = node.prompt

    def _rebuild(self, hollow: Hollow, kept: list[Snapshot]) -> Snapshot:
        """A snapshot from its token ids: one prefill from the longest kept prefix."""
        n = len(hollow.tokens)
        base = max((s for s in kept if len(s.tokens) <= n and hollow.tokens[:len(s.tokens)]
                    == s.tokens), key=lambda s: len(s.tokens), default=None) or self.s.zero()
        if len(base.tokens) == n:
            return Snapshot(base.state, base.logits, hollow.tokens, hollow.transcript,
                            hollow.settings)
        state = base.state.clone()
        logits = self.s.runtime.prefill(list(hollow.tokens[len(base.tokens):]), state)
        return Snapshot(state, logits, hollow.tokens, hollow.transcript, hollow.settings)

    def where(self) -> str:
        node = self.s.tree.nodes[self.s.tree.current]
        return f"[{self.s.tree.branch}] {node.preview}"

    # --- commands ------------------------------------------------------------------------------

    def _on_undo(self, cmd: C.Undo, settings: SamplingSettings) -> Iterator[Event]:
        self._enter(self.s.tree.undo())
        yield Info(f"undone; now at {self.where()} (+redo puts it back)")

    def _on_redo(self, cmd: C.Redo, settings: SamplingSettings) -> Iterator[Event]:
        self._enter(self.s.tree.redo())
        yield Info(f"redone; now at {self.where()}")

    def _on_branch(self, cmd: C.Branch, settings: SamplingSettings) -> Iterator[Event]:
        sessionfile.session_path(cmd.name, Path("."))  # same rules as session names
        old = self.s.tree.branch
        self.s.tree.fork(cmd.name)
        yield Info(f"on new branch '{cmd.name}' (+switch {old} goes back)")

    def _on_switch(self, cmd: C.Switch, settings: SamplingSettings) -> Iterator[Event]:
        node = self.s.tree.switch(cmd.name)
        self._enter(node)
        yield Info(f"switched to {self.where()}")

    def _on_showtree(self, cmd: C.ShowTree, settings: SamplingSettings) -> Iterator[Event]:
        heads = self.s.tree.heads()
        yield ShowTree(tuple(TreeRow(depth, n.label, _shown(n), tuple(heads.get(n.id, ())),
                                     n.id == self.s.tree.current, n.id)
                             for depth, n in self.s.tree.walk()))

    def _on_goto(self, cmd: C.Goto, settings: SamplingSettings) -> Iterator[Event]:
        self._enter(self.s.tree.goto(cmd.node_id))
        yield Info(f"now at #{cmd.node_id} {self.where()}")

    def _on_showpath(self, cmd: C.ShowPath, settings: SamplingSettings) -> Iterator[Event]:
        turns = self.s.slots["chat"].transcript
        if not any(t.role in ("user", "bot") for t in turns):
            yield Info(f"no messages yet on this path: the chat starts from prompt "
                       f"'{self.s.prompt.name}' (+tree shows every turn)")
            return
        yield ShowTranscript(turns)

    def _on_save(self, cmd: C.Save, settings: SamplingSettings) -> Iterator[Event]:
        path = self._session_path(cmd.name)
        size = sessionfile.save_session(self.s, path)
        yield Info(f"saved '{cmd.name}' ({size / 1e6:.1f} MB, {len(self.s.tree.nodes)} turns) "
                   f"to {path}")

    def _on_load(self, cmd: C.Load, settings: SamplingSettings) -> Iterator[Event]:
        self.load_named(cmd.name)
        yield Info(f"loaded '{cmd.name}': {len(self.s.tree.nodes)} turns, at {self.where()}")

    def _on_sessions(self, cmd: C.Sessions, settings: SamplingSettings) -> Iterator[Event]:
        from .autosave import describe_last, saved_lasts
        from .defaults import DEMO_MODEL

        folder = self.s.states_folder
        names = sessionfile.list_sessions(folder)
        lasts = saved_lasts(folder, self.s.model.identity())
        if names or not lasts:
            yield Info(", ".join(names) if names else f"no saved sessions in {folder}")
        for last in lasts:  # the conversations saved when a chat ended, one per model
            yield Info(describe_last(last, DEMO_MODEL))

    def _on_export(self, cmd: C.Export, settings: SamplingSettings) -> Iterator[Event]:
        path = expand(cmd.path)
        if not path.parent.is_dir():  # a typo in a folder name must not create folders
            raise ChatRWKVError(f"cannot write {path}: no folder {path.parent} (create it first)")
        turns = self.s.slots["chat"].transcript
        text = transcript.to_markdown(turns, self.s.prompt) if cmd.fmt == "md" \
            else transcript.to_json(turns, self.s.prompt)
        sessionfile.atomic_write(path, text.encode("utf-8"))
        yield Info(f"wrote {path}")

    def _on_import(self, cmd: C.Import, settings: SamplingSettings) -> Iterator[Event]:
        messages = transcript.read_json(expand(cmd.path))
        slots, tokens = transcript.rebuild(self.s, messages)
        self.s.slots, self.s.prompt = slots, transcript.prompt_for(self.s.prompt, messages)
        self.s.record("import", first_words(Path(cmd.path).name))
        yield Info(f"imported {len(messages)} messages ({tokens} tokens, one prefill)")

    def _on_mountstate(self, cmd: C.MountState, settings: SamplingSettings) -> Iterator[Event]:
        self.mount(cmd.path)
        yield Info(f"state '{Path(cmd.path).name}' mounted; the conversation starts over from it")

    # --- used by the command line too ----------------------------------------------------------

    def load_named(self, name: str) -> None:
        """Replace the whole session by a saved one; raises StateFileError and changes nothing."""
        loaded = sessionread.load_session(self.s, self._session_path(name, reading=True))
        tree: Conversation = loaded.tree
        old = self.s.tree, self.s.initial_state
        self.s.tree, self.s.initial_state = tree, loaded.initial_state
        try:
            slots = tree.materialize(tree.nodes[tree.current], self._rebuild)
        except BaseException:
            self.s.tree, self.s.initial_state = old
            raise
        self.s.slots, self.s.prompt = slots, tree.nodes[tree.current].prompt
        self.s.mounted_name = loaded.mounted_name
        self.s.generator.set_state(loaded.rng)
        if loaded.settings is not None:
            self.s.settings, self.s.options = loaded.settings

    def _session_path(self, name: str, reading: bool = False) -> Path:
        """states/NAME.session; `last` is this model's own (see autosave.py)."""
        return autosave.path_for(name, self.s.states_folder, self.s.model.identity(), reading)

    def save_named(self, name: str) -> Path:
        path = self._session_path(name)
        sessionfile.save_session(self.s, path)
        return path

    def mount(self, path: str | Path) -> None:
        """Start over (prompt included) from a state-tuning file's state."""
        state = mount_state(path, self.s.model)
        old = self.s.initial_state
        self.s.initial_state = state
        try:
            self.s.start(self.s.prompt, label="state")
        except BaseException:
            self.s.initial_state = old
            raise
        self.s.mounted_name = Path(path).name
