"""Random RWKV v6 (Finch, x060) weights in the official key layout.

Names and shapes follow RWKV-LM's `RWKV-v5/src/model.py` for x060 (the code that trained the
official v6 files): token-shift mixes `time_maa_*` [1, 1, C], the mix LoRA `time_maa_w1`
[C, 5 * D_mix] / `time_maa_w2` [5, D_mix, C] (order w, k, v, r, g), the decay LoRA
`time_decay_w1` [C, D_decay] / `time_decay_w2` [D_decay, C], `time_decay` [1, 1, C],
`time_faaaa` [H, N], GroupNorm `ln_x`, and a 3.5x channel-mix without a value mix. The values
follow that file's init schedule where it is informative (decay speeds, bonus, mixes) and are
otherwise small random numbers, so that the data-dependent parts actually move the outputs.
"""

from __future__ import annotations

import torch


def _ffn_dim(n_embd: int) -> int:
    # Official: int((n_embd * 3.5) // 32 * 32).
    return int((n_embd * 3.5) // 32 * 32)


def make_weights(n_layer: int, n_embd: int, vocab_size: int, head_size: int,
                 generator: torch.Generator, dtype: torch.dtype = torch.bfloat16,
                 mix_lora: int = 32, decay_lora: int = 64, ffn_dim: int | None = None,
                 time_state: bool = False) -> dict[str, torch.Tensor]:
    """A v6 state dict; `mix_lora`/`decay_lora` are D_mix / D_decay (official: 32 / 64).

    `time_state=True` adds the per-layer `att.time_state` [H, N, N] of state-tuned files.
    """
    if n_embd % head_size:
        raise ValueError(f"n_embd {n_embd} is not a multiple of head_size {head_size}")
    C, H, N = n_embd, n_embd // head_size, head_size
    F_ = ffn_dim or _ffn_dim(C)
    g = generator

    def randn(*shape: int, std: float) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std

    ddd = torch.arange(C, dtype=torch.float32) / C   # channel position in [0, 1)
    ramp = torch.arange(C, dtype=torch.float32) / max(C - 1, 1)
    w: dict[str, torch.Tensor] = {
        "emb.weight": randn(vocab_size, C, std=1.0),
        "blocks.0.ln0.weight": 1.0 + randn(C, std=0.05),
        "blocks.0.ln0.bias": randn(C, std=0.05),
    }
    for i in range(n_layer):
        r01 = i / max(n_layer - 1, 1)
        r1 = 1.0 - i / n_layer
        p, a, f = f"blocks.{i}.", f"blocks.{i}.att.", f"blocks.{i}.ffn."
        for ln in ("ln1", "ln2"):
            w[p + ln + ".weight"] = 1.0 + randn(C, std=0.05)
            w[p + ln + ".bias"] = randn(C, std=0.05)

        def mix(values: torch.Tensor) -> torch.Tensor:
            return (values + randn(C, std=0.05)).clamp(0.0, 1.0).view(1, 1, C)

        w[a + "time_maa_x"] = mix(1.0 - ddd.pow(r1))
        w[a + "time_maa_w"] = mix(1.0 - ddd.pow(r1))
        w[a + "time_maa_k"] = mix(1.0 - ddd.pow(r1))
        w[a + "time_maa_v"] = mix(1.0 - (ddd.pow(r1) + 0.3 * r01))
        w[a + "time_maa_r"] = mix(1.0 - ddd.pow(0.5 * r1))
        w[a + "time_maa_g"] = mix(1.0 - ddd.pow(0.5 * r1))
        # LoRAs start at zero in training; trained ones are small but clearly nonzero.
        w[a + "time_maa_w1"] = randn(C, 5 * mix_lora, std=0.5 / C ** 0.5)
        w[a + "time_maa_w2"] = randn(5, mix_lora, C, std=0.3 / mix_lora ** 0.5)
        # Decay speed -6..+1: per-token log-decays from -0.0025 to -2.7, as in trained files.
        speed = -6.0 + 7.0 * ramp.pow(0.7 + 1.3 * r01)
        w[a + "time_decay"] = (speed + randn(C, std=0.1)).view(1, 1, C)
        w[a + "time_decay_w1"] = randn(C, decay_lora, std=0.5 / C ** 0.5)
        w[a + "time_decay_w2"] = randn(decay_lora, C, std=0.5 / decay_lora ** 0.5)
        zigzag = ((torch.arange(C) + 1) % 3 - 1).float() * 0.1
        w[a + "time_faaaa"] = (r01 * (1.0 - ramp) + zigzag).view(H, N)
        for name in ("receptance", "key", "value", "gate"):
            w[a + name + ".weight"] = randn(C, C, std=1.0 / C ** 0.5)
        w[a + "output.weight"] = randn(C, C, std=0.5 / C ** 0.5)
        w[a + "ln_x.weight"] = ((1 + i) / n_layer) ** 0.7 + randn(C, std=0.05)
        w[a + "ln_x.bias"] = randn(C, std=0.02)
        if time_state:
            w[a + "time_state"] = randn(H, N, N, std=0.3)

        w[f + "time_maa_k"] = mix(1.0 - ddd.pow(r1))
        w[f + "time_maa_r"] = mix(1.0 - ddd.pow(r1))
        w[f + "key.weight"] = randn(F_, C, std=1.0 / C ** 0.5)
        w[f + "receptance.weight"] = randn(C, C, std=1.0 / C ** 0.5)
        w[f + "value.weight"] = randn(C, F_, std=0.5 / F_ ** 0.5)
    w["ln_out.weight"] = 1.0 + randn(C, std=0.05)
    w["ln_out.bias"] = randn(C, std=0.05)
    w["head.weight"] = randn(vocab_size, C, std=2.0 / C ** 0.5)
    return {k: v.to(dtype).contiguous() for k, v in w.items()}
