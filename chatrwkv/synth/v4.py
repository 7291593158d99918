"""Random RWKV v4 weights in the official layout (RWKV-LM `RWKV-v4neo/src/model.py`).

Values follow the official initialisation where it matters for stability (time_decay spread over
[-5, 3], time_first near log(0.3), token-shift mixes in [0, 1]) plus noise, so that the decays
neither vanish nor explode; matrices are N(0, 1/fan_in) like trained ones are in scale.
"""

from __future__ import annotations

import math

import torch


def make_weights(n_layer: int, n_embd: int, vocab_size: int, head_size: int,
                 generator: torch.Generator, dtype: torch.dtype = torch.bfloat16,
                 **variant) -> dict[str, torch.Tensor]:
    """A v4 state dict: `head_size` is unused (v4 has no heads); no variants exist."""
    if variant:
        raise TypeError(f"RWKV v4 has no variants, got {sorted(variant)}")
    C, F = n_embd, 4 * n_embd
    g = generator

    def randn(*shape: int, std: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std

    def matrix(out_dim: int, in_dim: int) -> torch.Tensor:
        return randn(out_dim, in_dim, std=1.0 / math.sqrt(in_dim))

    def norm(prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.weight": 1.0 + randn(C, std=0.1), f"{prefix}.bias": randn(C, std=0.05)}

    def mix(values: torch.Tensor) -> torch.Tensor:
        return (values + randn(C, std=0.05)).clamp(0.0, 1.0).reshape(1, 1, C)

    w: dict[str, torch.Tensor] = {"emb.weight": randn(vocab_size, C, std=0.5)}
    w.update(norm("blocks.0.ln0"))
    channel = torch.arange(C, dtype=torch.float32)
    ratio_x = channel / C
    for i in range(n_layer):
        p = f"blocks.{i}."
        ratio_0_to_1 = i / max(n_layer - 1, 1)
        ratio_1_to_0 = 1.0 - i / n_layer
        w.update(norm(p + "ln1"))
        w.update(norm(p + "ln2"))
        decay_speed = -5 + 8 * (channel / max(C - 1, 1)) ** (0.7 + 1.3 * ratio_0_to_1)
        w[p + "att.time_decay"] = decay_speed + randn(C, std=0.3)
        zigzag = ((channel + 1) % 3 - 1) * 0.5
        w[p + "att.time_first"] = math.log(0.3) + zigzag + randn(C, std=0.3)
        w[p + "att.time_mix_k"] = mix(ratio_x ** ratio_1_to_0)
        w[p + "att.time_mix_v"] = mix(ratio_x ** ratio_1_to_0 + 0.3 * ratio_0_to_1)
        w[p + "att.time_mix_r"] = mix(ratio_x ** (0.5 * ratio_1_to_0))
        w[p + "att.key.weight"] = matrix(C, C)
        w[p + "att.value.weight"] = matrix(C, C)
        w[p + "att.receptance.weight"] = matrix(C, C)
        w[p + "att.output.weight"] = matrix(C, C)
        w[p + "ffn.time_mix_k"] = mix(ratio_x ** ratio_1_to_0)
        w[p + "ffn.time_mix_r"] = mix(ratio_x ** ratio_1_to_0)
        w[p + "ffn.key.weight"] = matrix(F, C)
        w[p + "ffn.receptance.weight"] = matrix(C, C)
        w[p + "ffn.value.weight"] = matrix(C, F)
    w.update(norm("ln_out"))
    w["head.weight"] = matrix(vocab_size, C)
    return {k: v.to(dtype).contiguous() for k, v in w.items()}
