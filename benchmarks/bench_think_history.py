"""What `+set history` costs per chat turn: a G1 reply that thinks, kept whole in the state
("full") or re-read as `Assistant: <answer>\\n\\n` from before the reply ("answer", the default).

    python benchmarks/make_checkpoints.py v7-0.4b --out /tmp/rwkv-bench
    python benchmarks/bench_think_history.py /tmp/rwkv-bench/v7-0.4b.pth

Random weights cannot think, so the model is wrapped to say a fixed reply (`--think-tokens` of
thinking, then `--answer-tokens` of answer, then the blank line): the wrapper runs the real
forward pass on every token and only raises the scripted token's logit, so prefill and decode
cost what they cost with a real G1 model of that shape. A turn is `Session.handle(message)` in
think mode, timed end to end; "close" is the time from the reply's last shown text to its end
(answer mode: a prefill of the answer from `chat_pre`; full mode: nothing to feed, the blank
line was sampled). Times are medians over `--turns` turns after one untimed warm-up turn.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chatrwkv import commands as C
from chatrwkv.chatsettings import G1_SAMPLING, ChatOptions
from chatrwkv.events import ReplyEnd
from chatrwkv.models import load_model
from chatrwkv.prompts import load_prompt
from chatrwkv.session import Session
from chatrwkv.tokenizer import load_tokenizer


class Scripted:
    """The real model, nudged to say `script` after any prefill (see the module docstring)."""

    def __init__(self, model, script: list[int], after: int):
        self.model, self.script, self.after, self.pos = model, script, after, 0
        self.config, self.chunk_len = model.config, model.chunk_len

    def __getattr__(self, name):
        return getattr(self.model, name)

    def forward(self, tokens, state, full_output=False):
        logits = self.model.forward(tokens, state)
        follows = len(tokens) == 1 and self.pos < len(self.script) \
            and tokens[0] == self.script[self.pos]
        self.pos = self.pos + 1 if follows else 0
        logits = logits.clone()
        logits[self.script[self.pos] if self.pos < len(self.script) else self.after] += 1e4
        return logits


def script_text(tok, think_tokens: int, answer_tokens: int) -> str:
    def words(sentence: str, n: int) -> str:
        out = ""
        while len(tok.encode(out)) < n:
            out += sentence
        return out.strip()
    return (f">\n{words('Let me work through this step by step. ', think_tokens)}\n</think>\n"
            f"{words('The answer is four, because two and two make four. ', answer_tokens)}\n\n")


def run(session: Session, turns: int) -> tuple[list[float], list[float]]:
    turn_ms, close_ms = [], []
    for i in range(turns + 1):
        t0 = last = time.perf_counter()
        for end in session.handle(C.parse(f"question {i}")):
            now = time.perf_counter()
            if isinstance(end, ReplyEnd):
                break
            last = now
        if i:  # the first turn warms up
            turn_ms.append((now - t0) * 1e3)
            close_ms.append((now - last) * 1e3)
    return turn_ms, close_ms


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--think-tokens", type=int, default=100)
    ap.add_argument("--answer-tokens", type=int, default=40)
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--dtype", default=None)
    args = ap.parse_args(argv)
    model = load_model(args.model, dtype=args.dtype)
    tok = load_tokenizer(model.config.vocab_size)
    text = script_text(tok, args.think_tokens, args.answer_tokens)
    greedy = dataclasses.replace(G1_SAMPLING, temperature=0.0)
    print(f"{model.describe()}; reply {len(tok.encode(text))} tokens "
          f"({args.think_tokens}+ thinking, {args.answer_tokens}+ answer); "
          f"median of {args.turns} turns")
    print(f"{'history':<8} {'turn ms':>9} {'close ms':>9} {'state holds':>14}")
    for history in ("full", "answer"):
        prompt = load_prompt("g1")
        wrapped = Scripted(model, tok.encode(text), tok.encode("\n\n")[0])
        s = Session(wrapped, tok, prompt, settings=greedy, seed=0,
                    options=ChatOptions(think="think", history=history, chat_max_tokens=4096))
        s.start(prompt)
        turn_ms, close_ms = run(s, args.turns)
        held = len(s.slots["chat"].tokens)
        print(f"{history:<8} {statistics.median(turn_ms):>9.0f} "
              f"{statistics.median(close_ms):>9.1f} {held:>8} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
