"""Many fp32 tokens times a bf16 weight (the sequence path of a bf16 model), four ways.

    flock /tmp/chatrwkv-bench.lock python benchmarks/bench_bgemm.py --threads 2

For the shapes of a v7 0.1B / 0.4B / 1.5B layer (and the 0.1B head), T tokens times the
weight, GFLOP/s (2 * T * out * in / time): `C bf16` is bf16gemm.bf16_linear (_bgemm.h: the
weights widened in registers, fp32 FMAs), `torch bf16` torch's bf16 GEMM with the activations
rounded to bf16 (v4/v7's path before), `fp32 conv` the weight converted to fp32 on every call
(v5/v6's path before), `fp32 kept` MKL's fp32 GEMM on an fp32 copy kept beside the model
(twice the memory: shown for reference, not an option for a bf16 model). The methods run
interleaved, round after round; each cell is the median over rounds and, after the slash, the
best round (on a machine shared with other work the best is the kernel's own speed).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from chatrwkv.models import bf16gemm, quant

SHAPES = {  # name: (out, in)
    "0.1B att 768x768": (768, 768),
    "0.1B ffn 3072x768": (3072, 768),
    "0.4B att 1024x1024": (1024, 1024),
    "0.4B ffn 4096x1024": (4096, 1024),
    "0.4B ffn 1024x4096": (1024, 4096),
    "1.5B att 2048x2048": (2048, 2048),
    "1.5B ffn 2048x8192": (2048, 8192),
    "0.1B head 65536x768": (65536, 768),
}


def _time(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", default="256,64,16", help="comma-separated T values")
    ap.add_argument("--runs", type=int, default=5, help="interleaved rounds")
    ap.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated names")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if not bf16gemm.available():
        print("the C bf16 GEMM is not available here (extension not built, or no AVX2)")
        return 1
    print(f"threads {args.threads}, kernels {quant._quantcpu.set_simd(True)} "
          f"(2 AVX-512, 1 AVX2); GFLOP/s, median / best of {args.runs} interleaved rounds")
    cols = ("C bf16", "torch bf16", "fp32 conv", "fp32 kept")
    print(f"{'shape':22}{'T':>5}" + "".join(f"{c:>14}" for c in cols))
    for name in args.shapes.split(","):
        out, n_in = SHAPES[name]
        wb = torch.randn(out, n_in).bfloat16()
        wf = wb.float()
        for T in (int(t) for t in args.tokens.split(",")):
            x = torch.randn(T, n_in)
            calls = {
                "C bf16": (bf16gemm.bf16_linear, x, wb),
                "torch bf16": (lambda a, w: F.linear(a.bfloat16(), w).float(), x, wb),
                "fp32 conv": (lambda a, w: F.linear(a, w.float()), x, wb),
                "fp32 kept": (F.linear, x, wf),
            }
            times: dict[str, list[float]] = {c: [] for c in cols}
            for c in cols:  # warm-up
                _time(*calls[c])
            for _ in range(args.runs):
                for c in cols:
                    times[c].append(_time(*calls[c]))
            flop = 2 * T * out * n_in / 1e9
            cells = [f"{flop / statistics.median(times[c]):8.0f} /{flop / min(times[c]):4.0f}"
                     for c in cols]
            print(f"{name:22}{T:5}" + "".join(f"{s:>14}" for s in cells), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
