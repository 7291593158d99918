"""One block of memory with 2 MiB pages for the big prepared weights on the CPU.

Decoding streams every big matrix once per token. With 4 KiB pages the hardware prefetchers
restart at every page and the TLB misses all the way; measured on the 2-core development
machine, a row-dot matrix-vector pass over 428 MB ran at 22-25 GB/s on 4 KiB pages and 30-49 GB/s
on transparent huge pages (two threads, three alternating runs each). Linux gives huge pages to
a private anonymous mapping advised with MADV_HUGEPAGE before it is touched, in 2 MiB-aligned
pieces, so the weights go into one such mapping sized up front (per-matrix mappings would each
round their tail up to a whole huge page). Where there is no madvise (not Linux), or the kernel
says no, the memory is ordinary pages and everything works the same, slower.
"""

from __future__ import annotations

import mmap

import torch

HUGE_PAGE = 2 << 20
ALIGN = 64  # a cache line: every matrix starts on one


def _round_up(n: int, to: int) -> int:
    return -(-n // to) * to


class Arena:
    """`take(shape, dtype)` hands out consecutive, untouched, cache-line aligned tensors."""

    def __init__(self, nbytes: int):
        self.size = _round_up(max(nbytes, 1), ALIGN)
        self.used = 0
        mm = mmap.mmap(-1, self.size + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if hasattr(mmap, "MADV_HUGEPAGE"):
            try:
                mm.madvise(mmap.MADV_HUGEPAGE)
            except OSError:  # THP disabled or unknown to this kernel: ordinary pages
                pass
        whole = torch.frombuffer(mm, dtype=torch.uint8)  # keeps the mapping alive
        start = -whole.data_ptr() % HUGE_PAGE
        self.bytes = whole[start:start + self.size]

    @staticmethod
    def nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
        n = dtype.itemsize
        for d in shape:
            n *= d
        return _round_up(n, ALIGN)

    def take(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        n = self.nbytes(shape, dtype)
        if self.used + n > self.size:
            raise ValueError(f"arena of {self.size} bytes is full ({self.used} used, {n} asked)")
        count = 1
        for d in shape:
            count *= d
        t = self.bytes[self.used:self.used + count * dtype.itemsize].view(dtype).view(shape)
        self.used += n
        return t
