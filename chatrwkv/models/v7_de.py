"""RWKV-7 DeepEmbed ("rwkv7a", version "7.0a"): the channel-mix key scale, shared by v7.py's
sequence and one-token paths (the C step, `_v7cpu.c`, is their third twin).

The spec is RWKV-LM `RWKV-v7/rwkv_v7a_demo.py` and the `rwkv` package 0.8.32 run with
RWKV_DE_VERSION=1 (`rwkv/model.py`, `RWKV_x070_CMix_one/_seq` and the "merge emb residual"
loop). Per layer the checkpoint adds, as the official trainer names and shapes them:

    ffn.s_emb.weight   [V, D*D]   an Embedding: one D x D matrix per token (D = 32 officially)
    ffn.s_emb_x.weight [D*D, C]   a Linear from the (ln0-normalised) token embedding
    ffn.s1             [C, D]     ffn.s2 [D, F]     ffn.s0 [1, 1, F]

and the channel mix becomes, for a token t with ln2 output x (not the token-shifted mix):

    S_t = s_emb[t] + ln0(emb[t]) @ s_emb_x.T          (the package folds this into s_emb at load)
    k   = relu(mix(x) @ K)^2 * ((x @ s1) @ S_t.view(D, D) @ s2 + s0)

The package folds `ln0(emb) @ s_emb_x.T` into the whole [V, D*D] table of every layer at load
(a new V x 1024 matrix per layer: 3.2 GB in fp32 for a 0.1B model). Here `s_emb` stays as stored,
in the checkpoint's memory-mapped pages, and the same sum is formed for the rows of the tokens
being run (`deep_embed_rows`): ln0 first, then the product, then the add, as the package orders it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..checkpoint import Checkpoint
from ..errors import CheckpointError
from .pages import PageReleaser

if TYPE_CHECKING:
    from .v7 import _Layer

DEEP_EMBED_KEY = "ffn.s_emb.weight"
# Reading one 2 KiB row of a mapped file maps much more than its page (fault-around and large
# page-cache folios: measured here ~1.2 MB of RSS per one-token step of a 0.1B model, and 1 GB
# after a 200-token prompt, MADV_RANDOM or not), so a chat would soon hold most of the 1.6 GB
# s_emb tables in its RSS. They are clean file pages, so they are unmapped (MADV_DONTNEED; they
# stay in the page cache): after each layer's gather in sequence mode, and every RELEASE_EVERY
# one-token steps (12 madvise calls measured ~0.3 ms: ~40 us a token at 8).
RELEASE_EVERY = 8


class DeepEmbedPages:
    """Unmaps the pages of the s_emb tables that reading rows has mapped into the process."""

    def __init__(self, path: object, tables: list[torch.Tensor]):
        self._pages = PageReleaser(path)
        self._tables = tables
        self._steps = 0

    def release(self, table: torch.Tensor) -> None:
        self._pages.release(table)

    def stepped(self) -> None:
        """After a one-token step: every RELEASE_EVERY steps, release every table."""
        self._steps += 1
        if self._steps >= RELEASE_EVERY:
            self._steps = 0
            for t in self._tables:
                self._pages.release(t)


def deep_embed_rank(ckpt: Checkpoint, n_embd: int) -> int:
    """D from `blocks.0.ffn.s1` [C, D]; `s_emb` rows must be D*D wide (the package's view(D, D))."""
    s1, s_emb = ckpt.require("blocks.0.ffn.s1"), ckpt.require("blocks.0." + DEEP_EMBED_KEY)
    if s1.dim() != 2 or s1.shape[0] != n_embd:
        raise CheckpointError(f"{ckpt.path}: tensor 'blocks.0.ffn.s1' has shape "
                              f"{tuple(s1.shape)}, expected ({n_embd}, rank)")
    D = s1.shape[1]
    if s_emb.dim() != 2 or s_emb.shape[1] != D * D:
        raise CheckpointError(f"{ckpt.path}: tensor 'blocks.0.{DEEP_EMBED_KEY}' has shape "
                              f"{tuple(s_emb.shape)}, expected (vocab, {D * D})")
    return D


def deep_embed_rows(p: _Layer, tokens: torch.Tensor | int, x0: torch.Tensor,
                    mm: Callable[[torch.Tensor, object], torch.Tensor]) -> torch.Tensor:
    """The folded `s_emb` rows of `tokens` (any shape, or one int), fp32 [..., D*D] on x0's device:
    the stored rows plus ln0(emb) @ s_emb_x.T, where `x0` is ln0(emb[tokens]) in fp32."""
    assert p.s_emb is not None and p.s_emb_x is not None
    idx = tokens.cpu() if isinstance(tokens, torch.Tensor) else tokens
    rows = p.s_emb[idx].to(device=x0.device, dtype=torch.float32)  # a gather from the file's pages
    return rows + mm(x0, p.s_emb_x).float()


def deep_embed_scale(p: _Layer, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The key scale (x @ s1) @ S.view(D, D) @ s2 + s0, [..., F] in x's dtype; x is ln2's output
    [..., C], `rows` the folded s_emb rows [..., D*D] (`RWKV_x070_CMix_seq` in the package)."""
    assert p.s1 is not None and p.s2 is not None and p.s0 is not None
    D = p.s1.shape[0]
    ss = F.linear(x, p.s1)                                               # [..., D]
    ss = (ss.unsqueeze(-2) @ rows.to(x.dtype).view(*rows.shape[:-1], D, D)).squeeze(-2)
    return F.linear(ss, p.s2) + p.s0
