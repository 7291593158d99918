"""Random RWKV v7 ("Goose", x070) weights in the official key layout.

Shapes and the value ranges follow the official trainer (RWKV-LM `RWKV-v7/train_temp/src/model.py`):
the token-shift mixes `x_r..x_g` and `ffn.x_k` are per-channel fractions in [0, 1], `w0` spreads the
base decays from slow to fast across channels, `k_k`/`k_a` start near 0.85 / 1, and the LoRA pairs
(`w1/w2`, `a1/a2`, `v1/v2`, `g1/g2`) have the trainer's widths. Unlike the trainer's init (where many
matrices start at zero) every tensor gets a small random part, so that each code path matters.

`deep_embed=True` writes the DeepEmbed variant ("rwkv7a", RWKV-LM `RWKV-v7/rwkv_v7a_demo.py`): per
layer `ffn.s_emb.weight` [V, D*D], `ffn.s_emb_x.weight` [D*D, C], `ffn.s1` [C, D], `ffn.s2` [D, F]
and `ffn.s0` [1, 1, F], with D = 32 as in the official files (the demo's `view(32, 32)`).
"""

from __future__ import annotations

import torch


def lora_widths(n_embd: int) -> dict[str, int]:
    """The official LoRA widths: decay (w), in-context learning rate (a), value mix (v), gate (g)."""
    def width(x: float) -> int:
        return max(32, int(round(x / 32) * 32))

    c = n_embd
    return {"w": width(1.8 * c ** 0.5), "a": width(1.8 * c ** 0.5),
            "v": width(1.3 * c ** 0.5), "g": width(0.6 * c ** 0.8)}


def make_weights(n_layer: int, n_embd: int, vocab_size: int, head_size: int,
                 generator: torch.Generator, dtype: torch.dtype = torch.bfloat16,
                 layer0_v_lora: bool = True, deep_embed: bool = False, deep_embed_rank: int = 32,
                 **variant) -> dict[str, torch.Tensor]:
    """A v7 state dict. `layer0_v_lora`: newer official files carry an unused layer-0 v0/v1/v2;
    `deep_embed`: the rwkv7a tensors, of rank `deep_embed_rank` (32 in the official files)."""
    if variant:
        raise ValueError(f"unknown v7 variant options: {sorted(variant)}")
    C, N = n_embd, head_size
    if C % N:
        raise ValueError(f"n_embd {C} is not a multiple of head_size {N}")
    H = C // N
    ffn = 4 * C
    lw = lora_widths(C)

    def randn(*shape: int, std: float) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * std

    def uniform(*shape: int, lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(*shape, generator=generator)

    def row(t: torch.Tensor) -> torch.Tensor:  # the official [1, 1, C] vector shape
        return t.reshape(1, 1, C)

    w: dict[str, torch.Tensor] = {}
    w["emb.weight"] = uniform(vocab_size, C, lo=-1.0, hi=1.0)
    w["blocks.0.ln0.weight"] = 1.0 + randn(C, std=0.1)
    w["blocks.0.ln0.bias"] = randn(C, std=0.1)
    ddd = torch.arange(C) / C
    for i in range(n_layer):
        p = f"blocks.{i}."
        r01 = i / max(n_layer - 1, 1)          # 0 at the first layer, 1 at the last
        r10 = 1.0 - i / n_layer                # 1 at the first layer, towards 0 at the last
        for name in ("ln1", "ln2"):
            w[p + name + ".weight"] = 1.0 + randn(C, std=0.1)
            w[p + name + ".bias"] = randn(C, std=0.1)
        for name, power in (("x_r", 0.2), ("x_w", 0.9), ("x_k", 0.7), ("x_v", 0.7),
                            ("x_a", 0.9), ("x_g", 0.2)):
            mix = 1.0 - ddd ** (power * r10) + randn(C, std=0.05)
            w[p + "att." + name] = row(mix.clamp(0.0, 1.0))
        # Base decay logits: -7 (slowest) .. -2 (fastest), plus the trainer's +0.5.
        n = torch.arange(C) / (C - 1)
        w[p + "att.w0"] = row(-7.0 + 5.0 * n ** (0.85 + r01 ** 0.5) + 0.5 + randn(C, std=0.3))
        w[p + "att.w1"] = randn(C, lw["w"], std=C ** -0.5)
        w[p + "att.w2"] = randn(lw["w"], C, std=0.1 * lw["w"] ** -0.5)
        w[p + "att.a0"] = row(randn(C, std=0.5))
        w[p + "att.a1"] = randn(C, lw["a"], std=C ** -0.5)
        w[p + "att.a2"] = randn(lw["a"], C, std=0.3 * lw["a"] ** -0.5)
        if i > 0 or layer0_v_lora:
            w[p + "att.v0"] = row(1.0 + randn(C, std=0.3))
            w[p + "att.v1"] = randn(C, lw["v"], std=C ** -0.5)
            w[p + "att.v2"] = randn(lw["v"], C, std=0.3 * lw["v"] ** -0.5)
        w[p + "att.g1"] = randn(C, lw["g"], std=C ** -0.5)
        w[p + "att.g2"] = randn(lw["g"], C, std=lw["g"] ** -0.5)
        w[p + "att.k_k"] = row(0.85 + randn(C, std=0.1))
        w[p + "att.k_a"] = row(1.0 + randn(C, std=0.1))
        w[p + "att.r_k"] = randn(H, N, std=0.1)
        for name, scale in (("receptance", 1.0), ("key", 1.0), ("value", 1.0), ("output", 0.5)):
            w[p + f"att.{name}.weight"] = randn(C, C, std=scale * C ** -0.5)
        w[p + "att.ln_x.weight"] = ((1 + i) / n_layer) ** 0.7 + randn(C, std=0.05)
        w[p + "att.ln_x.bias"] = randn(C, std=0.05)
        w[p + "ffn.x_k"] = row((1.0 - ddd ** (r10 ** 4) + randn(C, std=0.05)).clamp(0.0, 1.0))
        w[p + "ffn.key.weight"] = randn(ffn, C, std=C ** -0.5)
        w[p + "ffn.value.weight"] = randn(C, ffn, std=0.5 * ffn ** -0.5)
        if deep_embed:
            # The per-token key scale (s1 x)^T S s2 + s0 stays near 1: s0 ~ 1, the rest small.
            D = deep_embed_rank
            # [V, D*D] per layer (1.6 GB in bf16 at 0.1B): cast now, not all in fp32 at the end
            w[p + "ffn.s_emb.weight"] = randn(vocab_size, D * D, std=1.0).to(dtype)
            w[p + "ffn.s_emb_x.weight"] = randn(D * D, C, std=C ** -0.5)
            w[p + "ffn.s1"] = randn(C, D, std=C ** -0.5)
            w[p + "ffn.s2"] = randn(D, ffn, std=0.3 * D ** -1.0)
            w[p + "ffn.s0"] = (1.0 + randn(ffn, std=0.1)).reshape(1, 1, ffn)
    w["ln_out.weight"] = 1.0 + randn(C, std=0.1)
    w["ln_out.bias"] = randn(C, std=0.1)
    w["head.weight"] = randn(vocab_size, C, std=C ** -0.5)
    return {k: v.to(dtype).contiguous() for k, v in w.items()}
