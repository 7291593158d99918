"""World tokenizer encode throughput: chatrwkv against the official trie tokenizer.

    python benchmarks/bench_tokenizer.py [--mb 5] [--repeat 3] [--clock cpu|wall]

English is Shakespeare from ../shared/data/shakespeare when that folder exists, otherwise text
generated from the vocabulary's English word tokens. Chinese is generated from the vocabulary's
single-ideograph tokens (uniformly, which is harder on caches than real text) with punctuation.
"C" is the C core (`_worldtrie`, when built; it has no caches). For the pure-Python path,
"py cold" encodes with empty piece caches and "py warm" encodes the same text again. The official
tokenizer is timed on the first 1 MB (its speed does not depend on length) and must give the same
ids there. The default clock is process CPU time, which a busy shared machine disturbs less.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # a script run from a checkout: use this checkout's package

from chatrwkv.tokenizer.world import WorldTokenizer, native_available

VOCAB = ROOT / "chatrwkv" / "data" / "rwkv_vocab_v20230424.txt"
SHAKESPEARE = ROOT.parent / "shared" / "data" / "shakespeare"
OFFICIAL_BYTES = 1_000_000


def english_text(world: WorldTokenizer, size: int, rng: random.Random) -> tuple[str, str]:
    files = sorted(SHAKESPEARE.glob("*.txt")) if SHAKESPEARE.is_dir() else []
    if files:
        text = "".join(f.read_text(encoding="utf-8") for f in files)
        while len(text.encode()) < size:
            text += text
        return text.encode()[:size].decode("utf-8", "ignore"), "Shakespeare"
    words = [t.decode() for t in world._token_bytes
             if len(t) > 2 and t[:1] == b" " and t[1:].isalpha() and t.isascii()]
    out, n = [], 0
    while n < size:
        sentence = "".join(rng.choices(words[:20000], k=rng.randint(4, 20)))
        out.append(sentence.strip().capitalize() + rng.choice([". ", ", ", "!\n", ".\n\n", "? "]))
        n += len(out[-1])
    return "".join(out)[:size], "generated English"


def chinese_text(world: WorldTokenizer, size: int, rng: random.Random) -> str:
    chars = [s for t in world._token_bytes if len(t) == 3
             for s in [t.decode("utf-8", "ignore")] if len(s) == 1 and "\u4e00" <= s <= "\u9fff"]
    out, n = [], 0
    while n < size:
        out.append("".join(rng.choices(chars, k=rng.randint(4, 24))))
        out.append(rng.choice("，，，。。、！？：；") + ("\n" if rng.random() < 0.05 else ""))
        n += 3 * len(out[-2]) + 3
    return "".join(out)


def best_time(fn: Callable[[], object], repeat: int, clock: Callable[[], float]) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = clock()
        fn()
        best = min(best, clock() - start)
    return best


def measure(native: WorldTokenizer | None, python: WorldTokenizer, official: object, text: str,
            repeat: int, clock: Callable[[], float]) -> tuple[float, float | None, float, float]:
    """MB/s of the official tokenizer, the C core (None if not built), the Python path with
    empty caches, and the Python path again."""
    mb = len(text.encode()) / 1e6
    head = text.encode()[:OFFICIAL_BYTES].decode("utf-8", "ignore")
    expected = official.encode(head)
    if python.encode(head) != expected or (native and native.encode(head) != expected):
        raise SystemExit("ids differ from the official tokenizer")
    if native and native.encode(text) != python.encode(text):
        raise SystemExit("the C core and the Python path differ")

    def cold() -> None:
        python.clear_caches()
        python.encode(text)

    official_s = best_time(lambda: official.encode(head), max(1, repeat - 1), clock)
    native_speed = mb / best_time(lambda: native.encode(text), repeat, clock) if native else None
    cold_s = best_time(cold, repeat, clock)
    warm_s = best_time(lambda: python.encode(text), repeat, clock)
    return len(head.encode()) / 1e6 / official_s, native_speed, mb / cold_s, mb / warm_s


def load_time(native: bool) -> tuple[WorldTokenizer, float]:
    start = time.perf_counter()
    world = WorldTokenizer.from_file(VOCAB, native=native)
    return world, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=5.0, help="size of each text in MB")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    args = parser.parse_args()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    from rwkv.rwkv_tokenizer import TRIE_TOKENIZER  # the oracle, only here and in tests

    native, native_load_s = load_time(True) if native_available() else (None, 0.0)
    world, load_s = load_time(False)
    official = TRIE_TOKENIZER(str(VOCAB))
    rng = random.Random(0)
    size = int(args.mb * 1e6)
    english, source = english_text(world, size, rng)
    texts = [(f"English ({source})", english),
             ("Chinese (generated)", chinese_text(world, size, rng))]

    core = f"C core {native_load_s:.2f} s" if native else "C core not built"
    print(f"chatrwkv World tokenizer load (parse + build): {core}, Python path {load_s:.2f} s; "
          f"clock: {args.clock}, best of {args.repeat}; MB/s and x official\n")
    header = (f"{'text':<24}{'MB':>5}{'official':>10}{'C':>9}{'py cold':>9}{'py warm':>9}"
              f"{'C x':>7}{'cold x':>8}{'warm x':>8}")
    print(header)
    print("-" * len(header))
    for name, text in texts:
        mb = len(text.encode()) / 1e6
        official_speed, c_speed, cold_speed, warm_speed = measure(native, world, official, text,
                                                                  args.repeat, clock)
        c_cols = (f"{c_speed:>9.1f}", f"{c_speed / official_speed:>7.0f}") if c_speed else (
            f"{'-':>9}", f"{'-':>7}")
        print(f"{name:<24}{mb:>5.1f}{official_speed:>10.2f}{c_cols[0]}{cold_speed:>9.1f}"
              f"{warm_speed:>9.1f}{c_cols[1]}{cold_speed / official_speed:>8.1f}"
              f"{warm_speed / official_speed:>8.1f}")

if __name__ == "__main__":
    main()
