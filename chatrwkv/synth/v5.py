"""Random RWKV v5 weights (5.0, 5.1, 5.2) in the official key layout.

Layouts, as in BlinkDL's RWKV-LM training code:
- 5.0 (RWKV-5 preview): per-head `time_decay` [H] and `time_first` [H] (log of the bonus), no gate;
- 5.1: adds `att.gate.weight` [C, C] and `att.time_mix_g`; the bonus is `time_faaaa` [H];
- 5.2: per-channel `time_decay` and `time_faaaa`, both [H, N].
The token-shift mixes are [1, 1, C]; linear layers are [out, in]; ln_x is GroupNorm(H, C).
"""

from __future__ import annotations

import torch

SUBVERSIONS = ("5.0", "5.1", "5.2")


def make_weights(n_layer: int, n_embd: int, vocab_size: int, head_size: int,
                 generator: torch.Generator, dtype: torch.dtype = torch.bfloat16,
                 subversion: str = "5.2", time_first: bool | None = None,
                 ffn_dim: int | None = None) -> dict[str, torch.Tensor]:
    """State dict of one random v5 model. `time_first=True` writes the 5.0-style log-bonus
    `time_first` instead of `time_faaaa` (default: only for 5.0; 5.2 always uses time_faaaa)."""
    if subversion not in SUBVERSIONS:
        raise ValueError(f"unknown v5 sub-version {subversion!r}; one of {SUBVERSIONS}")
    C, N = n_embd, head_size
    if C % N:
        raise ValueError(f"n_embd {C} is not a multiple of head_size {N}")
    H = C // N
    Fd = ffn_dim or 4 * C
    gated = subversion != "5.0"
    per_channel = subversion == "5.2"
    use_time_first = (subversion == "5.0") if time_first is None else time_first
    if per_channel and use_time_first:
        raise ValueError("5.2 files carry time_faaaa, not time_first")

    def randn(*shape: int, std: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * std

    def uniform(*shape: int, lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(*shape, generator=generator)

    def norm_pair(prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.weight": 1.0 + randn(C, std=0.1), f"{prefix}.bias": randn(C, std=0.05)}

    def mix() -> torch.Tensor:
        return uniform(1, 1, C, lo=0.05, hi=0.95)

    w: dict[str, torch.Tensor] = {"emb.weight": randn(vocab_size, C, std=0.5)}
    w.update(norm_pair("blocks.0.ln0"))
    decay_shape = (H, N) if per_channel else (H,)
    for i in range(n_layer):
        p = f"blocks.{i}."
        att, ffn = p + "att.", p + "ffn."
        w.update(norm_pair(p + "ln1"))
        w.update(norm_pair(p + "ln2"))
        w[att + "time_mix_k"] = mix()
        w[att + "time_mix_v"] = mix()
        w[att + "time_mix_r"] = mix()
        if gated:
            w[att + "time_mix_g"] = mix()
        # time_decay in [-6, 1] gives per-token decays w = exp(-exp(td)) from 0.998 down to 0.066:
        # slow and fast heads, as trained models have.
        w[att + "time_decay"] = uniform(*decay_shape, lo=-6.0, hi=1.0)
        if use_time_first:
            w[att + "time_first"] = uniform(*decay_shape, lo=-3.0, hi=0.5)
        else:
            w[att + "time_faaaa"] = uniform(*decay_shape, lo=-0.5, hi=1.0)
        w[att + "receptance.weight"] = randn(C, C, std=C ** -0.5)
        w[att + "key.weight"] = randn(C, C, std=C ** -0.5)
        w[att + "value.weight"] = randn(C, C, std=C ** -0.5)
        w[att + "output.weight"] = randn(C, C, std=C ** -0.5)
        if gated:
            w[att + "gate.weight"] = randn(C, C, std=C ** -0.5)
        w[att + "ln_x.weight"] = 1.0 + randn(C, std=0.1)
        w[att + "ln_x.bias"] = randn(C, std=0.05)
        w[ffn + "time_mix_k"] = mix()
        w[ffn + "time_mix_r"] = mix()
        w[ffn + "key.weight"] = randn(Fd, C, std=C ** -0.5)
        w[ffn + "receptance.weight"] = randn(C, C, std=C ** -0.5)
        w[ffn + "value.weight"] = randn(C, Fd, std=Fd ** -0.5)
    w.update(norm_pair("ln_out"))
    w["head.weight"] = randn(vocab_size, C, std=C ** -0.5)
    return {k: v.to(dtype).contiguous() for k, v in w.items()}
