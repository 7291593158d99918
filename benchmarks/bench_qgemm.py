"""The sequence path's matrix products alone: many tokens times one weight, per precision.

    flock /tmp/chatrwkv-bench.lock python benchmarks/bench_qgemm.py --threads 2

For the shapes of a v7 0.1B / 0.4B / 1.5B layer (and the 0.4B head), T tokens (default 256,
the prefill chunk) times the weight, GFLOP/s (2 * T * out * in / time; median of --runs):
fp32 and bf16 through torch's F.linear, int8 and int4 through quant.py's Int8Linear /
Int4Linear (the C integer GEMM where it is built), and for comparison the paths they replaced:
fbgemm's dynamic int8 linear on its packed copy, and int4 blocks dequantized to bf16 for
F.linear. Random weights and activations (the speed does not depend on the values).

On a machine others share, `--threads 1 --clock cpu` times each call by the process's CPU time
instead of the wall clock: what one idle core would do, unaffected by time slices lost to other
processes (with more threads, CPU time counts every thread: work per core-second, not speed).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
import torch.nn.functional as F

from chatrwkv.models import quant

SHAPES = {  # name: (out, in)
    "0.1B att 768x768": (768, 768),
    "0.1B ffn 3072x768": (3072, 768),
    "0.4B att 1024x1024": (1024, 1024),
    "0.4B ffn 4096x1024": (4096, 1024),
    "0.4B ffn 1024x4096": (1024, 4096),
    "1.5B att 2048x2048": (2048, 2048),
    "1.5B ffn 2048x8192": (2048, 8192),
}


def timed(call: tuple, runs: int, clock=time.perf_counter) -> float:
    fn, *args = call
    fn(*args)  # warm-up (first-call allocations, lazy row sums)
    times = []
    for _ in range(runs):
        t0 = clock()
        fn(*args)
        times.append(clock() - t0)
    return statistics.median(times)


def fbgemm_int8(w: torch.Tensor):
    if not quant.fbgemm_available():
        return None
    q, scale = quant.quantize_rows(w)
    zero = torch.zeros(w.shape[0], dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qt = torch._make_per_channel_quantized_tensor(q, scale.double(), zero, 0)
        packed = torch.ops.quantized.linear_prepack(qt, None)
    return lambda x: torch.ops.quantized.linear_dynamic(x, packed, False)


def dequant_int4(lin: quant.Int4Linear):
    def run(x: torch.Tensor) -> torch.Tensor:
        xs = x.to(torch.bfloat16)
        out = lin.shape[0]
        y = torch.empty(x.shape[0], out)
        step = max(16, quant.DEQUANT_BLOCK_ELEMS // lin.shape[1])
        for r0 in range(0, out, step):
            r1 = min(out, r0 + step)
            y[:, r0:r1] = F.linear(xs, lin._block(r0, r1, torch.bfloat16))
        return y
    return run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated names")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall clock, or the process's CPU time (see above)")
    args = ap.parse_args(argv)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    level = quant._quantcpu.gemm_level() if quant._quantcpu else -1
    print(f"threads {args.threads}, T {args.tokens}, C GEMM level {level} "
          f"(2 VNNI, 1 AVX2, 0 scalar, -1 not built); GFLOP/s, median of {args.runs}, "
          f"{args.clock} clock")
    cols = ("fp32", "bf16", "int8", "int4", "fbgemm8", "deq4bf16")
    print(f"{'shape':22}" + "".join(f"{c:>10}" for c in cols))
    for name in args.shapes.split(","):
        out, n_in = SHAPES[name]
        w = torch.randn(out, n_in)
        x = torch.randn(args.tokens, n_in)
        wb, xb = w.bfloat16(), x.bfloat16()
        i8 = quant.Int8Linear(w, keep_rows=True)
        i4 = quant.Int4Linear(w)
        fb = fbgemm_int8(w)
        deq = dequant_int4(i4) if quant._quantcpu else None
        runs = {
            "fp32": (F.linear, x, w),
            "bf16": (F.linear, xb, wb),
            "int8": (i8, x),
            "int4": (i4, x),
            "fbgemm8": (fb, x) if fb else None,
            "deq4bf16": (deq, x) if deq else None,
        }
        flop = 2 * args.tokens * out * n_in
        cells = []
        for c in cols:
            call = runs[c]
            cells.append(f"{flop / timed(call, args.runs, clock) / 1e9:10.1f}" if call else f"{'-':>10}")
        print(f"{name:22}" + "".join(cells), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
