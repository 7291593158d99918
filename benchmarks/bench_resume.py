"""Resume time and session-file size, short vs very long conversations.

    python benchmarks/bench_resume.py                     # v7-0.1b and v7-1.5b (random weights)
    python benchmarks/bench_resume.py --sizes tiny        # quick smoke (2 layers, 64 wide)

Each random checkpoint is written under a temporary folder in /tmp and deleted afterwards (the
1.5B one is ~3 GB bf16). A "long" conversation is built as the REPL builds one (a node per turn,
`--long-turns` turns of `--turn-tokens` tokens) without sampling: the file holds the same tree,
token ids and states a real session of that length holds. Resume = `Session.load_named` into a
fresh session: read the file, check it, decode the current node; no prefill, and no work per
turn (the other nodes are decoded when visited). Save = `Session.save_named` (atomic, fsync'd).
Times are medians of `--repeat` runs (resume: after one untimed warm-up load).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chatrwkv.conversation import first_words
from chatrwkv.events import Snapshot, Turn
from chatrwkv.models import load_model
from chatrwkv.prompts import load_prompt
from chatrwkv.session import Session
from chatrwkv.synth import SIZES, write_checkpoint
from chatrwkv.tokenizer import load_tokenizer

SIZES = {**SIZES, "tiny": ("7.0", {"n_layer": 2, "n_embd": 64, "vocab_size": 65536})}


def build(session: Session, turns: int, turn_tokens: int) -> int:
    """`turns` chat turns after the prompt; only the last one is really prefilled."""
    base = session.slots["chat"]
    tokens, transcript = base.tokens, base.transcript
    for i in range(turns):
        ids = tuple((7 * i + j) % 60000 + 100 for j in range(turn_tokens))
        tokens = tokens + ids
        transcript = transcript + (Turn("user", f"message {i}"), Turn("bot", f"reply {i} " * 8))
        if i == turns - 1:  # the current node holds a real state, as after a real turn
            state = base.state.clone()
            logits = session.runtime.prefill(list(ids[:64]), state)
            snap = Snapshot(state, logits, tokens, transcript, session.settings)
        else:
            snap = Snapshot(base.state, base.logits, tokens, transcript, session.settings)
        session.slots = {**session.slots, "chat_pre": snap, "chat": snap}
        session.record("chat", first_words(transcript[-1].text))
    return len(tokens)


def measure(name: str, args, folder: Path) -> list[str]:
    version, dims = SIZES[name]
    ckpt = write_checkpoint(folder / f"{name}.pth", version, head_size=64, **dims)
    model = load_model(ckpt, device=args.device, dtype=args.dtype)
    tokenizer = load_tokenizer(model.config.vocab_size)
    prompt = load_prompt("english-world")
    rows = []
    for label, turns in (("short", 2), ("long", args.long_turns)):
        s = Session(model, tokenizer, prompt, seed=0, states_folder=folder)
        s.start(prompt)
        n_tokens = build(s, turns, args.turn_tokens)
        saves = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            path = s.save_named(f"{name}-{label}")
            saves.append(time.perf_counter() - t0)
        size = path.stat().st_size
        # one untimed load first: a process's first load pays one-time costs (lazy imports,
        # torch kernel set-up) that are no part of a resume's work
        Session(model, tokenizer, prompt, seed=0, states_folder=folder).load_named(
            f"{name}-{label}")
        times = []
        for _ in range(args.repeat):
            fresh = Session(model, tokenizer, prompt, seed=0, states_folder=folder)
            t0 = time.perf_counter()
            fresh.load_named(f"{name}-{label}")
            times.append(time.perf_counter() - t0)
        assert fresh.slots["chat"].state.equal(s.slots["chat"].state)
        rows.append(f"{name:<9} {label:<6} {turns + 1:>6} {n_tokens:>9} {size / 1e6:>9.2f} "
                    f"{statistics.median(times) * 1e3:>10.1f} "
                    f"{statistics.median(saves) * 1e3:>8.1f} "
                    f"{s.slots['chat'].state.nbytes / 1e6:>8.2f}")
    del model
    os.unlink(ckpt)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", nargs="+", default=["v7-0.1b", "v7-1.5b"], choices=sorted(SIZES))
    ap.add_argument("--long-turns", type=int, default=500)
    ap.add_argument("--turn-tokens", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="bf16")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="chatrwkv-bench-resume-", dir="/tmp"))
    print(f"{'model':<9} {'conv':<6} {'turns':>6} {'tokens':>9} {'file MB':>9} "
          f"{'resume ms':>10} {'save ms':>8} {'state MB':>8}")
    try:
        for name in args.sizes:
            for row in measure(name, args, folder):
                print(row, flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
