"""The prompt's state cached between runs: a hit gives exactly the state a prefill gives without
running the model; anything the result depends on (prompt, weights file, dtype) misses; a
damaged or foreign entry misses and is written again; a cache that cannot be written never
stops the chat."""

from __future__ import annotations

from pathlib import Path

import pytest
from chat_fakes import FakeTokenizer

from chatrwkv import commands as C
from chatrwkv.models import load_model
from chatrwkv.promptcache import PromptCache
from chatrwkv.prompts import Prompt
from chatrwkv.session import Chunk, Session
from chatrwkv.synth import write_checkpoint

TINY_V7 = {"n_layer": 2, "n_embd": 64, "vocab_size": 300, "head_size": 16}
PROMPT = Prompt(name="t", user="User", bot="Bot", init="\nUser: hi\n\nBot: hello there\n\n")


@pytest.fixture
def v7_path(tmp_path) -> Path:
    return write_checkpoint(tmp_path / "tiny7.pth", "7.0", seed=11, **TINY_V7)


class CountingModel:
    """The real model, counting the tokens it is fed."""

    def __init__(self, model):
        self.inner, self.fed = model, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def forward(self, tokens, state, full_output=False):
        self.fed += len(tokens)
        return self.inner.forward(tokens, state, full_output)


def _start(path: Path, folder: Path, prompt: Prompt = PROMPT, dtype: str = "fp32"):
    model = CountingModel(load_model(path, device="cpu", dtype=dtype))
    cache = PromptCache(model, folder)
    session = Session(model, FakeTokenizer(), prompt, seed=1, states_folder=folder / "states",
                      prompt_cache=cache)
    session.start(prompt)
    return session, model, cache


def test_second_start_is_a_hit_with_the_same_state(v7_path, tmp_path):
    folder = tmp_path / "cache"
    first, m1, c1 = _start(v7_path, folder)
    assert (c1.hits, c1.misses) == (0, 1) and m1.fed > 0
    assert len(list(folder.glob("*.safetensors"))) == 1
    second, m2, c2 = _start(v7_path, folder)
    assert (c2.hits, c2.misses) == (1, 0)
    assert m2.fed == 0                                  # the model read nothing
    a, b = first.slots["chat"], second.slots["chat"]
    assert a.state.equal(b.state) and a.tokens == b.tokens and a.transcript == b.transcript
    assert (a.logits == b.logits).all()
    # The conversation goes on from the cached state as from the computed one.
    assert _reply(first) == _reply(second)


def _reply(session: Session) -> str:
    return "".join(e.text for e in session.handle(C.parse("hey")) if isinstance(e, Chunk))


def test_what_the_state_depends_on_misses(v7_path, tmp_path):
    folder = tmp_path / "cache"
    _start(v7_path, folder)
    other = Prompt(name="t", user="User", bot="Bot", init="\nUser: hi\n\nBot: hi!\n\n")
    assert _start(v7_path, folder, prompt=other)[2].misses == 1      # other prompt text
    assert _start(v7_path, folder, dtype="bf16")[2].misses == 1      # other dtype
    write_checkpoint(v7_path, "7.0", seed=12, **TINY_V7)             # the file changed
    assert _start(v7_path, folder)[2].misses == 1
    assert _start(v7_path, folder)[2].hits == 1


def test_a_damaged_or_foreign_entry_misses_and_is_rewritten(v7_path, tmp_path):
    folder = tmp_path / "cache"
    _start(v7_path, folder)
    (entry,) = folder.glob("*.safetensors")
    entry.write_bytes(entry.read_bytes()[:100])                      # truncated
    session, model, cache = _start(v7_path, folder)
    assert cache.misses == 1 and model.fed > 0
    assert _start(v7_path, folder)[2].hits == 1                      # written again

    # An entry whose recorded key is another's (a hash collision, a hand-copied file).
    other = Prompt(name="t", user="User", bot="Bot", init="\nUser: yo\n\nBot: hi!\n\n")
    _start(v7_path, folder, prompt=other)
    ids = session.encode_fed(PROMPT.init)
    ids_other = session.encode_fed(other.init)
    mine, theirs = cache.path(cache.key(ids)), cache.path(cache.key(ids_other))
    mine.write_bytes(theirs.read_bytes())
    assert _start(v7_path, folder)[2].misses == 1


def test_an_unwritable_cache_does_not_stop_the_chat(v7_path, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    session, _, cache = _start(v7_path, blocker / "cache")
    assert cache.misses == 1 and "chat" in session.slots


def test_a_mounted_state_is_not_cached(v7_path, tmp_path):
    folder = tmp_path / "cache"
    model = load_model(v7_path, device="cpu", dtype="fp32")
    session = Session(model, FakeTokenizer(), PROMPT, seed=1, states_folder=tmp_path / "s",
                      prompt_cache=PromptCache(model, folder))
    session.initial_state = model.zero_state()
    session.start(PROMPT)
    assert session.prompt_cache.misses == 0 and not folder.exists()
