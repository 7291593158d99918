"""What a user waits for, end to end, as whole `chatrwkv` commands:

    python3 benchmarks/bench_startup.py [--model PATH ...] [--runs 3] [--busy 1]

piped start: `chatrwkv --no-autosave < /dev/null` (import, load, tokenizer, the prompt read or
taken from the cache, then end of input); piped reply: `printf '+gen The king\\n' | chatrwkv
--seed 1 --max-tokens 200` (start-up included). In a pseudo-terminal (the terminal UI): prompt,
command to the prompt drawn (`--marker`, the user's name of the prompt file, followed by its
separator); tty reply: `+gen The king` typed as soon as the prompt shows, until its stats line
(whatever load was still running included). Medians of --runs, quiet and with --busy CPU-bound
processes next to it. Caches live in a temporary $CHATRWKV_HOME that the first (untimed) run
fills, as a user's second start finds them. Run it under the bench lock.
"""

from __future__ import annotations

import argparse
import os
import pty
import select
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


def _read_until(fd: int, seen: bytearray, marker: bytes, deadline: float) -> None:
    while marker not in seen:
        left = deadline - time.perf_counter()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            sys.exit(f"no {marker!r} on the terminal: {bytes(seen[-300:])!r}")
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            chunk = b""
        if not chunk:
            sys.exit(f"the chat ended before {marker!r}: {bytes(seen[-300:])!r}")
        seen += chunk


def _tty(cmd: list[str], env: dict[str, str], marker: str) -> tuple[float, float]:
    """(seconds until `marker` is drawn, seconds until the stats line of a `+gen` typed then)."""
    master, slave = pty.openpty()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=env,
                            start_new_session=True)
    os.close(slave)
    seen = bytearray()
    try:
        _read_until(master, seen, marker.encode(), t0 + 300)
        prompt = time.perf_counter() - t0
        del seen[:]
        os.write(master, b"+gen The king\r")
        _read_until(master, seen, b" tok/s", t0 + 600)
        reply = time.perf_counter() - t0
        # the next prompt: drawn after the stats line (while loading, the first prompt is redrawn
        # twice a second, so an earlier copy of the marker says nothing)
        del seen[:seen.rindex(b" tok/s")]
        _read_until(master, seen, marker.encode(), t0 + 600)
        os.write(master, b"\x04")
        while select.select([master], [], [], 30)[0]:  # drain until the chat closes the terminal
            try:
                if not os.read(master, 65536):
                    break
            except OSError:
                break
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return prompt, reply


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", default=[], help="checkpoint (default: demo)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--busy", type=int, default=1, help="competing processes in the loaded case")
    ap.add_argument("--threads", type=int, help="chatrwkv --threads")
    ap.add_argument("--marker", default="Romeo:", help="the prompt as drawn (default: the demo "
                    "prompt's)")
    args = ap.parse_args()
    models = args.model or [None]
    with tempfile.TemporaryDirectory(prefix="chatrwkv-startup-") as home:
        env = dict(os.environ, CHATRWKV_HOME=home)
        tty_env = dict(env, TERM="xterm", PROMPT_TOOLKIT_NO_CPR="1")
        print(f"{'model':24} {'load':>5} {'start s':>8} {'reply s':>8} {'prompt s':>9} "
              f"{'tty reply s':>12}")
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
                    gen = ["--seed", "1", "--max-tokens", "200"]
                    reply = [_wall(base + gen, "+gen The king\n", env) for _ in range(args.runs)]
                    tty = [_tty(base + gen, tty_env, args.marker) for _ in range(args.runs)]
                    name = os.path.basename(model) if model else "demo"
                    print(f"{name:24} {busy:>5} {statistics.median(start):8.2f} "
                          f"{statistics.median(reply):8.2f} "
                          f"{statistics.median(t[0] for t in tty):9.2f} "
                          f"{statistics.median(t[1] for t in tty):12.2f}", flush=True)
            finally:
                for p in procs:
                    p.kill()
                    p.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
