"""How fast each decode kernel can stream on this machine, next to a plain read.

    flock /tmp/chatrwkv-bench.lock python benchmarks/bench_ceiling.py [--threads 2] [--repeat 5]

Compiles benchmarks/ceiling.c (needs a C compiler; includes chatrwkv/models/_cpukern.h) and
prints, per kind, the weight bytes per second on --threads threads: in the caches (2 MiB read
over and over: what the kernel computes with no memory in the way) and from memory (--mib of
weights, read --reps times), as the median of --repeat runs, interleaved round by round; `/ read`
is the memory figure over the plain read's (`read`: one load and an add per 64 bytes). `fp32`,
`int8` and `int4` are the C step's kernels (fp32 activations); `int4q8` is a sketch of an int4
kernel with activations rounded to int8 (AVX-512 VNNI), which chatrwkv does not use: how much
8-bit activations would buy here. Issue 14's decode/bw target is measured against this read.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("read", "fp32", "int8", "int4", "int4q8")


def build(exe: Path) -> bool:
    """Compiles ceiling.c into `exe`; False where no C compiler is on PATH."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return False
    subprocess.run([cc, "-O2", "-pthread", f"-I{ROOT / 'chatrwkv' / 'models'}",
                    str(ROOT / "benchmarks" / "ceiling.c"), "-o", str(exe), "-lm"], check=True)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--mib", type=int, default=2048, help="weights read from memory per run")
    ap.add_argument("--reps", type=int, default=2, help="reads of them per run")
    ap.add_argument("--cols", type=int, default=1024, help="row length (a multiple of 128)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "ceiling"
        if not build(exe):
            print("bench_ceiling: no C compiler (cc or gcc) on PATH", file=sys.stderr)
            return 1
        where = {"caches": (2, 300), "memory": (args.mib, args.reps)}
        got: dict[tuple[str, str], list[float]] = {}
        skipped: set[str] = set()
        for _ in range(args.repeat):
            for kind in KINDS:
                for place, (mib, reps) in where.items():
                    if kind in skipped:
                        continue
                    run = subprocess.run([str(exe), kind, str(mib), str(reps), str(args.threads),
                                          str(args.cols)], capture_output=True, text=True,
                                         check=False)
                    if run.returncode == 3:  # this CPU lacks the instructions
                        skipped.add(kind)
                        print(f"{kind}: {run.stderr.strip()}", file=sys.stderr)
                        continue
                    if run.returncode != 0:
                        print(run.stderr, file=sys.stderr)
                        return 1
                    got.setdefault((kind, place), []).append(float(run.stdout))
    med = {key: statistics.median(v) for key, v in got.items()}
    read = med.get(("read", "memory"))
    print(f"{args.threads} thread(s), rows of {args.cols}; GB/s of weights, median of "
          f"{args.repeat}")
    print("| kind | in the caches | from memory | / read |")
    print("|---|---|---|---|")
    for kind in KINDS:
        if (kind, "memory") not in med:
            continue
        mem = med[(kind, "memory")]
        ratio = f"{mem / read:.2f}" if read else ""
        print(f"| {kind} | {med[(kind, 'caches')] / 1e9:.1f} | {mem / 1e9:.1f} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
