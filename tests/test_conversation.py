"""The conversation tree through the session: undo/redo, branches, `+` siblings, the tree view,
and the memory bound (evicted nodes are rebuilt by prefill)."""

import torch
from chat_fakes import FakeModel, FakeTokenizer

from chatrwkv import commands as C
from chatrwkv.conversation import Hollow
from chatrwkv.events import Info, Problem, ShowTranscript, ShowTree
from chatrwkv.prompts import parse_prompt
from chatrwkv.session import Session

PROMPT = parse_prompt('user = "User"\nbot = "Bot"\ninit = "User: hi\\n\\nBot: hello"', "t")


def make(tmp_path, seed=0, **kw):
    s = Session(FakeModel(), FakeTokenizer(), PROMPT, seed=seed, states_folder=tmp_path, **kw)
    s.start(PROMPT)
    return s


def run(session, line):
    return list(session.handle(C.parse(line)))


def test_undo_returns_the_exact_logits_and_redo_goes_forward(tmp_path):
    s = make(tmp_path)
    run(s, "first")
    before = s.slots["chat"]
    logits = before.logits.clone()
    run(s, "second")
    assert not torch.equal(s.slots["chat"].logits, logits)
    after = s.slots["chat"]
    assert isinstance(run(s, "+undo")[0], Info)
    assert torch.equal(s.slots["chat"].logits, logits) and s.slots["chat"].state.equal(
        before.state)
    run(s, "+redo")
    assert s.slots["chat"] is after
    run(s, "+undo")
    run(s, "+undo")
    run(s, "+undo")  # back at the prompt
    assert isinstance(run(s, "+undo")[0], Problem)
    assert s.slots["chat"] is s.slots["chat_init"]
    assert isinstance(run(s, "+redo")[-1], Info)


def test_a_new_turn_after_undo_clears_redo(tmp_path):
    s = make(tmp_path)
    run(s, "first")
    run(s, "+undo")
    run(s, "other")
    assert isinstance(run(s, "+redo")[0], Problem)


def test_branches_evolve_independently_and_switching_is_exact(tmp_path):
    s = make(tmp_path)
    run(s, "common")
    assert "new branch 'alt'" in run(s, "+branch alt")[0].text
    run(s, "only on alt")
    alt = s.slots["chat"]
    run(s, "+switch main")
    main_logits = s.slots["chat"].logits.clone()
    run(s, "only on main")
    main = s.slots["chat"]
    assert [t.text for t in main.transcript if t.role == "user"] == ["common", "only on main"]
    assert [t.text for t in alt.transcript if t.role == "user"] == ["common", "only on alt"]
    for _ in range(2):
        run(s, "+switch alt")
        assert torch.equal(s.slots["chat"].logits, alt.logits)
        run(s, "+switch main")
        assert torch.equal(s.slots["chat"].logits, main.logits)
    assert not torch.equal(main_logits, main.logits)
    assert isinstance(run(s, "+branch alt")[0], Problem)
    assert isinstance(run(s, "+switch nope")[0], Problem)
    assert isinstance(run(s, "+branch ../x")[0], Problem)


def test_plus_keeps_the_replaced_reply_as_a_sibling(tmp_path):
    s = make(tmp_path)
    run(s, "hello")
    first = s.tree.current
    run(s, "+")
    run(s, "+")
    parent = s.tree.nodes[first].parent
    assert s.tree.nodes[parent].children == [first, first + 1, first + 2]
    tree = run(s, "+tree")[0]
    assert isinstance(tree, ShowTree)
    assert [r.depth for r in tree.rows] == [0, 1, 1, 1]
    assert [r.current for r in tree.rows] == [False, False, False, True]
    assert tree.rows[-1].branches == ("main",)
    assert tree.rows[1].preview.startswith("hello → ")
    path = run(s, "+path")[0]
    assert isinstance(path, ShowTranscript) and path.turns == s.slots["chat"].transcript


def test_memory_is_bounded_and_old_nodes_are_rebuilt(tmp_path):
    s = make(tmp_path, max_live=3)
    logits = []
    for i in range(12):
        run(s, f"message {i}")
        logits.append(s.slots["chat"].logits.clone())
    kept = s.tree.kept_snapshots()
    # the current node's slots plus those of the two other live nodes, nothing older
    assert len(kept) <= 3 * 3
    assert sum(isinstance(x, Hollow) for n in s.tree.nodes.values() for x in n.slots.values()) > 12
    for i in range(11, 0, -1):
        run(s, "+undo")
        # rebuilt by one prefill: sequence vs token-by-token fp32 rounding only
        assert torch.allclose(s.slots["chat"].logits, logits[i - 1], atol=1e-5)
    assert len(s.tree.kept_snapshots()) <= 3 * 3 + 1
