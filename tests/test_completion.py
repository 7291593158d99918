"""Tab completion in the chat (issue 15 item 14): the completer line by line."""

from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document

from chatrwkv.completion import ChatCompleter


def complete(completer, text):
    return [(c.text, c.start_position)
            for c in completer.get_completions(Document(text, len(text)), CompleteEvent(True))]


def make():
    return ChatCompleter(sessions=lambda: ["last", "story", "study"],
                         branches=lambda: {"main": 0, "alt": 3, "alpha": 5})


def test_command_names():
    assert ("+load", -3) in complete(make(), "+lo")
    assert complete(make(), "+goto") == []  # complete already


def test_session_names_after_load_and_branches_after_switch():
    c = make()
    assert complete(c, "+load st") == [("story", -2), ("study", -2)]
    assert complete(c, "+load ") == [("last", 0), ("story", 0), ("study", 0)]
    assert complete(c, "+LOAD la") == [("last", -2)]
    assert complete(c, "+switch al") == [("alpha", -2), ("alt", -2)]
    assert complete(c, "+switch main") == []
    assert complete(c, "+save st") == []  # a new name: nothing to offer


def test_paths_after_state_import_export(tmp_path, monkeypatch):
    (tmp_path / "chat.json").write_text("[]")
    (tmp_path / "tuned.pth").write_bytes(b"")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    c = make()
    assert complete(c, "+import ch") == [("at.json", 0)]
    assert complete(c, "+state tu") == [("ned.pth", 0)]
    assert ("ub", 0) in complete(c, "+export md s")
    assert complete(c, "+export j") == [("json", -1)]
    assert complete(c, "+export xml s") == []
    assert {t for t, _ in complete(c, f"+import {tmp_path}/")} >= {"chat.json", "tuned.pth"}


def test_prompt_names_still_complete():
    assert ("english-world", -4) in complete(make(), "+prompt engl")
