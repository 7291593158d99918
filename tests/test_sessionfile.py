"""Session files: save / quit / resume gives the same next reply; foreign, damaged, future and
escaping files are refused with the session intact; saves are atomic; export / import; the CLI's
--resume and the autosave."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from chat_fakes import BigramModel, FakeModel, FakeTokenizer, read_session_file
from safetensors.torch import save_file

from chatrwkv import commands as C
from chatrwkv import sessionfile
from chatrwkv.conversation import Hollow
from chatrwkv.events import Chunk, Info, Problem
from chatrwkv.prompts import parse_prompt
from chatrwkv.runtime import Runtime
from chatrwkv.session import Session

ROOT = Path(__file__).resolve().parent.parent
PROMPT = parse_prompt('user = "User"\nbot = "Bot"\ninit = "User: hi\\n\\nBot: hello"', "t")


def make(tmp_path, model=None, tokenizer=None, start=True, **kw):
    s = Session(model or FakeModel(), tokenizer or FakeTokenizer(), PROMPT, seed=7,
                states_folder=tmp_path, **kw)
    if start:
        s.start(PROMPT)
    return s


def run(session, line):
    events = list(session.handle(C.parse(line)))
    return "".join(e.text for e in events if isinstance(e, Chunk)), events


def test_save_quit_resume_gives_the_same_next_reply(tmp_path):
    a = make(tmp_path)
    run(a, "first")
    run(a, "+gen free text")
    _, events = run(a, "+save s1")
    assert isinstance(events[0], Info) and (tmp_path / "s1.session").exists()
    uninterrupted = [run(a, "second")[0], run(a, "+")[0], run(a, "++")[0]]

    b = make(tmp_path, start=False)  # a fresh process: nothing read but the file
    calls_before = len(b.model.calls)
    _, events = run(b, "+load s1")
    assert isinstance(events[0], Info), events
    assert len(b.model.calls) == calls_before  # resuming costs no prefill
    resumed = [run(b, "second")[0], run(b, "+")[0], run(b, "++")[0]]
    assert resumed == uninterrupted
    assert len(b.tree.nodes) == len(a.tree.nodes)


def test_refusals_keep_the_session(tmp_path):
    a = make(tmp_path)
    run(a, "hello")
    run(a, "+save good")
    other = make(tmp_path, model=FakeModel(seed=1))
    run(other, "mine")
    run(other, "+save mine")
    chat, nodes = other.slots["chat"], len(other.tree.nodes)

    data = (tmp_path / "mine.session").read_bytes()
    (tmp_path / "cut.session").write_bytes(data[: len(data) // 2])
    future = tmp_path / "future.session"
    meta, tensors = read_session_file(tmp_path / "mine.session")
    save_file(tensors, str(future), metadata={**meta, "format_version": "99"})
    save_file(tensors, str(tmp_path / "old.session"), metadata={**meta, "format_version": "1"})
    body = json.loads(meta["body"])
    body["current"] = 999
    save_file(tensors, str(tmp_path / "bad.session"), metadata={**meta, "body": json.dumps(body)})

    for line, reason in [("+load good", "saved with another model"),
                         ("+load cut", "not a readable session file"),
                         ("+load future", "newer chatrwkv"),
                         ("+load old", "session format 1 is from a development version"),
                         ("+load bad", "damaged session file"),
                         ("+load ../x", "bad session name"),
                         ("+save ../x", "bad session name"),
                         ("+load .hidden", "bad session name"),
                         ("+load missing", "no saved session 'missing'")]:
        _, events = run(other, line)
        assert len(events) == 1 and isinstance(events[0], Problem), (line, events)
        assert reason in events[0].text and "\n" not in events[0].text, events[0].text
        assert other.slots["chat"] is chat and len(other.tree.nodes) == nodes
    assert not (tmp_path.parent / "x.session").exists()


def test_a_save_interrupted_before_the_rename_leaves_the_old_file(tmp_path, monkeypatch):
    a = make(tmp_path)
    run(a, "one")
    run(a, "+save s")
    old = (tmp_path / "s.session").read_bytes()
    run(a, "two")

    def crash(src, dst):
        raise OSError("power cut")
    monkeypatch.setattr(os, "replace", crash)
    _, events = run(a, "+save s")
    assert isinstance(events[0], Problem) and "power cut; the old file is kept" in events[0].text
    monkeypatch.undo()
    assert (tmp_path / "s.session").read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.session"]  # no temp left behind
    b = make(tmp_path)
    run(b, "+load s")
    assert [t.text for t in b.slots["chat"].transcript if t.role == "user"] == ["one"]


def test_hollow_nodes_survive_the_file_and_are_rebuilt(tmp_path):
    a = make(tmp_path, max_live=2)
    logits = []
    for i in range(8):
        run(a, f"turn {i}")
        logits.append(a.slots["chat"].logits.clone())
    run(a, "+save long")
    size = (tmp_path / "long.session").stat().st_size
    b = make(tmp_path, max_live=2)
    run(b, "+load long")
    for i in range(7, 0, -1):
        run(b, "+undo")
        assert torch.allclose(b.slots["chat"].logits, logits[i - 1], atol=1e-5)
    run(b, "+save long2")  # the file stays small: a few states, token deltas
    assert (tmp_path / "long2.session").stat().st_size < 2 * size


class ByteTokenizer(FakeTokenizer):
    """One token per byte (no "\\n\\n" merge), so re-encoding a reply gives the sampled ids."""

    def encode(self, text):
        return [1 + b for b in text.encode("utf-8")]


YES = {":": " ", " ": "Y", "Y": "e", "e": "s", "s": "!", "!": "\n", "\n": "\n"}


@pytest.mark.parametrize("model", [BigramModel, FakeModel])
def test_export_then_import_gives_the_same_transcript_and_logits(tmp_path, model):
    """The bigram model replies " Yes!" (canonical text: same tokens after import); the fake RNN
    babbles, so there the check is the transcript and a state in step with its tokens."""
    new = (lambda: BigramModel(YES)) if model is BigramModel else FakeModel
    a = make(tmp_path, model=new(), tokenizer=ByteTokenizer())
    for msg in ["hello there", "how are you", "tell me more"]:
        run(a, msg)
    run(a, f"+export json {tmp_path / 'chat.json'}")
    run(a, f"+export md {tmp_path / 'chat.md'}")
    messages = json.loads((tmp_path / "chat.json").read_text())
    assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * 3
    assert "**User:** tell me more" in (tmp_path / "chat.md").read_text()

    b = make(tmp_path, model=new(), tokenizer=ByteTokenizer())
    fed = []
    b.runtime.forward = lambda tokens, state, f=b.runtime.forward: fed.append(len(tokens)) or f(
        tokens, state)
    _, events = run(b, f"+import {tmp_path / 'chat.json'}")
    assert isinstance(events[0], Info), events
    assert b.slots["chat"].transcript == a.slots["chat"].transcript
    assert sum(fed) == len(b.slots["chat"].tokens)  # every token read once
    replay = Runtime(b.model).prefill(list(b.slots["chat"].tokens), b.model.zero_state())
    assert torch.allclose(b.slots["chat"].logits, replay, atol=1e-5)
    if model is BigramModel:
        assert b.slots["chat"].tokens == a.slots["chat"].tokens
        assert torch.allclose(b.slots["chat"].logits, a.slots["chat"].logits, atol=1e-5)
    assert run(b, "+")[0]  # chat_pre was rebuilt too
    run(b, "+undo")
    run(b, "+undo")
    assert b.slots["chat"].transcript == b.slots["chat_init"].transcript  # before the import


def test_import_refuses_bad_files(tmp_path):
    s = make(tmp_path)
    chat = s.slots["chat"]
    (tmp_path / "a.json").write_text('{"role": "user"}')
    (tmp_path / "b.json").write_text('[{"role": "robot", "content": "x"}]')
    (tmp_path / "c.json").write_text("not json")
    for name in ["a.json", "b.json", "c.json", "missing.json"]:
        _, events = run(s, f"+import {tmp_path / name}")
        assert isinstance(events[0], Problem) and "\n" not in events[0].text
    assert s.slots["chat"] is chat


def test_names_are_plain_words(tmp_path):
    assert sessionfile.session_path("ok-name_1.2", tmp_path) == tmp_path / "ok-name_1.2.session"
    for bad in ["../x", "a/b", "", ".x", "x" * 65, "a b", "/abs", "..", "C:\\x"]:
        with pytest.raises(sessionfile.StateFileError):
            sessionfile.session_path(bad, tmp_path)


def test_piped_chat_autosaves_and_cli_resumes(tmp_path):
    from chatrwkv.synth import write_checkpoint

    ckpt = write_checkpoint(tmp_path / "m.pth", "7.0", n_layer=2, n_embd=64, vocab_size=65536,
                            head_size=16)
    env = dict(os.environ, CHATRWKV_HOME=str(tmp_path / "home"), PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "chatrwkv", "--model", str(ckpt), "--seed", "3",
           "--max-tokens", "4"]
    first = subprocess.run(cmd, input="+gen hello bot\n+branch side\n", capture_output=True,
                           text=True, timeout=120, env=env, check=False)
    assert first.returncode == 0, first.stderr
    # `last` is per model: states/last/FINGERPRINT.session
    assert len(list((tmp_path / "home" / "states" / "last").glob("*.session"))) == 1
    second = subprocess.run([*cmd, "--resume"], input="+tree\n", capture_output=True,
                            text=True, timeout=120, env=env, check=False)
    assert second.returncode == 0, second.stderr
    assert "\n  * #1 gen: hello bot" in second.stdout and "[main, side]" in second.stdout
    third = subprocess.run([*cmd, "--resume", "nope"], input="", capture_output=True,
                           text=True, timeout=120, env=env, check=False)
    assert third.returncode == 1 and third.stderr.count("\n") == 1
    assert "no saved session 'nope'" in third.stderr


def grow(session, turns, turn_tokens=50):
    """`turns` chat turns recorded as the REPL records them, without sampling (as the benchmark)."""
    from chatrwkv.events import Snapshot, Turn

    base = session.slots["chat"]
    tokens, transcript = base.tokens, base.transcript
    for i in range(turns):
        tokens = tokens + tuple((7 * i + j) % 250 + 1 for j in range(turn_tokens))
        transcript = transcript + (Turn("user", f"message {i}"), Turn("bot", f"reply {i}"))
        state = base.state.clone()
        state.h += i  # a state of its own per turn, so each one is a different snapshot
        snap = Snapshot(state, base.logits + i, tokens, transcript, session.settings)
        session.slots = {**session.slots, "chat_pre": snap, "chat": snap}
        session.record("chat", f"turn {i}")


def python_calls(fn):
    """Python-level function calls made by fn(), dataclass-generated __init__s aside (they are
    the Turn records of the one transcript a resume must hand to the session)."""
    count = 0

    def profile(frame, event, arg):
        nonlocal count
        if event == "call" and frame.f_code.co_filename != "<string>":
            count += 1
    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return count


def test_resume_work_does_not_grow_with_the_conversation(tmp_path):
    """Resuming reads one state and decodes the current node only: the same Python-level work
    for 3 turns and 300, no model call, no other node built, no other snapshot decoded."""
    calls = {}
    for turns in (3, 300):
        a = make(tmp_path, max_live=4)
        grow(a, turns)
        a.save_named(f"t{turns}")
        b = make(tmp_path, start=False, max_live=4)
        before = len(b.model.calls)
        calls[turns] = python_calls(lambda b=b, t=turns: b.load_named(f"t{t}"))
        assert len(b.model.calls) == before
        assert len(b.tree.nodes) == turns + 1 and b.tree.nodes.built() == 1
        assert b.slots["chat"].tokens == a.slots["chat"].tokens
        assert b.slots["chat"].transcript == a.slots["chat"].transcript
        assert b.slots["chat"].state.equal(a.slots["chat"].state)
    assert calls[300] <= calls[3] + 5, calls

    # a resumed session saves again without decoding the turns it did not visit
    b.save_named("again")
    hollows = [s for n in b.tree.nodes.values() for s in n.slots.values()
               if isinstance(s, Hollow)]
    assert len(hollows) > 290 and sum(h.decoded for h in hollows) <= 2
    c = make(tmp_path, start=False, max_live=4)
    c.load_named("again")
    for k in (a, c):
        run(k, "+undo")
        run(k, "+undo")
    assert c.slots["chat"].transcript == a.slots["chat"].transcript
    assert c.slots["chat"].tokens == a.slots["chat"].tokens  # rebuilt by prefill from them


def test_every_node_survives_save_load_save(tmp_path):
    """A tree with branches, `+` siblings, undo, free text, a reset and a qa: after save / load
    and after save / load / save / load, every node's snapshots have the same token ids,
    transcript and settings as in the session that wrote them."""
    a = make(tmp_path, max_live=2)
    for line in ["one", "two", "+", "+branch side", "three", "+gen once upon", "++", "+undo",
                 "four", "+switch main", "+undo", "five", "+reset", "six", "+qa why", "seven",
                 "+", "+switch side", "eight"]:
        run(a, line)
    a.save_named("tree")
    b = make(tmp_path, start=False, max_live=2)
    b.load_named("tree")
    b.save_named("again")
    c = make(tmp_path, start=False, max_live=2)
    c.load_named("again")
    for other in (b, c):
        assert len(other.tree.nodes) == len(a.tree.nodes)
        assert other.tree.branches == a.tree.branches and other.tree.current == a.tree.current
        for node_id, node in a.tree.nodes.items():
            mine = other.tree.nodes[node_id]
            assert (mine.parent, mine.children, mine.label) == (node.parent, node.children,
                                                                node.label)
            assert mine.slots.keys() == node.slots.keys()
            for k, s in node.slots.items():
                assert mine.slots[k].tokens == s.tokens, (node_id, k)
                assert mine.slots[k].transcript == s.transcript, (node_id, k)
                assert mine.slots[k].settings == s.settings
