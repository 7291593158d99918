"""The session's tree and file commands (+undo, +redo, +branch, +switch, +tree, +path, +save,
+load, +sessions, +export, +import, +state), as a mixin of `Session`.

Every command here either changes nothing and yields one Problem, or swaps the session's
position as a whole (slots, prompt, tree, generator), so a refused file leaves the chat intact.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from . import commands as C
from . import sessionfile, transcript
from .conversation import Conversation, Hollow, Node, first_words
from .errors import ChatRWKVError
from .events import Event, Info, ShowTranscript, ShowTree, Snapshot, TreeRow
from .sampling import SamplingSettings
from .statetune import mount_state


def _shown(node: Node) -> str:
    """The preview without a repeat of the label: "reset" for a reset, and files saved before
    previews stopped starting with it ("prompt english-world" under the label "prompt")."""
    if node.preview == node.label:
        return ""
    if node.label in ("prompt", "state"):
        return node.preview.removeprefix(node.label + " ")
    return node.preview


class TreeCommands:
    """Needs from the session: tree, slots, prompt, model, runtime, generator, initial_state,
    mounted_name, states_folder, zero(), start()."""

    # --- position ------------------------------------------------------------------------------

    def _enter(self, node: Node) -> None:
        self.slots = self.tree.materialize(node, self._rebuild)
        self.prompt = node.prompt

    def _rebuild(self, hollow: Hollow, kept: list[Snapshot]) -> Snapshot:
        """A snapshot from its token ids: one prefill from the longest kept prefix."""
        n = len(hollow.tokens)
        base = max((s for s in kept if len(s.tokens) <= n and hollow.tokens[:len(s.tokens)]
                    == s.tokens), key=lambda s: len(s.tokens), default=None) or self.zero()
        if len(base.tokens) == n:
            return Snapshot(base.state, base.logits, hollow.tokens, hollow.transcript,
                            hollow.settings)
        state = base.state.clone()
        logits = self.runtime.prefill(list(hollow.tokens[len(base.tokens):]), state)
        return Snapshot(state, logits, hollow.tokens, hollow.transcript, hollow.settings)

    def where(self) -> str:
        node = self.tree.nodes[self.tree.current]
        return f"[{self.tree.branch}] {node.preview}"

    # --- commands ------------------------------------------------------------------------------

    def _on_undo(self, cmd: C.Undo, settings: SamplingSettings) -> Iterator[Event]:
        self._enter(self.tree.undo())
        yield Info(f"undone; now at {self.where()} (+redo puts it back)")

    def _on_redo(self, cmd: C.Redo, settings: SamplingSettings) -> Iterator[Event]:
        self._enter(self.tree.redo())
        yield Info(f"redone; now at {self.where()}")

    def _on_branch(self, cmd: C.Branch, settings: SamplingSettings) -> Iterator[Event]:
        sessionfile.session_path(cmd.name, Path("."))  # same rules as session names
        old = self.tree.branch
        self.tree.fork(cmd.name)
        yield Info(f"on new branch '{cmd.name}' (+switch {old} goes back)")

    def _on_switch(self, cmd: C.Switch, settings: SamplingSettings) -> Iterator[Event]:
        node = self.tree.switch(cmd.name)
        self._enter(node)
        yield Info(f"switched to {self.where()}")

    def _on_showtree(self, cmd: C.ShowTree, settings: SamplingSettings) -> Iterator[Event]:
        heads = self.tree.heads()
        yield ShowTree(tuple(TreeRow(depth, n.label, _shown(n), tuple(heads.get(n.id, ())),
                                     n.id == self.tree.current, n.id)
                             for depth, n in self.tree.walk()))

    def _on_goto(self, cmd: C.Goto, settings: SamplingSettings) -> Iterator[Event]:
        self._enter(self.tree.goto(cmd.node_id))
        yield Info(f"now at #{cmd.node_id} {self.where()}")

    def _on_showpath(self, cmd: C.ShowPath, settings: SamplingSettings) -> Iterator[Event]:
        turns = self.slots["chat"].transcript
        if not any(t.role in ("user", "bot") for t in turns):
            yield Info(f"no messages yet on this path: the chat starts from prompt "
                       f"'{self.prompt.name}' (+tree shows every turn)")
            return
        yield ShowTranscript(turns)

    def _on_save(self, cmd: C.Save, settings: SamplingSettings) -> Iterator[Event]:
        path = sessionfile.session_path(cmd.name, self.states_folder)
        size = sessionfile.save_session(self, path)
        yield Info(f"saved '{cmd.name}' ({size / 1e6:.1f} MB, {len(self.tree.nodes)} turns) "
                   f"to {path}")

    def _on_load(self, cmd: C.Load, settings: SamplingSettings) -> Iterator[Event]:
        self.load_named(cmd.name)
        yield Info(f"loaded '{cmd.name}': {len(self.tree.nodes)} turns, at {self.where()}")

    def _on_sessions(self, cmd: C.Sessions, settings: SamplingSettings) -> Iterator[Event]:
        names = sessionfile.list_sessions(self.states_folder)
        yield Info(", ".join(names) if names else f"no saved sessions in {self.states_folder}")

    def _on_export(self, cmd: C.Export, settings: SamplingSettings) -> Iterator[Event]:
        path = Path(cmd.path).expanduser()
        if not path.parent.is_dir():  # a typo in a folder name must not create folders
            raise ChatRWKVError(f"cannot write {path}: no folder {path.parent} (create it first)")
        turns = self.slots["chat"].transcript
        text = transcript.to_markdown(turns, self.prompt) if cmd.fmt == "md" \
            else transcript.to_json(turns, self.prompt)
        sessionfile.atomic_write(path, text.encode("utf-8"))
        yield Info(f"wrote {path}")

    def _on_import(self, cmd: C.Import, settings: SamplingSettings) -> Iterator[Event]:
        messages = transcript.read_json(Path(cmd.path).expanduser())
        slots, tokens = transcript.rebuild(self, messages)
        self.slots = slots
        self.record("import", first_words(Path(cmd.path).name))
        yield Info(f"imported {len(messages)} messages ({tokens} tokens, one prefill)")

    def _on_mountstate(self, cmd: C.MountState, settings: SamplingSettings) -> Iterator[Event]:
        self.mount(cmd.path)
        yield Info(f"state '{Path(cmd.path).name}' mounted; the conversation starts over from it")

    # --- used by the command line too ----------------------------------------------------------

    def load_named(self, name: str) -> None:
        """Replace the whole session by a saved one; raises StateFileError and changes nothing."""
        loaded = sessionfile.load_session(self, sessionfile.session_path(name,
                                                                         self.states_folder))
        tree: Conversation = loaded.tree
        old = self.tree, self.initial_state
        self.tree, self.initial_state = tree, loaded.initial_state
        try:
            slots = tree.materialize(tree.nodes[tree.current], self._rebuild)
        except BaseException:
            self.tree, self.initial_state = old
            raise
        self.slots, self.prompt = slots, tree.nodes[tree.current].prompt
        self.mounted_name = loaded.mounted_name
        self.generator.set_state(loaded.rng)

    def save_named(self, name: str) -> Path:
        path = sessionfile.session_path(name, self.states_folder)
        sessionfile.save_session(self, path)
        return path

    def mount(self, path: str | Path) -> None:
        """Start over (prompt included) from a state-tuning file's state."""
        state = mount_state(path, self.model)
        old = self.initial_state
        self.initial_state = state
        try:
            self.start(self.prompt, label="state")
        except BaseException:
            self.initial_state = old
            raise
        self.mounted_name = Path(path).name
