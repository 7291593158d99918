"""The machine's memory read bandwidth, for the bench's decode ceiling.

Decoding one token reads every big matrix and the head once (and one row of the embedding), so
`bandwidth / bytes read per token` bounds decode speed from above; the bench prints each
engine's decode tok/s as a fraction of that bound. The bandwidth is the best of a few timed
sums over a buffer far larger than any cache, on the bench's thread count (torch's vectorized
reduction streams at the memory's pace; the buffer is written first so every page is real).
"""

from __future__ import annotations

import time

import torch

BUFFER_BYTES = 1 << 30
RUNS = 5


def read_bandwidth(nbytes: int = BUFFER_BYTES, runs: int = RUNS) -> float:
    """Bytes per second that a full read of an `nbytes` buffer reaches (best of `runs`)."""
    buf = torch.ones(nbytes // 4)
    buf.sum()  # warm-up
    best = 0.0
    for _ in range(runs):
        t0 = time.perf_counter()
        buf.sum()
        best = max(best, buf.numel() * 4 / (time.perf_counter() - t0))
    return best
