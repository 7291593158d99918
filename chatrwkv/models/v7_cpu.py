"""The C one-token step of RWKV v7 (`_v7cpu.c`), wired to a loaded `RWKV7`.

`build(model)` describes the model's prepared weights to the C side by address (no copy) and
returns None when the C part cannot run them: extension not built, not on the CPU, or a weight
layout it does not know. The returned `CpuStep` (cpu_step.py) holds the weights it points into;
`step(token, state)` advances a `WKVState` in place, as the torch twin
`RWKV7._forward_one_torch` does, and returns fp32 logits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .arena import Arena
from .cpu_step import (
    CK_DTYPES,
    CpuStep,
    StepModule,
    Unsupported,
    fp32_address,
    matrix,
    weight_arena,
)

if TYPE_CHECKING:
    from .v7 import RWKV7, RWKV7Config

C_STEP = StepModule("_v7cpu")
available, missing, use_simd = C_STEP.available, C_STEP.missing, C_STEP.use_simd


def time_mix_seq(S: torch.Tensor, r: torch.Tensor, w: torch.Tensor, k: torch.Tensor,
                 v: torch.Tensor, a: torch.Tensor, g: torch.Tensor,
                 vecs: tuple[torch.Tensor, ...]) -> torch.Tensor | None:
    """The time mix from its projections to the input of its output projection, over a
    sequence in C (`_v7wkv.h`), or None where that cannot run (extension not built, not CPU
    fp32, gradients wanted). S [B, H, N, N] is updated in place; r, w (the decay itself), k, v
    (after the value residual), a (the in-context learning rate), g are [B, T, H * N]; vecs:
    the layer's k_k, k_a, r_k, ln_x weight and bias, [H * N] each. Returns y [B, T, H * N]."""
    ins = (r, w, k, v, a, g)
    mod = C_STEP.module
    if (mod is None or S.device.type != "cpu" or S.dtype != torch.float32
            or not S.is_contiguous() or S.dim() != 4 or r.dim() != 3
            or any(t.dtype != torch.float32 or t.device.type != "cpu" or t.shape != r.shape
                   for t in ins)
            or (torch.is_grad_enabled() and any(t.requires_grad for t in (S, *ins)))):
        return None
    B, H, N, _ = S.shape
    if r.shape[0] != B or r.shape[2] != H * N:
        return None
    try:
        vec_addresses = tuple(fp32_address(t.reshape(-1)) for t in vecs)
    except Unsupported:
        return None
    ins = tuple(t.contiguous() for t in ins)
    y = torch.empty_like(ins[0])
    mod.time_mix_seq(S.data_ptr(), tuple(t.data_ptr() for t in ins), vec_addresses,
                        y.data_ptr(), B, r.shape[1], H, N, torch.get_num_threads())
    return y


def arena(cfg: RWKV7Config, dtype: str, weight_dtype: torch.dtype,
          device: torch.device) -> Arena | None:
    C, F_, D = cfg.n_embd, cfg.ffn_dim, cfg.d_embed
    shapes = [(C, C)] * 4 + [(F_, C), (C, F_)] + ([(D * D, C)] if D else [])  # DE: s_emb_x
    return weight_arena(cfg, dtype, weight_dtype, device, shapes, available())


def build(model: RWKV7, n_threads: int | None = None) -> CpuStep | None:
    mod = C_STEP.module
    if mod is None or model.device.type != "cpu" or model.act_dtype != torch.float32:
        return None
    c = model.config
    try:
        layers = []
        for p in model.layers:
            vecs = (p.ln1_w, p.ln1_b, p.maa, p.w0, p.a0, p.v0, p.k_k, p.k_a, p.r_k,
                    p.ln_x_w, p.ln_x_b, p.ln2_w, p.ln2_b, p.ffn_x_k)
            mats = (p.R, p.K, p.V, p.O, p.ffn_K, p.ffn_V, p.w1, p.w2, p.a1, p.a2,
                    p.v1, p.v2, p.g1, p.g2)
            layers.append(tuple(fp32_address(v) for v in vecs) + tuple(matrix(m) for m in mats)
                          + (_deep_embed(p, c.d_embed),))
        emb = model.emb
        if emb.dtype not in CK_DTYPES or not emb.is_contiguous():
            raise Unsupported
        handle = mod.new_model(
            (c.n_layer, c.n_embd, c.n_head, c.head_size, c.ffn_dim, c.vocab_size),
            emb.data_ptr(), CK_DTYPES[emb.dtype], fp32_address(model.ln0_w),
            fp32_address(model.ln0_b), fp32_address(model.ln_out_w),
            fp32_address(model.ln_out_b), matrix(model.head), layers,
            n_threads or torch.get_num_threads())
    except Unsupported:
        return None
    weights = (model.layers, model.emb, model.ln0_w, model.ln0_b, model.ln_out_w,
               model.ln_out_b, model.head)
    shapes = {"att_x": (c.n_layer, c.n_embd),
              "wkv": (c.n_layer, c.n_head, c.head_size, c.head_size),
              "ffn_x": (c.n_layer, c.n_embd)}  # in the order `step` takes them
    return CpuStep(mod, handle, weights, c.vocab_size, shapes)


def _deep_embed(p, rank: int) -> tuple | None:
    """A layer's DeepEmbed item for the C side (v7_de.py's tensors), or None for plain v7."""
    if p.s_emb is None:
        return None
    s_emb = p.s_emb
    if s_emb.dtype not in CK_DTYPES or not s_emb.is_contiguous() or s_emb.device.type != "cpu":
        raise Unsupported
    return (rank, s_emb.data_ptr(), CK_DTYPES[s_emb.dtype], fp32_address(p.s1),
            fp32_address(p.s0), matrix(p.s_emb_x), matrix(p.s2))
