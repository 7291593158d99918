"""Matrix-vector kernels of the C decode step, per weight dtype and instruction set.

    python benchmarks/bench_kernels.py [--rows 4096] [--cols 4096] [--stream-mib 1024]

Runs `_quantcpu.gemv` (the kernels of _cpukern.h that the v4/v7 C steps use) on random
matrices per dtype and prints, as weight bytes per second:

- in L2: one small matrix ([256, cols]) over and over on one thread, at each instruction-set
  level this CPU has (2: AVX-512, 1: AVX2, 0: scalar): what the kernel can compute, with no
  memory in the way (best of --repeat);
- from memory, at the best level: `--stream-mib` of matrices (copies of one [rows, cols]
  matrix, far more than the caches) read once per run on one thread, and on two threads each
  taking half the rows of every matrix (the C step's pool does the same with chunks of rows);
  median of --repeat runs;
- / bw: the two-thread figure over the machine's read bandwidth as the bench measures it
  (chatrwkv.membw on two threads): the decode ceiling that `chatrwkv bench`'s decode/bw column
  compares against. A kernel is memory-bound when its L2 figure is well above its share of it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

LEVELS = {2: "AVX-512", 1: "AVX2", 0: "scalar"}
HOT_ROWS = 256


def _matrices(w: torch.Tensor):
    """dtype -> (a function (rows r0:r1 of one copy) -> description, row bytes, copy maker)."""
    from chatrwkv.models.quant import Int4Linear, int4_groups, quantize_rows

    n = w.shape[1]
    q8, s8 = quantize_rows(w)
    lin4 = Int4Linear(w)
    ng = int4_groups(n, lin4.group)

    def dense(code: int, t: torch.Tensor, scale: torch.Tensor | None = None):
        es = t.element_size() * n

        def desc(copy, r0, r1):
            sc = 0 if copy[1] is None else copy[1].data_ptr() + 4 * r0
            return (copy[0].data_ptr() + es * r0, sc, code, r1 - r0, n)
        return desc, es, lambda: (t.clone(), None if scale is None else scale.clone())

    rb = lin4.packed.shape[1]

    def desc4(copy, r0, r1):
        return (copy[0].data_ptr() + rb * r0, copy[1].data_ptr() + 2 * ng * r0, 3, r1 - r0, n,
                lin4.group)

    return {"fp32": dense(0, w), "bf16": dense(1, w.bfloat16()), "int8": dense(2, q8, s8),
            "int4": (desc4, rb + 2 * ng, lambda: (lin4.packed.clone(), lin4.scales.clone()))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--stream-mib", type=int, default=1024,
                    help="matrix bytes read per run from memory (default 1024)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--dtype", default="fp32,bf16,int8,int4")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from chatrwkv.membw import read_bandwidth
    from chatrwkv.models import quant

    if quant._quantcpu is None:
        print("the C extension is not built")
        return 1
    ck = quant._quantcpu
    O, n = args.rows, args.cols
    torch.set_num_threads(2)
    bw = read_bandwidth()
    w = torch.randn(O, n, generator=torch.Generator().manual_seed(0)) * 0.02
    x, y = torch.randn(n), torch.empty(O)
    mats = _matrices(w)
    best_level = ck.set_simd(True)
    print(f"one [{HOT_ROWS}, {n}] matrix in L2 (best of {args.repeat * 20}); from memory: "
          f"{args.stream_mib} MiB of [{O}, {n}] matrices per run, median of {args.repeat}; "
          f"read bandwidth (2 threads) {bw / 1e9:.1f} GB/s")
    print("| dtype | level | in L2 G weights/s | in L2 GB/s | memory 1 thread GB/s "
          "| memory 2 threads GB/s | / bw |")
    print("|---|---|---|---|---|---|---|")
    pool = ThreadPoolExecutor(2)
    try:
        for name in args.dtype.split(","):
            desc, row_bytes, make = mats[name]
            hot = make()
            copies = [make() for _ in range(max(1, args.stream_mib * 2**20 // (row_bytes * O)))]
            for level, label in LEVELS.items():
                if ck.set_simd(level) != level:
                    continue
                d = desc(hot, 0, HOT_ROWS)
                ck.gemv(d, x.data_ptr(), y.data_ptr())
                t_hot = float("inf")
                for _ in range(args.repeat * 20 if level else 3):
                    t0 = time.perf_counter()
                    ck.gemv(d, x.data_ptr(), y.data_ptr())
                    t_hot = min(t_hot, time.perf_counter() - t0)
                cells = [f"{HOT_ROWS * n / t_hot / 1e9:.2f}", f"{HOT_ROWS * row_bytes / t_hot / 1e9:.1f}"]
                if level == best_level:
                    one = _stream(ck, [desc(c, 0, O) for c in copies], x, y, args.repeat)
                    half = O // 2
                    parts = [[desc(c, 0, half) for c in copies], [desc(c, half, O) for c in copies]]
                    two = _stream(ck, parts, x, y, args.repeat, pool)
                    total = len(copies) * O * row_bytes
                    cells += [f"{total / one / 1e9:.1f}", f"{total / two / 1e9:.1f}",
                              f"{total / two / bw:.2f}"]
                else:
                    cells += ["", "", ""]
                print(f"| {name} | {label} | " + " | ".join(cells) + " |", flush=True)
            del hot, copies
    finally:
        ck.set_simd(True)
        pool.shutdown()
    return 0


def _stream(ck, work, x: torch.Tensor, y: torch.Tensor, repeat: int,
            pool: ThreadPoolExecutor | None = None) -> float:
    """Median seconds of one pass over `work` (descriptions; with a pool: one list per thread,
    each writing its own rows of y)."""
    def run(descs, y_ptr):
        for d in descs:
            ck.gemv(d, x.data_ptr(), y_ptr)

    times = []
    for _ in range(repeat + 1):  # the first pass warms up
        t0 = time.perf_counter()
        if pool is None:
            run(work, y.data_ptr())
        else:
            half = work[0][0][3] if work[0] else 0
            futures = [pool.submit(run, work[0], y.data_ptr()),
                       pool.submit(run, work[1], y.data_ptr() + 4 * half)]
            for f in futures:
                f.result()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


if __name__ == "__main__":
    sys.exit(main())
