"""Matrix-vector kernels of the C decode step, one thread, per weight dtype and instruction set.

    python benchmarks/bench_kernels.py [--rows 8192] [--cols 4096]

Runs `_quantcpu.gemv` (the kernels of _cpukern.h that the v4/v7 C steps use) on one random
matrix per dtype, at each instruction-set level this CPU has (2: AVX-512, 1: AVX2, 0: scalar),
and prints the best of `--repeat` runs as weights/s and weight bytes/s. One thread: what one
core can stream, which is what decides whether a dtype is compute- or memory-bound.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

LEVELS = {2: "AVX-512", 1: "AVX2", 0: "scalar"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=8192)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from chatrwkv.models import quant
    from chatrwkv.models.quant import Int4Linear, quantize_rows

    if quant._quantcpu is None:
        print("the C extension is not built")
        return 1
    ck = quant._quantcpu
    O, n = args.rows, args.cols
    w = torch.randn(O, n, generator=torch.Generator().manual_seed(0)) * 0.02
    x, y = torch.randn(n), torch.empty(O)
    q8, s8 = quantize_rows(w)
    w16, lin4 = w.bfloat16(), Int4Linear(w)
    mats = {"fp32": ((w.data_ptr(), 0, 0, O, n), w.numel() * 4),
            "bf16": ((w16.data_ptr(), 0, 1, O, n), w.numel() * 2),
            "int8": ((q8.data_ptr(), s8.data_ptr(), 2, O, n), w.numel() + O * 4),
            "int4": (lin4.describe(), lin4.packed.numel() + lin4.scales.numel() * 2)}
    print(f"[{O}, {n}] matrix times a vector, one thread, best of {args.repeat}")
    print("| dtype | level | G weights/s | GB/s of weights |")
    print("|---|---|---|---|")
    try:
        for name, (desc, nbytes) in mats.items():
            for level, label in LEVELS.items():
                if ck.set_simd(level) != level:
                    continue
                best = float("inf")
                for _ in range(args.repeat if level else 3):
                    t0 = time.perf_counter()
                    ck.gemv(desc, x.data_ptr(), y.data_ptr())
                    best = min(best, time.perf_counter() - t0)
                print(f"| {name} | {label} | {O * n / best / 1e9:.2f} | {nbytes / best / 1e9:.1f} |",
                      flush=True)
    finally:
        ck.set_simd(True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
