"""Session semantics: which snapshot each command starts from and saves, with fakes of the
model and tokenizer (and a real tiny checkpoint once the engine and tokenizer are present)."""

import dataclasses

import pytest
import torch
from chat_fakes import DOUBLE_NEWLINE, BigramModel, FakeModel, FakeTokenizer

from chatrwkv import commands as C
from chatrwkv.prompts import load_prompt, parse_prompt
from chatrwkv.runtime import Runtime
from chatrwkv.session import Chunk, Info, Problem, ReplyEnd, Session

PROMPT = parse_prompt('user = "User"\nbot = "Bot"\ninit = "User: hi\\n\\nBot: hello"', "t")


def make(model=None, tokenizer=None, seed=0, **kw):
    s = Session(model or FakeModel(), tokenizer or FakeTokenizer(), PROMPT, seed=seed, **kw)
    s.start(PROMPT)
    return s


def run(session, line):
    events = list(session.handle(C.parse(line)))
    text = "".join(e.text for e in events if isinstance(e, Chunk))
    return text, events


def replay_logits(session, snap):
    """Logits after feeding a snapshot's tokens from the zero state, in one go."""
    state = session.model.zero_state()
    return Runtime(session.model).prefill(list(snap.tokens), state)


def assert_in_step(session, snap):
    """The state holds exactly the snapshot's tokens."""
    # one sequence-mode prefill vs the incremental path: fp32 rounding only
    assert torch.allclose(replay_logits(session, snap), snap.logits, atol=1e-4)


def test_start_reset_and_fresh_start_agree():
    s = make()
    assert s.slots["chat"] is s.slots["chat_init"]
    assert s.tokenizer.decode(s.slots["chat"].tokens) == PROMPT.init
    run(s, "how are you")
    assert s.slots["chat"] is not s.slots["chat_init"]
    _, events = run(s, "+reset")
    assert events == [Info("Chat reset.")]
    fresh = make()
    assert torch.equal(s.slots["chat"].logits, fresh.slots["chat"].logits)
    _, events = run(s, "+")  # the pre-reset message is gone
    assert isinstance(events[0], Problem)


def test_message_feeds_the_turn_and_closes_the_reply():
    s = make()
    init = s.slots["chat"]
    text, events = run(s, "line one\n\n\nline two")
    pre, chat = s.slots["chat_pre"], s.slots["chat"]
    fed = s.tokenizer.decode(pre.tokens[len(init.tokens):])
    assert fed == "User: line one\nline two\n\nBot:"
    assert pre.transcript[-1].text == "line one\nline two"
    reply = chat.transcript[-1]
    assert reply.role == "bot" and reply.text == text.strip() and text == text.strip()
    assert s.tokenizer.decode(chat.tokens[len(pre.tokens):]).strip() + "\n\n" == reply.text + "\n\n"
    assert s.tokenizer.decode(chat.tokens).endswith("\n\n")
    assert isinstance(events[-1], ReplyEnd) and not events[-1].interrupted
    assert_in_step(s, pre)
    assert_in_step(s, chat)


def test_plus_regenerates_from_chat_pre():
    s = make()
    run(s, "first")
    run(s, "second")
    pre, before = s.slots["chat_pre"], s.slots["chat"]
    run(s, "+")
    after = s.slots["chat"]
    assert s.slots["chat_pre"] is pre
    assert len(after.transcript) == len(before.transcript)
    assert after.transcript[:-1] == before.transcript[:-1]
    assert after.tokens[:len(pre.tokens)] == pre.tokens
    assert_in_step(s, after)


def test_retry_equals_rerunning_with_the_same_seed_and_continue_extends():
    s = make()
    s.reseed(5)
    first, _ = run(s, "+gen Once upon -temp=1.0 -top_p=0.9")
    gen0, gen1 = s.slots["gen_0"], s.slots["gen_1"]
    assert s.tokenizer.decode(gen0.tokens) == "\nOnce upon"
    assert gen0.settings.temperature == 1.0 and s.settings.temperature == 1.2
    s.reseed(5)
    again, _ = run(s, "++ -temp=1.0 -top_p=0.9")
    assert again == first and s.slots["gen_1"].tokens == gen1.tokens
    more, _ = run(s, "+++")
    assert s.slots["gen_0"].tokens == gen1.tokens  # ++ now resamples the continuation
    assert s.slots["gen_1"].tokens[:len(gen1.tokens)] == gen1.tokens
    assert s.tokenizer.decode(s.slots["gen_1"].tokens) == "\nOnce upon" + first + more
    assert_in_step(s, s.slots["gen_1"])


@pytest.mark.parametrize("line,fed", [
    ("+gen  Hello ", "\nHello"),
    ("+qq why?", "\nQ: why?\nA:"),
    ("+i write\n\na poem", ("\nBelow is an instruction that describes a task. Write a response "
                            "that appropriately completes the request.\n\n# Instruction:\n"
                            "write\na poem\n\n# Response:\n")),
])
def test_free_generation_starts_from_zero(line, fed):
    s = make()
    run(s, "some history")
    run(s, line)
    assert s.tokenizer.decode(s.slots["gen_0"].tokens) == fed


def test_qa_starts_from_the_init_prompt_and_ignores_history():
    s = make()
    run(s, "some history")
    run(s, "+qa what now")
    init = s.slots["chat_init"]
    gen0 = s.slots["gen_0"]
    assert gen0.tokens[:len(init.tokens)] == init.tokens
    assert s.tokenizer.decode(gen0.tokens[len(init.tokens):]) == "User: what now\n\nBot:"


def test_commands_with_nothing_to_continue_change_nothing():
    s = make()
    slots = dict(s.slots)
    for line in ("+", "++", "+++", "+bogus", "hi -temp=zz", "+prompt /no/such/file"):
        _, events = run(s, line)
        assert len(events) == 1 and isinstance(events[0], Problem), line
        assert s.slots == slots


def test_prompt_command_sets_a_new_init_that_reset_returns_to(tmp_path):
    s = make()
    run(s, "hello")
    f = tmp_path / "p.toml"
    f.write_text('user = "Q"\nbot = "A"\ninit = "Q: x\\n\\nA: y"\n')
    _, events = run(s, f"+prompt {f}")
    assert "loaded" in events[0].text
    init = s.slots["chat_init"]
    assert s.tokenizer.decode(init.tokens) == "\nQ: x\n\nA: y\n\n"  # from zero, not appended
    assert s.slots["chat"] is init and "chat_pre" not in s.slots
    run(s, "hi")
    assert s.tokenizer.decode(s.slots["chat_pre"].tokens).endswith("Q: hi\n\nA:")
    run(s, "+reset")
    assert s.slots["chat"] is init


def test_pile_fixup_feeds_two_newlines_and_world_is_untouched():
    world, pile = make(tokenizer=FakeTokenizer("world")), make(tokenizer=FakeTokenizer("pile"))
    nl = FakeTokenizer.newline_id
    assert world.slots["chat"].tokens[-1] == DOUBLE_NEWLINE
    assert pile.slots["chat"].tokens[-2:] == (nl, nl)
    assert pile.encode_fed("a\n\nb") == FakeTokenizer().encode("a\n\nb")  # only at the end
    assert world.encode_fed("a\n\n") == FakeTokenizer().encode("a\n\n")


def test_reply_stops_at_the_users_name_and_rereads_the_kept_reply():
    # greedy path after "Bot:": " hi\nUser: hi\nUser: ..."
    follow = {":": " ", " ": "h", "h": "i", "i": "\n", "\n": "U", "U": "s", "s": "e", "e": "r",
              "r": ":"}
    s = make(model=BigramModel(follow))
    text, _ = run(s, "yo -temp=0")
    assert text == "hi"
    chat = s.slots["chat"]
    assert chat.transcript[-1].text == "hi"
    assert s.tokenizer.decode(chat.tokens).endswith("Bot: hi\n\n")
    assert_in_step(s, chat)


def test_ctrl_c_keeps_the_partial_reply_in_step():
    s = make(model=BigramModel({"a": "b", "b": "a"}))
    shown = []
    for event in s.handle(C.parse("talk -temp=0")):
        if isinstance(event, Chunk):
            shown.append(event.text)
            if len("".join(shown)) >= 6:
                s.cancel.set()  # what the UI's SIGINT handler does
        if isinstance(event, ReplyEnd):
            assert event.interrupted
    chat = s.slots["chat"]
    assert chat.transcript[-1].text == "".join(shown)
    assert s.tokenizer.decode(chat.tokens).endswith("Bot:" + "".join(shown) + "\n\n")
    assert_in_step(s, chat)
    text, _ = run(s, "again -temp=0")  # the conversation goes on
    assert text


def test_free_text_respects_max_tokens_and_finishes_a_split_character():
    s = make(model=BigramModel({}, default="é"[0]), max_tokens=5)
    # "é" is two bytes, two fake tokens: 5 tokens would split the third "é"
    follow = FakeTokenizer().encode("é")
    s.model.table[:] = 0
    s.model.table[:, follow[0]] = 100.0
    s.model.table[follow[0]] = 0
    s.model.table[follow[0], follow[1]] = 100.0
    text, _ = run(s, "+gen x -temp=0")
    assert text == "ééé"
    assert len(s.slots["gen_1"].tokens) - len(s.slots["gen_0"].tokens) == 6


def test_free_text_stops_at_end_of_text_without_feeding_it():
    s = make(model=BigramModel({"x": "y", "y": "\x00"}))
    s.model.table[:, 0] = 0
    s.model.table[FakeTokenizer().encode("y")[0], 0] = 100.0  # after "y": end-of-text
    text, _ = run(s, "+gen x -temp=0")
    assert text == "y" and 0 not in s.slots["gen_1"].tokens


def test_chat_reply_never_samples_end_of_text():
    model = FakeModel()
    model.bias[0] = 50.0  # end-of-text would win every time
    s = make(model=model)
    run(s, "hi")
    chat, pre = s.slots["chat"], s.slots["chat_pre"]
    assert 0 not in chat.tokens[len(pre.tokens):]


def test_shipped_prompts_load():
    for name in ("english-world", "english-pile", "chinese", "english-qa"):
        p = load_prompt(name)
        assert p.init.startswith("\n") and p.init.endswith("\n\n") and p.user != p.bot
    assert load_prompt("english-pile").user == "Bob"


def test_snapshot_is_a_frozen_record_of_settings():
    s = make()
    run(s, "hi -top_p=0.2")
    assert s.slots["chat"].settings.top_p == 0.2
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.slots["chat"].tokens = ()


def test_repository_prompts_are_the_shipped_ones():
    from pathlib import Path

    from chatrwkv.prompts import shipped_dir
    repo = Path(__file__).resolve().parent.parent / "prompts"
    shipped = {p.name: p.read_bytes() for p in shipped_dir().glob("*.toml")}
    assert {p.name: p.read_bytes() for p in repo.glob("*.toml")} == shipped


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory):
    """Tiny random v7 (World) and v4 (Pile) checkpoints with their real tokenizers."""
    from chatrwkv.errors import ChatRWKVError
    from chatrwkv.models import load_model
    from chatrwkv.synth import write_checkpoint
    folder = tmp_path_factory.mktemp("ckpt")
    found = {}
    for name, version, vocab in (("world", "7.0", 65536), ("pile", "4", 50277)):
        try:
            from chatrwkv.tokenizer import load_tokenizer
            path = write_checkpoint(folder / f"{name}.pth", version, n_layer=2, n_embd=64,
                                    vocab_size=vocab, head_size=16, seed=0)
            model = load_model(path)
            found[name] = (model, load_tokenizer(model.config.vocab_size))
        except (ImportError, ChatRWKVError, NotImplementedError, TypeError, ValueError):
            continue
    return found


@pytest.mark.parametrize("kind", ["world", "pile"])
def test_real_checkpoint_session(tiny_checkpoints, kind):
    if kind not in tiny_checkpoints:
        pytest.skip(f"{kind} engine or tokenizer not available yet")
    model, tokenizer = tiny_checkpoints[kind]
    prompt = load_prompt("english-world" if kind == "world" else "english-pile")
    s = Session(model, tokenizer, prompt, seed=3, max_tokens=6, chat_max_tokens=8)
    s.start(prompt)
    init = s.slots["chat_init"]
    nl = tokenizer.newline_id
    if kind == "pile":
        assert init.tokens[-2:] == (nl, nl)  # "\n\n" fed as 187, 187
    else:
        assert init.tokens[-1] == tokenizer.double_newline_id  # World: as encoded
    run(s, "hello there")
    chat = s.slots["chat"]
    assert tokenizer.decode(chat.tokens).endswith("\n\n")
    assert len(chat.transcript) == len(init.transcript) + 2
    assert_in_step(s, chat)  # sequence-mode replay of the tokens gives the same logits
    run(s, "+")
    assert len(s.slots["chat"].transcript) == len(chat.transcript)
    run(s, "+reset")
    fresh = Session(model, tokenizer, prompt, seed=3)
    fresh.start(prompt)
    assert torch.equal(s.slots["chat"].logits, fresh.slots["chat"].logits)
    s.reseed(9)
    first, _ = run(s, "+gen Once upon a time")
    s.reseed(9)
    again, _ = run(s, "++")
    assert again == first
    gen1 = s.slots["gen_1"]
    run(s, "+++")
    assert s.slots["gen_1"].tokens[:len(gen1.tokens)] == gen1.tokens
    assert len(s.slots["gen_1"].tokens) > len(gen1.tokens)
