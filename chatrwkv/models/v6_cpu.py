"""The C one-token step of RWKV v6 (`_v6cpu.c`), wired to a loaded `RWKV6`.

`build(model)` describes the model's prepared weights to the C side by address (no copy) and
returns None when the C part cannot run them: extension not built, not on the CPU, not fp32
activations, fp16's residual rescale, or a weight layout it does not know. The returned
`CpuStep` (cpu_step.py) holds the weights it points into; `step(token, state)` advances a
`WKVState` in place, as the torch twin `RWKV6._forward_one_torch` does, and returns fp32 logits.
Activations stay fp32 in C for every weight dtype, where the torch twin rounds them to bf16
for bf16 weights (int8 / int4 keep fp32 activations in both).
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
    from .v6 import RWKV6, V6Config

C_STEP = StepModule("_v6cpu")
available, missing, use_simd = C_STEP.available, C_STEP.missing, C_STEP.use_simd


def arena(cfg: V6Config, dtype: str, weight_dtype: torch.dtype,
          device: torch.device) -> Arena | None:
    C, F_ = cfg.n_embd, cfg.ffn_dim
    return weight_arena(cfg, dtype, weight_dtype, device, [(C, C)] * 6 + [(F_, C), (C, F_)],
                        available())


def build(model: RWKV6, n_threads: int | None = None) -> CpuStep | None:
    mod = C_STEP.module
    if mod is None or model.device.type != "cpu" or \
            model.compute_dtype != torch.float32 or any(h for _, _, h in model.layers):
        return None
    c = model.config
    try:
        layers = []
        for att, ffn, _ in model.layers:
            vecs = (att.ln_w, att.ln_b, att.maa_x, att.maa_wkvrg, att.time_decay,
                    att.time_first, att.lnx_w, att.lnx_b, ffn.ln_w, ffn.ln_b, ffn.maa_k,
                    ffn.maa_r)
            mats = (att.maa_w1, *att.maa_w2.unbind(0), att.decay_w1, att.decay_w2,
                    att.receptance, att.key, att.value, att.gate, att.output, ffn.key,
                    ffn.receptance, ffn.value)
            layers.append(tuple(fp32_address(v) for v in vecs) + tuple(matrix(m) for m in mats))
        emb = model.emb
        if emb.dtype not in CK_DTYPES or not emb.is_contiguous() or emb.device.type != "cpu":
            raise Unsupported
        handle = mod.new_model(
            (c.n_layer, c.n_embd, c.n_head, c.head_size, c.ffn_dim, c.vocab_size, c.mix_lora,
             c.decay_lora),
            emb.data_ptr(), CK_DTYPES[emb.dtype], fp32_address(model.ln_out_w),
            fp32_address(model.ln_out_b), matrix(model.head), layers,
            n_threads or torch.get_num_threads())
    except Unsupported:
        return None
    weights = (model.layers, model.emb, model.ln_out_w, model.ln_out_b, model.head)
    shapes = {"att_x": (c.n_layer, c.n_embd),
              "wkv": (c.n_layer, c.n_head, c.head_size, c.head_size),
              "ffn_x": (c.n_layer, c.n_embd)}  # in the order `step` takes them
    return CpuStep(mod, handle, weights, c.vocab_size, shapes)
