"""The C one-token step of RWKV v5 (`_v5cpu.c`), wired to a loaded `RWKV5`.

`build(model)` describes the model's prepared weights to the C side by address (no copy) and
returns None when the C part cannot run them: extension not built, not on the CPU, not fp32
activations, fp16's residual rescale, or a weight layout it does not know. v5.py has already
settled the sub-versions (5.0, 5.1, 5.2: decay and bonus as [H, N], 5.0 without the gate), so
every one of them runs here. The returned `CpuStep` (cpu_step.py) holds the weights it points
into; `step(token, state)` advances a `WKVState` in place, as the torch twin
`RWKV5._forward_one_torch` does, and returns fp32 logits. Activations stay fp32 in C for every
weight dtype, where the torch twin rounds them to bf16 for bf16 weights.
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
    from .v5 import RWKV5, V5Config

C_STEP = StepModule("_v5cpu")
available, missing, use_simd = C_STEP.available, C_STEP.missing, C_STEP.use_simd


def arena(cfg: V5Config, dtype: str, weight_dtype: torch.dtype,
          device: torch.device) -> Arena | None:
    C, F_ = cfg.n_embd, cfg.ffn_dim
    square = 6 if cfg.gated else 5  # r, k, v (, g), output; ffn receptance
    return weight_arena(cfg, dtype, weight_dtype, device, [(C, C)] * square + [(F_, C), (C, F_)],
                        available())


def build(model: RWKV5, n_threads: int | None = None) -> CpuStep | None:
    mod = C_STEP.module
    if mod is None or model.device.type != "cpu" or \
            model.compute_dtype != torch.float32 or any(b.halve_after for b in model.blocks):
        return None
    c = model.config
    try:
        layers = []
        for b in model.blocks:
            if b.att_mix.shape[0] != (4 if b.gate is not None else 3):
                raise Unsupported
            vecs = (b.ln1_w, b.ln1_b, b.att_mix, b.decay, b.bonus, b.ln_x_w, b.ln_x_b,
                    b.ln2_w, b.ln2_b, b.ffn_mix)
            mats = (b.receptance, b.key, b.value, b.gate, b.output, b.ffn_key,
                    b.ffn_receptance, b.ffn_value)
            layers.append(tuple(fp32_address(v) for v in vecs) + tuple(matrix(m) for m in mats))
        emb = model.emb
        if emb.dtype not in CK_DTYPES or not emb.is_contiguous() or emb.device.type != "cpu":
            raise Unsupported
        handle = mod.new_model(
            (c.n_layer, c.n_embd, c.n_head, c.head_size, c.ffn_dim, c.vocab_size),
            emb.data_ptr(), CK_DTYPES[emb.dtype], fp32_address(model.ln_out_w),
            fp32_address(model.ln_out_b), matrix(model.head), layers,
            n_threads or torch.get_num_threads())
    except Unsupported:
        return None
    weights = (model.blocks, model.emb, model.ln_out_w, model.ln_out_b, model.head)
    shapes = {"att_x": (c.n_layer, c.n_embd),
              "wkv": (c.n_layer, c.n_head, c.head_size, c.head_size),
              "ffn_x": (c.n_layer, c.n_embd)}  # in the order `step` takes them
    return CpuStep(mod, handle, weights, c.vocab_size, shapes)
