"""Issue 15 items 12-13: the tree view and getting to every node of it (+tree ids, +goto,
+switch keeping redo), `+path` at the root, `+export` into a missing folder."""

import json

import pytest
from chat_fakes import FakeModel, FakeTokenizer, read_session_file

from chatrwkv import commands as C
from chatrwkv.events import Info, Problem, ShowTranscript, ShowTree
from chatrwkv.prompts import parse_prompt
from chatrwkv.session import Session
from chatrwkv.ui import tree_lines

PROMPT = parse_prompt('user = "User"\nbot = "Bot"\ninit = "User: hi\\n\\nBot: hello"', "t")


def make(tmp_path, **kw):
    s = Session(FakeModel(), FakeTokenizer(), PROMPT, seed=0, states_folder=tmp_path, **kw)
    s.start(PROMPT)
    return s


def run(session, line):
    return list(session.handle(C.parse(line)))


def tree(session) -> ShowTree:
    (event,) = run(session, "+tree")
    assert isinstance(event, ShowTree)
    return event


def user_messages(session) -> list[str]:
    return [t.text for t in session.slots["chat"].transcript if t.role == "user"]


def test_goto_parses_a_node_number():
    assert C.parse("+goto 12") == C.Goto(node_id=12)
    assert C.parse("+goto #3") == C.Goto(node_id=3)
    for bad in ("+goto x", "+goto -1", "+goto 1 2", "+goto ３", "+goto 9999999999"):
        assert isinstance(C.parse(bad), C.ParseError), bad


def test_independent_gens_are_siblings_and_the_root_says_prompt_once(tmp_path):
    s = make(tmp_path)
    run(s, "hello")
    run(s, "+gen one")
    run(s, "+gen two")
    run(s, "+++")          # continues "two": nested under it
    run(s, "+gen three")   # starts afresh: beside "one" and "two"
    rows = tree(s).rows
    assert [(r.depth, r.label) for r in rows] == [(0, "prompt"), (1, "chat"), (2, "gen"),
                                                  (2, "gen"), (3, "gen"), (2, "gen")]
    lines = tree_lines(tree(s))
    assert lines[0] == "- #0 prompt: t"
    assert not any("prompt prompt" in line for line in lines)
    # undo from a fresh +gen goes back to the chat turn it was made at
    run(s, "+undo")
    assert s.tree.current == rows[1].node_id


def test_every_node_is_reachable_with_goto(tmp_path):
    s = make(tmp_path)
    run(s, "first")
    replaced = s.tree.current
    replaced_chat = s.slots["chat"]
    run(s, "+")                    # the first reply is replaced
    run(s, "second")
    left_behind = s.tree.current
    run(s, "+undo")
    run(s, "other")                # "second" is left behind: +redo cannot reach it any more
    assert isinstance(run(s, "+redo")[0], Problem)
    ids = [r.node_id for r in tree(s).rows]
    assert sorted(ids) == list(range(len(s.tree.nodes)))  # every node is listed with its id
    assert all(f"#{i} " in line for i, line in zip(ids, tree_lines(tree(s))))

    assert isinstance(run(s, f"+goto {left_behind}")[0], Info)
    assert user_messages(s) == ["first", "second"]
    assert s.tree.branches["main"] == left_behind
    run(s, f"+goto #{replaced}")
    assert s.slots["chat"] is replaced_chat and user_messages(s) == ["first"]
    (problem,) = run(s, "+goto 99")
    assert isinstance(problem, Problem) and "no node #99" in problem.text
    assert s.slots["chat"] is replaced_chat  # nothing changed


def test_goto_an_ancestor_is_a_run_of_undos(tmp_path):
    s = make(tmp_path)
    for text in ("a", "b", "c"):
        run(s, text)
    end = s.tree.current
    run(s, "+goto 0")
    assert user_messages(s) == []
    for expected in (["a"], ["a", "b"], ["a", "b", "c"]):
        run(s, "+redo")
        assert user_messages(s) == expected
    assert s.tree.current == end


def test_switch_keeps_each_branchs_redo_stack(tmp_path):
    s = make(tmp_path)
    run(s, "one")
    run(s, "two")
    run(s, "+undo")                # main can redo "two"
    run(s, "+branch alt")
    run(s, "+undo")                # alt can redo "one"
    run(s, "+switch main")
    run(s, "+redo")
    assert user_messages(s) == ["one", "two"]
    run(s, "+switch alt")
    run(s, "+redo")
    assert user_messages(s) == ["one"]


def test_path_at_the_root_says_so(tmp_path):
    s = make(tmp_path)
    (event,) = run(s, "+path")
    assert isinstance(event, Info) and "no messages yet" in event.text and "'t'" in event.text
    run(s, "hi")
    (event,) = run(s, "+path")
    assert isinstance(event, ShowTranscript)


def test_export_into_a_missing_folder_is_refused(tmp_path):
    s = make(tmp_path)
    run(s, "hi")
    target = tmp_path / "no" / "such" / "folder" / "chat.json"
    (event,) = run(s, f"+export json {target}")
    assert isinstance(event, Problem) and "no folder" in event.text
    assert event.text.count("\n") == 0 and not (tmp_path / "no").exists()
    (event,) = run(s, f"+export json {tmp_path / 'chat.json'}")
    assert isinstance(event, Info)
    assert json.loads((tmp_path / "chat.json").read_text())


@pytest.mark.parametrize("line", ["+goto 0", "+switch main"])
def test_moves_are_recorded_in_no_new_node(tmp_path, line):
    s = make(tmp_path)
    run(s, "hi")
    n = len(s.tree.nodes)
    run(s, line)
    assert len(s.tree.nodes) == n


def test_no_label_is_said_twice(tmp_path):
    s = make(tmp_path)
    run(s, "hi")
    run(s, "+reset")
    s.tree.nodes[0].preview = "prompt t"  # as files saved before this fix have it
    lines = tree_lines(tree(s))
    assert lines[0] == "- #0 prompt: t" and lines[-1].endswith("#2 reset [main]")


def test_goto_and_parked_redo_survive_save_and_load(tmp_path):
    s = make(tmp_path)
    for text in ("a", "b"):
        run(s, text)
    run(s, "+goto 1")
    assert isinstance(run(s, "+save s1")[0], Info)
    t = make(tmp_path)
    assert isinstance(run(t, "+load s1")[0], Info)
    assert user_messages(t) == ["a"]
    run(t, "+redo")
    assert user_messages(t) == ["a", "b"]


def test_other_branches_redo_stacks_survive_save_and_load(tmp_path):
    s = make(tmp_path)
    run(s, "one")
    run(s, "two")
    run(s, "+undo")                # main can redo "two"
    run(s, "+branch alt")
    run(s, "+undo")                # alt can redo "one"
    run(s, "+switch main")         # alt's stack is parked
    assert s.tree.parked_redo["alt"]
    assert isinstance(run(s, "+save s2")[0], Info)
    t = make(tmp_path)
    assert isinstance(run(t, "+load s2")[0], Info)
    run(t, "+switch alt")
    run(t, "+redo")
    assert user_messages(t) == ["one"]
    run(t, "+switch main")
    run(t, "+redo")
    assert user_messages(t) == ["one", "two"]


def test_a_file_without_parked_redo_stacks_still_loads(tmp_path):
    """Files written before the other branches' redo stacks were saved have no `parked_redo`."""
    from safetensors.torch import save_file

    s = make(tmp_path)
    for line in ("one", "+undo", "+branch alt", "+switch main", "+save new"):
        run(s, line)
    meta, tensors = read_session_file(tmp_path / "new.session")
    body = json.loads(meta["body"])
    assert "parked_redo" in body
    del body["parked_redo"]
    save_file(tensors, str(tmp_path / "old.session"), metadata={**meta, "body": json.dumps(body)})
    t = make(tmp_path)
    assert isinstance(run(t, "+load old")[0], Info)
    run(t, "+redo")                # main's own stack was always saved
    assert user_messages(t) == ["one"]
    run(t, "+switch alt")
    assert isinstance(run(t, "+redo")[0], Problem)  # none parked for alt: nothing to redo


def test_parked_redo_of_an_unknown_branch_or_node_is_refused(tmp_path):
    from safetensors.torch import save_file

    s = make(tmp_path)
    for line in ("one", "+branch alt", "+undo", "+switch main", "+save f"):
        run(s, line)
    meta, tensors = read_session_file(tmp_path / "f.session")
    body = json.loads(meta["body"])
    assert body["parked_redo"] == {"alt": [1]}
    for bad in ({"nope": [1]}, {"alt": [99]}, {"main": [1]}, {"alt": ["1"]}, []):
        save_file(tensors, str(tmp_path / "bad.session"),
                  metadata={**meta, "body": json.dumps({**body, "parked_redo": bad})})
        (event,) = run(s, "+load bad")
        assert isinstance(event, Problem) and "damaged session file" in event.text, bad
