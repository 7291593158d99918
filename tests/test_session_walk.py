"""A random walk over the tree commands with a small live-state limit: every save succeeds,
and the file loads back to the same tree (issue 15 item 15a: two stored snapshots that shared
a tensor made safetensors refuse the save, "Some tensors share memory", autosave included)."""

import random

from chat_fakes import FakeModel, FakeTokenizer

from chatrwkv import commands as C
from chatrwkv.events import Problem
from chatrwkv.prompts import parse_prompt
from chatrwkv.session import Session

PROMPT = parse_prompt('user = "User"\nbot = "Bot"\ninit = "User: hi\\n\\nBot: hello"', "t")
OTHER = parse_prompt('user = "Q"\nbot = "A"\ninit = "Q: yes\\n\\nA: no"', "o")
LINES = ["hello", "how", "+", "+gen once", "++", "+++", "+undo", "+undo", "+redo", "+reset",
         "+tree", "+path", "+qa what", "+branch b{n}", "+switch main", "+switch b{m}",
         "+prompt {other}", "+save w"]


def walk(tmp_path, seed: int, steps: int) -> Session:
    (tmp_path / "other.toml").write_text('user = "Q"\nbot = "A"\ninit = "Q: yes\\n\\nA: no"')
    rng = random.Random(seed)
    s = Session(FakeModel(), FakeTokenizer(), PROMPT, seed=seed, max_tokens=6, max_live=2,
                chat_max_tokens=12, states_folder=tmp_path)
    s.start(PROMPT)
    branches = 0
    for step in range(steps):
        line = rng.choice(LINES).format(n=branches, m=rng.randrange(branches + 1),
                                        other=tmp_path / "other.toml")
        if line.startswith("+branch"):
            branches += 1
        events = list(s.handle(C.parse(line)))
        if line.startswith("+save"):
            assert not any(isinstance(e, Problem) for e in events), (seed, step, events)
    return s


def test_random_walks_always_save_and_load(tmp_path):
    for seed in range(5):
        s = walk(tmp_path, seed, 40)
        s.save_named(f"walk{seed}")
        again = Session(FakeModel(), FakeTokenizer(), PROMPT, seed=0, max_live=2,
                        states_folder=tmp_path)
        again.load_named(f"walk{seed}")
        assert len(again.tree.nodes) == len(s.tree.nodes)
        assert again.slots["chat"].transcript == s.slots["chat"].transcript
        again.save_named(f"again{seed}")  # a loaded tree saves too
