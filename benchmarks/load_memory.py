"""Peak memory and start time of loading big checkpoints, with and without the weight cache.

    CHATRWKV_HOME=/tmp/x flock /tmp/chatrwkv-bench.lock \
        python benchmarks/load_memory.py /tmp/big/v7-1.5b.pth /tmp/big/v7-2.9b.pth --dtype int8

Each load runs in a fresh process (the bench's worker: chatrwkv/bench_worker.py), three times
per model and dtype: "first" after removing that model's converted-weight caches (so it
converts and writes the cache), then "second" twice (restored from the cache). Columns: the
prepared weight bytes (as the bench counts them), RSS before loading (Python, torch), the
peak RSS while loading, (peak - before) / weights (issue 14 asks for at most 1.1), and the
load time of each start (load_model only; the process start and imports are the same ~1-2 s
every time and are not included).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from chatrwkv.bench import _model_facts, _run_worker
    from chatrwkv.models.weightcache import cache_dir, clear

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--dtype", default="int8", help="comma-separated (default int8)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=int, default=2, metavar="N",
                    help="second starts to time (median reported)")
    args = ap.parse_args(argv)
    print(f"cache: {cache_dir()}", file=sys.stderr)
    gib = 2 ** 30
    print(f"{'model':22} {'dtype':5} {'weights':>8} {'before':>7} {'peak':>7} {'own/w':>6} "
          f"{'peak2':>7} {'own2/w':>6} {'first s':>8} {'second s':>9}", flush=True)
    for path in args.models:
        facts = _model_facts(path)
        for dtype in args.dtype.split(","):
            spec = {"model": facts["path"], "version": facts["version"], "prompt": [1, 2, 3, 4],
                    "decode_tokens": 2, "runs": 1, "threads": args.threads, "engine": "chatrwkv",
                    "device": "cpu", "dtype": dtype, "chunk_len": None, "label": dtype}
            clear(path.stem)
            runs = []
            for i in range(1 + args.seconds):
                print(f"{path.name} {dtype} start {i + 1} ...", file=sys.stderr, flush=True)
                r = _run_worker(spec)
                if "error" in r:
                    print(f"{path.name} {dtype}: {r['error']}", file=sys.stderr)
                    break
                runs.append(r)
            if not runs:
                continue
            first, later = runs[0], runs[1:]
            w = first["weight_bytes"]
            peak2 = max((r["rss_load_peak_bytes"] for r in later), default=0)
            own2 = max((r["rss_load_peak_bytes"] - r["rss_baseline_bytes"] for r in later),
                       default=0)
            seconds = sorted(r["load_s"] for r in later)
            second = seconds[len(seconds) // 2] if seconds else float("nan")
            print(f"{path.name:22} {dtype:5} {w / gib:7.2f}G "
                  f"{first['rss_baseline_bytes'] / gib:6.2f}G "
                  f"{first['rss_load_peak_bytes'] / gib:6.2f}G "
                  f"{(first['rss_load_peak_bytes'] - first['rss_baseline_bytes']) / w:6.2f} "
                  f"{peak2 / gib:6.2f}G {own2 / w:6.2f} {first['load_s']:8.1f} {second:9.1f}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
