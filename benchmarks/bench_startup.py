"""What a user waits for, end to end, as whole `chatrwkv` commands in piped mode:

    python3 benchmarks/bench_startup.py [--model PATH ...] [--runs 3] [--busy 1]

start: command to prompt (`chatrwkv --no-autosave < /dev/null`: import, load, tokenizer, the
prompt read or taken from the cache, then end of input); reply: `printf '+gen The king\\n' |
chatrwkv --seed 1 --max-tokens 200` (start-up included). Medians of --runs, quiet and with
--busy CPU-bound processes next to it. Caches live in a temporary $CHATRWKV_HOME that the first
(untimed) run fills, as a user's second start finds them. Run it under the bench lock.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time


def _wall(cmd: list[str], stdin: str | None, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, input=stdin if stdin is not None else "", capture_output=True,
                          text=True, env=env, check=False)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed: {proc.stderr.strip()[-300:]}")
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", default=[], help="checkpoint (default: demo)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--busy", type=int, default=1, help="competing processes in the loaded case")
    ap.add_argument("--threads", type=int, help="chatrwkv --threads")
    args = ap.parse_args()
    models = args.model or [None]
    with tempfile.TemporaryDirectory(prefix="chatrwkv-startup-") as home:
        env = dict(os.environ, CHATRWKV_HOME=home)
        print(f"{'model':24} {'load':>5} {'start s':>8} {'reply s':>8}")
        for busy in (0, args.busy):
            procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                     for _ in range(busy)]
            try:
                for model in models:
                    base = [sys.executable, "-m", "chatrwkv", "--no-autosave"]
                    base += ["--model", model] if model else []
                    base += ["--threads", str(args.threads)] if args.threads else []
                    _wall(base, None, env)  # fills the caches
                    start = [_wall(base, None, env) for _ in range(args.runs)]
                    reply = [_wall(base + ["--seed", "1", "--max-tokens", "200"],
                                   "+gen The king\n", env) for _ in range(args.runs)]
                    name = os.path.basename(model) if model else "demo"
                    print(f"{name:24} {busy:>5} {statistics.median(start):8.2f} "
                          f"{statistics.median(reply):8.2f}", flush=True)
            finally:
                for p in procs:
                    p.kill()
                    p.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
