"""The one-token step alone, for several model files side by side (e.g. one of each version).

    flock /tmp/chatrwkv-bench.lock python benchmarks/bench_step.py --dtype int4 A.pth B.pth

Loads every file (CPU, --dtype), then in --rounds interleaved rounds times --tokens one-token
steps of each from a fresh state: the files see the same machine load. Prints tok/s (median and
best of the rounds) and the weight bytes one token reads (as `chatrwkv bench` counts them) over
the time a token takes, in GiB/s: whether a version's step streams its weights as fast as
another's. `chatrwkv bench` is the end-to-end figure; this isolates the step.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from chatrwkv.bench_worker import ChatEngine


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--dtype", default="int4")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    engines = [(f.name, ChatEngine(str(f), "cpu", args.dtype, None)) for f in args.files]
    speeds: dict[str, list[float]] = {name: [] for name, _ in engines}
    with torch.inference_mode():
        for _ in range(args.rounds):
            for name, e in engines:
                state = e.model.zero_state()
                e.model.forward([1], state)  # warm: builds the C step
                t0 = time.perf_counter()
                for t in range(args.tokens):
                    e.model.forward([t + 2], state)
                speeds[name].append(args.tokens / (time.perf_counter() - t0))
    print(f"{'file':24} {'engine':44} {'MiB/token':>9} {'tok/s med':>9} {'best':>7} "
          f"{'GiB/s med':>9} {'best':>6}")
    for name, e in engines:
        mib, s = e.decode_bytes() / 2**20, speeds[name]
        med, best = statistics.median(s), max(s)
        print(f"{name:24} {e.engine_path()[:44]:44} {mib:9.0f} {med:9.1f} {best:7.1f} "
              f"{med * mib / 1024:9.1f} {best * mib / 1024:6.1f}")
    print(f"{args.dtype}; {args.tokens} tokens x {args.rounds} interleaved rounds; "
          f"{torch.get_num_threads()} thread(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
