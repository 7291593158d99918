"""RWKV-7 G1 chat: think modes, system prompts, thinking shown apart, what a turn that thought
leaves in the state, export / import with reasoning, +set / +show, settings in session files.

The expected strings are written out here from RWKV-LM `RWKV-v7/RWKV7-G1x-templates.txt`."""

import dataclasses
import io
import json
import re

import pytest
import torch
from chat_fakes import FakeTokenizer, ScriptModel

from chatrwkv import commands as C
from chatrwkv.chatsettings import G1_SAMPLING, ChatOptions, profile_for
from chatrwkv.events import Chunk, Info, Problem, ReplyEnd, ShowSettings, ThinkChunk
from chatrwkv.prompts import load_prompt
from chatrwkv.sampling import SamplingSettings
from chatrwkv.session import Session
from chatrwkv.ui import run_piped, stats_line

GREEDY = dataclasses.replace(G1_SAMPLING, temperature=0.0)
THOUGHT = ">\nI should greet.\n</think>\nHello there!\n\n"


def g1(model, tok, think="think", history="answer", system="", tmp_path=None):
    prompt = dataclasses.replace(load_prompt("g1"), system=system)
    s = Session(model, tok, prompt, settings=GREEDY, seed=0, states_folder=tmp_path,
                options=ChatOptions(think=think, history=history, chat_max_tokens=200))
    s.start(prompt)
    return s


def run(s, line):
    return list(s.handle(C.parse(line)))


@pytest.fixture(scope="module")
def world():
    from chatrwkv.tokenizer import load_tokenizer
    return load_tokenizer(65536)


# --- exact token ids, World tokenizer ----------------------------------------------------------

@pytest.mark.parametrize("mode, fed", [
    ("off", ["User: hi\n\nAssistant:"]),
    ("fast", ["User: hi\n\nAssistant:", " <think>\n</think"]),
    ("think", ["User: hi\n\nAssistant:", " <think"]),
    ("think-bit", ["User: hi (think a bit)\n\nAssistant:", " <think"]),
    ("think-lot", ["User: hi (think a lot)\n\nAssistant:", " <think"]),
])
def test_think_modes_feed_the_template_token_ids(world, mode, fed):
    model = ScriptModel(world.encode(" Hi!\n\n"), vocab=65536, after=world.encode("\n\n")[0])
    s = g1(model, world, think=mode)
    assert model.calls == []  # a G1 chat with no system prompt feeds nothing at the start
    run(s, "hi")
    prefills = [c for c in model.calls if len(c) > 1]
    assert [world.decode(c) for c in prefills[:len(fed)]] == fed
    # one prefill per piece, and the ids are those of the whole template string
    assert [t for c in prefills[:len(fed)] for t in c] == world.encode("".join(fed))


def test_system_prompt_is_cleaned_and_fed_first(world):
    model = ScriptModel(world.encode(" Hi!\n\n"), vocab=65536, after=world.encode("\n\n")[0])
    s = g1(model, world, think="fast")
    model.calls.clear()
    events = run(s, "+system  Be brief.\r\n\r\n\r\nAnswer in English.  ")
    assert any(isinstance(e, Info) and "system prompt set" in e.text for e in events)
    assert model.calls == [world.encode("System: Be brief.\nAnswer in English.\n\n")]
    run(s, "hi")
    assert s.slots["chat_pre"].tokens == tuple(world.encode(
        "System: Be brief.\nAnswer in English.\n\nUser: hi\n\nAssistant:"))
    assert [c for c in model.calls if len(c) > 1][1:3] == [
        world.encode("User: hi\n\nAssistant:"), world.encode(" <think>\n</think")]
    # an empty +system clears it: back to the zero state, nothing fed
    model.calls.clear()
    run(s, "+system")
    assert model.calls == [] and s.prompt.system == "" and s.slots["chat"].tokens == ()


# --- a scripted reply that thinks, byte tokenizer -------------------------------------------

def scripted(history="answer", think="think"):
    tok = FakeTokenizer()
    return g1(ScriptModel(tok.encode(THOUGHT)), tok, think=think, history=history), tok


def test_thinking_streams_apart_from_the_answer_and_the_stats_split():
    s, tok = scripted()
    events = run(s, "hi")
    thinking = "".join(e.text for e in events if isinstance(e, ThinkChunk))
    answer = "".join(e.text for e in events if isinstance(e, Chunk))
    assert (thinking, answer) == ("I should greet.", "Hello there!")
    end = next(e for e in events if isinstance(e, ReplyEnd))
    n_thinking = len(tok.encode(">\nI should greet.\n</think>"))
    assert end.stats.tokens == len(tok.encode(THOUGHT)) and end.stats.thinking == n_thinking
    assert stats_line(end.stats, False).startswith(
        f"{end.stats.tokens} tokens (thinking {n_thinking}, answer "
        f"{end.stats.tokens - n_thinking})")
    roles = [(t.role, t.text) for t in s.slots["chat"].transcript[-3:]]
    assert roles == [("user", "hi"), ("think", "I should greet."), ("bot", "Hello there!")]


@pytest.mark.parametrize("history", ["answer", "full"])
def test_what_the_state_holds_after_a_turn_that_thought(history):
    s, tok = scripted(history)
    run(s, "hi")
    pre, done = s.slots["chat_pre"], s.slots["chat"]
    if history == "answer":  # as the templates lay out an earlier turn
        assert done.tokens == pre.tokens + tuple(tok.encode(" Hello there!\n\n"))
    else:
        assert done.tokens == pre.tokens + tuple(tok.encode(" <think" + THOUGHT))
    # and the state is exactly those tokens read from the start
    state = s.model.zero_state()
    s.runtime.prefill(list(done.tokens), state)
    assert torch.allclose(state.h, done.state.h, atol=1e-6)


def test_fast_mode_and_regenerate_reuse_the_prefix():
    tok = FakeTokenizer()
    s = g1(ScriptModel(tok.encode(">\nHello there!\n\n")), tok, think="fast")
    events = run(s, "hi")
    assert "".join(e.text for e in events if isinstance(e, Chunk)) == "Hello there!"
    assert not any(isinstance(e, ThinkChunk) for e in events)  # the fake think is empty
    first = s.slots["chat"].tokens
    run(s, "+")
    assert s.slots["chat"].tokens == first


def test_v2_prompts_do_not_think():
    tok = FakeTokenizer()
    model = ScriptModel(tok.encode(" <think>x</think> y\n\n"))
    s = Session(model, tok, load_prompt("english-world"), settings=GREEDY,
                options=ChatOptions(think="think"))
    s.start(s.prompt)
    events = run(s, "hi")
    assert not any(isinstance(e, ThinkChunk) for e in events)
    assert "".join(e.text for e in events if isinstance(e, Chunk)) == "<think>x</think> y"


def test_piped_prints_the_answer_unless_asked_for_the_thinking():
    for show, expected in ((False, "Hello there!\n"),
                           (True, "<think>I should greet.</think>\nHello there!\n")):
        s, _ = scripted()
        out, err = io.StringIO(), io.StringIO()
        run_piped(s, ["hi\n"], out, err, show_thinking=show)
        assert out.getvalue() == expected and err.getvalue() == ""


def test_export_keeps_reasoning_apart_and_import_reads_it_back(tmp_path):
    s, _ = scripted()
    run(s, "+system Be kind.")
    run(s, "hi")
    run(s, f"+export json {tmp_path / 'a.json'}")
    run(s, f"+export md {tmp_path / 'a.md'}")
    messages = json.loads((tmp_path / "a.json").read_text())
    assert messages == [{"role": "system", "content": "Be kind."},
                        {"role": "user", "content": "hi"},
                        {"role": "assistant", "content": "Hello there!",
                         "reasoning": "I should greet."}]
    md = (tmp_path / "a.md").read_text()
    assert "<summary>thinking</summary>\n\nI should greet.\n" in md
    assert "**Assistant:** Hello there!" in md and "**System:** Be kind." in md
    chat = s.slots["chat"]
    t, _ = scripted()
    events = run(t, f"+import {tmp_path / 'a.json'}")
    assert not any(isinstance(e, Problem) for e in events), events
    assert t.prompt.system == "Be kind."
    # the same tokens as the chat typed turn by turn, and the same export again
    assert t.slots["chat"].tokens == chat.tokens
    assert t.slots["chat_pre"].tokens == s.slots["chat_pre"].tokens
    run(t, f"+export json {tmp_path / 'b.json'}")
    assert json.loads((tmp_path / "b.json").read_text()) == messages


# --- +set / +show, settings in session files ---------------------------------------------------

@pytest.mark.parametrize("line, expected", [
    ("+set temp 0.7", C.SetOption(key="temp", value="0.7")),
    ("+set think think-bit", C.SetOption(key="think", value="think-bit")),
    ("+think fast", C.SetOption(key="think", value="fast")),
    ("+show", C.ShowSettings()),
    ("+system Be brief.", C.SetSystem(text="Be brief.")),
    ("+system", C.SetSystem(text="")),
    ("+set temp", C.ParseError(message="usage: +set KEY VALUE (+show lists the settings)")),
    ("+show all", C.ParseError(message="+show takes no text (usage: +show)")),
])
def test_parse_set_show_system(line, expected):
    assert C.parse(line) == expected


@pytest.mark.parametrize("line, info", [
    ("+set temperature 0.7", "temperature = 0.7"), ("+set top-p 0.2", "top_p = 0.2"),
    ("+set top_k 40", "top_k = 40"), ("+set presence 0", "presence = 0"),
    ("+set frequency 1.5", "frequency = 1.5"), ("+set decay 0.99", "decay = 0.99"),
    ("+set max_tokens 50", "max_tokens = 50"), ("+set chat_max_tokens 9", "chat_max_tokens = 9"),
    ("+set think off", "think = off"), ("+think think-lot", "think = think-lot"),
    ("+set history full", "history = full"),
])
def test_set_changes_one_setting(line, info):
    s, _ = scripted()
    before = s.settings, s.options
    events = run(s, line)
    assert events == [Info(info)]
    name = info.split(" = ")[0]
    assert (s.settings, s.options) != before
    assert dict(s.setting_commands.settings_rows())[name] == info.split(" = ")[1]


@pytest.mark.parametrize("line, problem", [
    ("+set temp 9", "bad temperature 9: temperature must be a number from 0 to 5 (0 is greedy)"),
    ("+set top_p x", "bad top_p x: top-p must be a number from 0 to 1"),
    ("+set top_k -1", "bad top_k -1: must be >= 0"),
    ("+set max_tokens 0", "bad max_tokens 0: must be >= 1"),
    ("+set think deep", ("bad think deep: unknown think mode 'deep' (use off, fast, think, "
                         "think-bit, think-lot)")),
    ("+set history some", "bad history some: use answer or full"),
    ("+set colour red", ("unknown setting 'colour' (+set KEY VALUE: temperature, top_p, "
                         "top_k, presence, frequency, decay, max_tokens, chat_max_tokens, think, "
                         "history)")),
])
def test_bad_set_is_one_line_and_changes_nothing(line, problem):
    s, _ = scripted()
    before = s.settings, s.options
    assert run(s, line) == [Problem(problem)]
    assert (s.settings, s.options) == before


def test_chat_max_tokens_bounds_a_reply():
    s, _ = scripted()
    run(s, "+set chat_max_tokens 5")
    end = next(e for e in run(s, "hi") if isinstance(e, ReplyEnd))
    assert end.stats.tokens == 5 and end.stats.thinking == 5


def test_show_lists_the_model_prompt_and_every_setting():
    s, _ = scripted()
    s.model.engine_path = "C step (test)"
    run(s, "+system Be brief.")
    (event,) = run(s, "+show")
    assert isinstance(event, ShowSettings)
    rows = dict(event.rows)
    assert [k for k, _ in event.rows] == [
        "model", "version", "layers x width", "vocabulary", "dtype", "device", "threads",
        "engine", "prompt", "system", "think", "history",
        "temperature", "top_p", "top_k", "presence", "frequency", "decay", "max_tokens",
        "chat_max_tokens"]
    assert rows["system"] == "Be brief." and rows["think"] == "think"
    assert rows["temperature"] == "0" and rows["top_p"] == "0.3" and rows["presence"] == "0.5"
    assert rows["engine"] == "C step (test)" and rows["prompt"].startswith("g1 (g1 style")
    out, err = io.StringIO(), io.StringIO()
    run_piped(s, ["+show\n"], out, err)
    assert out.getvalue().splitlines()[9:12] == ["system: Be brief.", "think: think",
                                                "history: answer"]


def test_settings_survive_save_and_resume(tmp_path):
    s, tok = scripted()
    s.states_folder = tmp_path
    for line in ("+set temp 0.7", "+set top_k 9", "+think think-bit", "+set history full",
                 "+set chat_max_tokens 77", "hi", "+save mine"):
        run(s, line)
    t = Session(s.model, tok, load_prompt("english-world"), states_folder=tmp_path)
    t.load_named("mine")
    assert t.settings == dataclasses.replace(GREEDY, temperature=0.7, top_k=9)
    assert t.options == ChatOptions(think="think-bit", history="full", chat_max_tokens=77)
    assert t.prompt.style == "g1" and t.think_mode() == "think-bit"


def test_a_g1_chat_saved_before_its_first_message_resumes(tmp_path):
    s, tok = scripted()  # nothing fed yet: the file holds no token at all
    s.states_folder = tmp_path
    run(s, "+save empty")
    t = Session(s.model, tok, load_prompt("english-world"), states_folder=tmp_path)
    t.load_named("empty")
    assert t.slots["chat"].tokens == () and t.prompt.name == "g1"
    run(t, "hi")
    assert t.slots["chat"].transcript[-1].text == "Hello there!"


def test_a_bad_saved_setting_is_refused_in_one_line(tmp_path):
    from chatrwkv import sessionfile
    from chatrwkv.errors import StateFileError

    s, tok = scripted()
    s.states_folder = tmp_path
    s.options = dataclasses.replace(s.options, think="deep")  # not a mode: as a damaged file
    run(s, "+save bad")
    t = Session(s.model, tok, load_prompt("g1"), states_folder=tmp_path)
    with pytest.raises(StateFileError, match="damaged session file.*unknown think mode"):
        t.load_named("bad")
    assert sessionfile.list_sessions(tmp_path) == ["bad"]


# --- defaults follow the model ------------------------------------------------------------------

def test_profiles_follow_version_and_vocabulary():
    assert profile_for("7.0", "world").name == "g1"
    p = profile_for("7.0", "world")
    assert (p.prompt, p.think, p.sampling) == ("g1", "fast", SamplingSettings(
        temperature=1.0, top_p=0.3, top_k=0, presence=0.5, frequency=0.5, decay=0.996))
    for version, vocab, prompt in (("6.0", "world", "english-world"), ("5.2", "world",
                                   "english-world"), ("4", "pile", "english-pile"),
                                   ("7.0", "pile", "english-pile")):
        p = profile_for(version, vocab)
        assert (p.name, p.prompt, p.think, p.sampling) == ("chatrwkv-v2", prompt, "off",
                                                           SamplingSettings())


# --- the real UI over the scripted G1 driver ---------------------------------------------------

def test_terminal_shows_thinking_dim_then_the_answer(tmp_path):
    import os
    import sys
    from pathlib import Path

    import pexpect

    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, CHATRWKV_HOME=str(tmp_path), TERM="xterm", PROMPT_TOOLKIT_NO_CPR="1",
               PYTHONPATH=str(root))
    child = pexpect.spawn(sys.executable, [str(root / "tests" / "chat_driver.py"), "--g1"],
                          env=env, encoding="utf-8", timeout=90, dimensions=(40, 160))
    child.expect("User:")
    child.sendline("hello")
    child.expect_exact("(thinking 57, answer 14)")
    shown = child.before
    # the thinking streams in the dim style (SGR 2), the answer on its own line in the normal one
    assert "Assistant: \x1b[2mT\x1b[0m\x1b[2mh\x1b[0m" in shown
    assert "\x1b[2m.\x1b[0m\r\nHello there!\r\n" in shown
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown)
    assert "Assistant: The user says hello. I should greet them back.\r\nHello there!\r\n" in plain
    child.expect("User:")
    child.sendline("+think off")
    child.expect_exact("think = off")
    child.expect("User:")
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_piped_driver_prints_answers_only(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, CHATRWKV_HOME=str(tmp_path), PYTHONPATH=str(root))
    thought = "<think>The user says hello. I should greet them back.</think>"
    for flags, first in (([], "Hello there!"), (["--show-thinking"], thought)):
        out = subprocess.run([sys.executable, str(root / "tests" / "chat_driver.py"), "--g1",
                              *flags], input="hi\n+set temp 0.5\n", capture_output=True,
                             text=True, timeout=60, env=env, check=False)
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines()[0] == first
        assert out.stderr == "temperature = 0.5\n"


# --- the command line: defaults from the checkpoint's version and vocabulary ------------------

@pytest.mark.parametrize("version, prompt, think, temperature", [
    ("7.0", "g1 (g1 style: User / Assistant)", "fast", "1"),
    ("6.0", "english-world (v2 style: User / Assistant)", "off", "1.2"),
])
def test_cli_defaults_follow_the_checkpoint(tmp_path, version, prompt, think, temperature):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from chatrwkv.synth import write_checkpoint

    root = Path(__file__).resolve().parent.parent
    path = write_checkpoint(tmp_path / "m.pth", version, n_layer=1, n_embd=64,
                            vocab_size=65536, head_size=16, seed=0)
    env = dict(os.environ, CHATRWKV_HOME=str(tmp_path / "home"), PYTHONPATH=str(root))
    out = subprocess.run([sys.executable, "-m", "chatrwkv", "--model", str(path), "--system",
                          "Be\r\n\r\nbrief.", "--no-autosave"], input="+show\n",
                         capture_output=True, text=True, timeout=120, env=env, check=False)
    assert out.returncode == 0, out.stderr
    rows = dict(line.split(": ", 1) for line in out.stdout.splitlines())
    assert rows["version"] == f"v{version}" and rows["layers x width"] == "1 x 64"
    assert rows["vocabulary"] == "world (65536)" and rows["system"] == "Be\\nbrief."
    assert (rows["prompt"], rows["think"], rows["temperature"]) == (prompt, think, temperature)


# --- ReplyReader on its own: replies that do not follow the template ----------------------------

@pytest.mark.parametrize("prefix, pieces, thinking, answer", [
    (" <think>\n</think", [">", "\n", "Hi", "!", "\n\n"], "", "Hi!"),
    (" <think>\n</think", ["Hi", "!", "\n\n"], "", "Hi!"),              # never wrote the ">"
    (" <think", [" trouble", "\n\n"], "", "trouble"),                 # not a think tag after all
    ("", ["<", "think", ">\nhmm", "\n</", "think>", "\nHi", "\n\n"], "hmm", "Hi"),  # thinks
    ("", ["<", "b>bold</b>", "\n\n"], "", "<b>bold</b>"),
    (" <think", [">\nendless", " thought"], "endless thought", ""),   # cut by the length bound
])
def test_reply_reader_splits_what_the_model_wrote(prefix, pieces, thinking, answer):
    from chatrwkv.chatreply import ReplyReader

    reader = ReplyReader(prefix, ("\n\n", "\nUser:"), think=True)
    events = []
    for piece in pieces:
        events += reader.feed(piece)
        if reader.stopped:
            break
    events += reader.finish()
    assert "".join(e.text for e in events if isinstance(e, ThinkChunk)) == thinking
    assert "".join(e.text for e in events if isinstance(e, Chunk)) == answer
    sp = reader.split(final=True)
    assert (sp.thinking.strip(), sp.answer.strip()) == (thinking, answer)
