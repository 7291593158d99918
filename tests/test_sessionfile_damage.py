"""A damaged session file is refused whole before the chat is touched, and a file that passes
the checks never fails later (issue 15 item 15b): every field of a real file is damaged in turn;
each load either gives one Problem and leaves the chat exactly as it was, or loads, and then
every node, +path, +tree, +, a message, +undo and +save work."""

import json
import math

import torch
from chat_fakes import FakeModel, FakeTokenizer, read_session_file
from safetensors.torch import save_file

from chatrwkv import commands as C
from chatrwkv.events import Info, Problem
from chatrwkv.prompts import parse_prompt
from chatrwkv.session import Session

PROMPT = parse_prompt('user = "User"\nbot = "Bot"\ninit = "User: hi\\n\\nBot: hello"', "t")
BAD_VALUES = [None, "x", -1, 10**6, 1.5, math.nan, [], {}, ["\udce9"], True, 10**40]


def make(tmp_path, start=True):
    s = Session(FakeModel(), FakeTokenizer(), PROMPT, seed=7, max_tokens=5, chat_max_tokens=10,
                states_folder=tmp_path, max_live=2)
    if start:
        s.start(PROMPT)
    return s


def run(s, line):
    return list(s.handle(C.parse(line)))


def saved(tmp_path):
    a = make(tmp_path)
    for line in ["hello", "+", "+gen free", "+branch side", "more", "+undo", "again", "+undo",
                 "+switch main", "+save good"]:  # side's redo stack is saved, parked
        run(a, line)
    return read_session_file(tmp_path / "good.session")


def mutations(meta, tensors):
    body = json.loads(meta["body"])
    for key, value in body.items():
        for bad in BAD_VALUES:
            yield f"body.{key}={bad!r}", {**body, key: bad}, tensors
        if isinstance(value, list) and value:
            for bad in BAD_VALUES:
                yield f"body.{key}[0]={bad!r}", {**body, key: [bad, *value[1:]]}, tensors
            if isinstance(value[0], dict):
                for field in value[0]:
                    for bad in BAD_VALUES:
                        item = {**value[0], field: bad}
                        yield (f"body.{key}[0].{field}={bad!r}",
                               {**body, key: [item, *value[1:]]}, tensors)
        if isinstance(value, dict):
            for bad in BAD_VALUES:
                yield f"body.{key}.x={bad!r}", {**body, key: {**value, "x": bad}}, tensors
    for name, t in tensors.items():
        changes = [t[:0], t.reshape(-1)[:1].clone(), t.to(torch.int16), t.double(),
                   torch.zeros(3, dtype=torch.uint8)]
        if t.is_floating_point():
            nan = t.clone()
            nan.reshape(-1)[0] = math.nan
            changes.append(nan)
        elif t.dtype == torch.uint8:  # the sampler's state: one byte flipped, its tail cut
            flipped = t.clone()
            flipped[len(t) // 2] ^= 0xFF
            changes += [flipped, t[:-8].clone()]
        elif t.numel():
            for v in (-2, 10**6, 2**31 - 1):
                big = t.clone()
                big.reshape(-1)[-1] = v
                changes.append(big)
        for i, bad in enumerate(changes):
            yield f"{name}#{i}", body, {**tensors, name: bad}
        yield f"{name} missing", body, {k: v for k, v in tensors.items() if k != name}


def test_every_damaged_field_is_refused_whole_or_works_everywhere(tmp_path):
    meta, tensors = saved(tmp_path)
    b = make(tmp_path)
    run(b, "mine")
    before = (b.tree, b.slots, b.prompt, b.generator.get_state(), b.initial_state)
    loaded_ok = refused = 0
    for what, body, damaged in mutations(meta, tensors):
        text = json.dumps(body, ensure_ascii=False)
        try:
            save_file({k: v.contiguous() for k, v in damaged.items()},
                      str(tmp_path / "bad.session"), metadata={**meta, "body": text})
        except (UnicodeEncodeError, ValueError):
            continue  # not writable as a file: nothing to load
        events = run(b, "+load bad")
        assert len(events) == 1, (what, events)
        if isinstance(events[0], Problem):
            refused += 1
            assert "\n" not in events[0].text
            assert (b.tree, b.slots, b.prompt, b.initial_state) == before[:3] + before[4:], what
            assert torch.equal(b.generator.get_state(), before[3]), what
            continue
        loaded_ok += 1
        assert isinstance(events[0], Info), what
        # a file that passed: nothing may fail from here on
        for node_id in range(len(b.tree.nodes)):
            b.tree_commands._enter(b.tree.nodes[node_id])
        b.tree_commands._enter(b.tree.nodes[b.tree.current])
        for line in ["+path", "+", "+++", "hi", "+save out"]:
            for e in run(b, line):
                assert not (isinstance(e, Problem) and line == "+save out"), (what, e)
        b = make(tmp_path)
        run(b, "mine")
        before = (b.tree, b.slots, b.prompt, b.generator.get_state(), b.initial_state)
    assert refused > 100 and loaded_ok > 10, (refused, loaded_ok)
