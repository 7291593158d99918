"""The machine's memory read bandwidth, for the bench's decode ceiling.

Decoding one token reads every big matrix and the head once (and one row of the embedding), so
`bandwidth / bytes read per token` bounds decode speed from above; the bench prints each
engine's decode tok/s as a fraction of that bound. The bandwidth is the best of a few timed
reads of a buffer far larger than any cache, on the bench's thread count (the buffer is written
first so every page is real).

The read is the C extension's `stream_sum` (one 512-bit load and an add per 64 bytes, the
kernels' prefetch) where it is built. torch's sum of a float buffer, used before and still the
fallback, is compute-bound on the 2-core development machine: 12 GB/s on one thread and 24 on
two, where a plain read reaches 15 and 30, so it understated the bandwidth by a fifth and let
decode/bw ratios pass 1 (`benchmarks/ceiling.c` measures both kinds of reads and the kernels).
"""

from __future__ import annotations

import time

import torch

BUFFER_BYTES = 1 << 30
RUNS = 5


def read_bandwidth(nbytes: int = BUFFER_BYTES, runs: int = RUNS) -> float:
    """Bytes per second that a full read of an `nbytes` buffer reaches (best of `runs`), on
    torch's thread count."""
    from .models.quant import _quantcpu

    buf = torch.ones(nbytes // 4)
    if _quantcpu is not None:
        threads = torch.get_num_threads()

        def read() -> None:
            _quantcpu.stream_sum(buf.data_ptr(), buf.numel() * 4, threads)
    else:
        def read() -> None:
            buf.sum()
    read()  # warm-up
    best = 0.0
    for _ in range(runs):
        t0 = time.perf_counter()
        read()
        best = max(best, buf.numel() * 4 / (time.perf_counter() - t0))
    return best
