"""The C one-token step of RWKV v4 (`_v4cpu.c`), wired to a loaded `RWKV4`.

`build(model)` describes the model's prepared weights to the C side by address (no copy)
and returns None when the C part cannot run them: extension not built, not on the CPU, not fp32
activations, fp16 weights (their residual rescale), or a weight layout it does not know. The
object holds the weights it points into, so they live as long as it does. `step(token, state)`
advances a `V4State` in place, as the torch twin `RWKV4._forward_one_torch` does, and returns
fp32 logits. Activations stay fp32 in C for every weight dtype, where the torch twin rounds them
to 16 bits for 16-bit weights (int8 weights, one token at a time, keep fp32 activations in both).
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
    from .base import ModelConfig
    from .v4 import RWKV4

C_STEP = StepModule("_v4cpu")
available, missing, use_simd = C_STEP.available, C_STEP.missing, C_STEP.use_simd

EMB_DTYPES = {**CK_DTYPES, torch.float16: 3}  # an fp32 model keeps a 16-bit file's embedding
STATE_FIELDS = ("att_x", "att_num", "att_den", "att_max", "ffn_x")  # the order `step` takes


def arena(cfg: ModelConfig, dtype: str, weight_dtype: torch.dtype,
          device: torch.device) -> Arena | None:
    C, F_ = cfg.n_embd, cfg.ffn_dim
    return weight_arena(cfg, dtype, weight_dtype, device, [(C, C)] * 5 + [(F_, C), (C, F_)],
                        available())


def build(model: RWKV4, n_threads: int | None = None) -> CpuStep | None:
    mod = C_STEP.module
    if mod is None or model.device.type != "cpu" or model.act_dtype != torch.float32 \
            or model.rescale_layer:
        return None
    c = model.config
    try:
        layers = []
        for w in model.layers:
            vecs = (w.ln1_w, w.ln1_b, w.att_mix_k, w.att_mix_v, w.att_mix_r, w.time_decay,
                    w.time_first, w.ln2_w, w.ln2_b, w.ffn_mix_k, w.ffn_mix_r)
            mats = (w.att_key, w.att_value, w.att_receptance, w.att_output, w.ffn_key,
                    w.ffn_receptance, w.ffn_value)
            layers.append(tuple(fp32_address(v) for v in vecs) + tuple(matrix(m) for m in mats))
        emb = model.emb
        if emb.dtype not in EMB_DTYPES or not emb.is_contiguous() or emb.device.type != "cpu":
            raise Unsupported
        handle = mod.new_model(
            (c.n_layer, c.n_embd, c.ffn_dim, c.vocab_size), emb.data_ptr(),
            EMB_DTYPES[emb.dtype], fp32_address(model.ln_out_w), fp32_address(model.ln_out_b),
            matrix(model.head), layers, n_threads or torch.get_num_threads())
    except Unsupported:
        return None
    weights = (model.layers, model.emb, model.ln_out_w, model.ln_out_b, model.head)
    shapes = {name: (c.n_layer, c.n_embd) for name in STATE_FIELDS}
    return CpuStep(mod, handle, weights, c.vocab_size, shapes)
