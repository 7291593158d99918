"""The command parser, line by line, plus fuzzing."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatrwkv import commands as C
from chatrwkv.commands import Overrides, parse

NO = Overrides()

TABLE = [
    ("hello there", C.Message(text="hello there")),
    ("  hello  ", C.Message(text="hello")),
    ("", C.Empty()),
    ("   ", C.Empty()),
    ("line one\\nline two", C.Message(text="line one\nline two")),
    ("\\+1 agreed", C.Message(text="+1 agreed")),
    ("+", C.Regenerate()),
    ("+reset", C.Reset()),
    ("+RESET", C.Reset()),
    ("+prompt prompts/x.toml", C.LoadPrompt(path="prompts/x.toml")),
    ("+prompt   english-pile  ", C.LoadPrompt(path="english-pile")),
    ("+gen Once upon a time", C.Generate(kind="gen", text="Once upon a time")),
    ("+GEN Once", C.Generate(kind="gen", text="Once")),
    ("+gen\nmulti\nline", C.Generate(kind="gen", text="multi\nline")),
    ("+i write a poem", C.Generate(kind="i", text="write a poem")),
    ("+qq what is 2+2?", C.Generate(kind="qq", text="what is 2+2?")),
    ("+qa why is the sky blue", C.Generate(kind="qa", text="why is the sky blue")),
    ("++", C.Retry()),
    ("+++", C.Continue()),
    ("+help", C.Help()),
    ("+exit", C.Exit()),
    # options: anywhere, removed exactly as typed, this line only
    ("hi -temp=1.0", C.Message(overrides=Overrides(temperature=1.0), text="hi")),
    ("-temp=0.5 hi", C.Message(overrides=Overrides(temperature=0.5), text="hi")),
    ("a -top_p=0.9 b", C.Message(overrides=Overrides(top_p=0.9), text="a b")),
    ("+gen -temp=0 x -top_p=1", C.Generate(overrides=Overrides(0.0, 1.0), kind="gen", text="x")),
    ("+ -temp=2", C.Regenerate(overrides=Overrides(temperature=2.0))),
    ("+++ -top_p=0.25", C.Continue(overrides=Overrides(top_p=0.25))),
    ("x-temp=1.0", C.Message(text="x-temp=1.0")),  # not a word of its own: plain text
    ("-temp=1e0 y", C.Message(overrides=Overrides(temperature=1.0), text="y")),
]


@pytest.mark.parametrize("line,expected", TABLE)
def test_parse_table(line, expected):
    assert parse(line) == expected


ERRORS = [
    ("+foo", "unknown command +foo"),
    ("+1 agreed", "unknown command +1"),
    ("+reset now", "+reset takes no text"),
    ("++ again", "++ takes no text"),
    ("+gen", "+gen needs text"),
    ("+gen   ", "+gen needs text"),
    ("+prompt", "+prompt needs text"),
    ("+qa", "+qa needs text"),
    ("hi -temp=abc", "bad -temp=abc"),
    ("hi -temp=", "bad -temp="),
    ("hi -temp=-1", "bad -temp=-1"),
    ("hi -temp=nan", "bad -temp=nan"),
    ("hi -temp=9", "bad -temp=9"),
    ("hi -top_p=1.5", "bad -top_p=1.5"),
    ("hi -temp=1 -temp=2", "-temp is given twice"),
    ("-temp=1", "options alone do nothing"),
]


@pytest.mark.parametrize("line,start", ERRORS)
def test_parse_errors(line, start):
    got = parse(line)
    assert isinstance(got, C.ParseError)
    assert got.message.startswith(start), got.message
    assert "\n" not in got.message


ARGUMENT = {"+branch": "alt", "+switch": "main", "+save": "s1", "+load": "s1",
            "+export": "md out.md", "+goto": "3"}


def test_every_command_is_documented_and_parses():
    for name, spec in C.COMMANDS.items():
        assert spec.usage.split()[0] == name and spec.help
        line = name + (" " + ARGUMENT.get(name, "some text") if spec.takes_text else "")
        assert not isinstance(parse(line), (C.ParseError, C.Message)), line


@pytest.mark.parametrize("line, expected", [
    ("+undo", C.Undo()), ("+redo", C.Redo()), ("+tree", C.ShowTree()), ("+path", C.ShowPath()),
    ("+branch alt", C.Branch(name="alt")), ("+switch main", C.Switch(name="main")),
    ("+save my-chat", C.Save(name="my-chat")), ("+load ../x", C.Load(name="../x")),
    ("+export json a b.json", C.Export(fmt="json", path="a b.json")),
    ("+export MD x.md", C.Export(fmt="md", path="x.md")),
    ("+import t.json", C.Import(path="t.json")), ("+state s.pth", C.MountState(path="s.pth")),
])
def test_tree_and_file_commands(line, expected):
    assert parse(line) == expected


@pytest.mark.parametrize("line, start", [
    ("+branch two words", "a name is one word"), ("+export txt f", "usage: +export"),
    ("+export md", "usage: +export"), ("+undo 2", "+undo takes no text"),
    ("+save", "+save needs text"),
])
def test_tree_and_file_command_errors(line, start):
    got = parse(line)
    assert isinstance(got, C.ParseError) and got.message.startswith(start), got


@settings(max_examples=400, deadline=None)
@given(st.text())
def test_fuzz_never_raises(line):
    got = parse(line)
    assert isinstance(got, C.Command)
    if isinstance(got, C.Message):
        assert got.text and got.text == got.text.strip() or got.text.startswith("+")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["+", "++", "+gen", "-temp=", "-top_p=", "0.5", "x", " ", "\\n",
                                 "\n", "+qa", "-", "=", "1"]), max_size=12))
def test_fuzz_command_like(parts):
    assert isinstance(parse("".join(parts)), C.Command)
