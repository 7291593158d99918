"""Train a tiny RWKV-7 on Shakespeare in parallel (sequence) mode, save it in the official layout.

The forward pass is chatrwkv's own v7 sequence mode, built each step from the parameters (which
carry the official key names), so what is trained is exactly what the chat later runs as an RNN.

The vocabulary trick: Shakespeare uses only a small part of the 65536-token World vocabulary. We
train emb/head rows only for the tokens that occur; every other head row is fixed at zero, so its
logit is exactly 0. The full-vocabulary softmax is then the softmax over the used tokens plus one
constant column log(M) standing for the M unused tokens: the loss we optimise is the exact loss of
the saved 65536-row model, at a fraction of the head's cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..checkpoint import Checkpoint
from ..models.v7 import RWKV7

WORLD_ROWS = 65536


@dataclass(frozen=True)
class TrainConfig:
    n_layer: int = 6
    n_embd: int = 128
    head_size: int = 64
    ctx_len: int = 256
    batch: int = 8             # windows per optimiser step, run as one batch
    steps: int = 3000
    lr: float = 3e-3
    lr_final: float = 2e-4
    warmup: int = 100
    weight_decay: float = 0.01
    seed: int = 1234
    decay_lora: int = 16
    aaa_lora: int = 16
    mv_lora: int = 16
    gate_lora: int = 32


def _ortho(rows: int, cols: int, gain: float, gen: torch.Generator) -> torch.Tensor:
    a = torch.randn(max(rows, cols), min(rows, cols), generator=gen)
    q, _ = torch.linalg.qr(a)
    q = q if rows >= cols else q.T
    return (q[:rows, :cols] * gain).contiguous()


def init_weights(cfg: TrainConfig, vocab: int) -> dict[str, torch.Tensor]:
    """RWKV-7 initialisation after the official training code (RWKV-LM, RWKV-v7 `train_temp`)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    C, L, N = cfg.n_embd, cfg.n_layer, cfg.head_size
    H = C // N
    w: dict[str, torch.Tensor] = {}
    w["emb.weight"] = (torch.rand(vocab, C, generator=gen) * 2 - 1) * 1e-4
    ddd = torch.arange(C, dtype=torch.float32) / C
    for i in range(L):
        p = f"blocks.{i}."
        r01 = i / max(L - 1, 1)
        r10 = 1.0 - i / L
        if i == 0:
            w[p + "ln0.weight"], w[p + "ln0.bias"] = torch.ones(C), torch.zeros(C)
        for ln in ("ln1", "ln2"):
            w[p + ln + ".weight"], w[p + ln + ".bias"] = torch.ones(C), torch.zeros(C)
        a = p + "att."
        for name, power in (("x_r", 0.2), ("x_w", 0.9), ("x_k", 0.7), ("x_v", 0.7), ("x_a", 0.9),
                            ("x_g", 0.2)):
            w[a + name] = (1.0 - ddd ** (power * r10)).view(1, 1, C)
        decay = -7 + 5 * (torch.arange(C) / (C - 1)) ** (0.85 + 1.0 * r01 ** 0.5)
        w[a + "w0"] = (decay + 0.5).view(1, 1, C)
        w[a + "w1"] = torch.zeros(C, cfg.decay_lora)
        w[a + "w2"] = _ortho(cfg.decay_lora, C, 0.1, gen)
        w[a + "a0"] = torch.zeros(1, 1, C)
        w[a + "a1"] = torch.zeros(C, cfg.aaa_lora)
        w[a + "a2"] = _ortho(cfg.aaa_lora, C, 0.1, gen)
        if i > 0:
            w[a + "v0"] = torch.ones(1, 1, C)
            w[a + "v1"] = torch.zeros(C, cfg.mv_lora)
            w[a + "v2"] = _ortho(cfg.mv_lora, C, 0.1, gen)
        w[a + "g1"] = torch.zeros(C, cfg.gate_lora)
        w[a + "g2"] = _ortho(cfg.gate_lora, C, 0.1, gen)
        w[a + "k_k"] = torch.full((1, 1, C), 0.85)
        w[a + "k_a"] = torch.ones(1, 1, C)
        w[a + "r_k"] = torch.zeros(H, N)
        bound = 0.5 / math.sqrt(C)
        for name in ("receptance", "key", "value"):
            w[a + name + ".weight"] = (torch.rand(C, C, generator=gen) * 2 - 1) * bound
        w[a + "output.weight"] = torch.zeros(C, C)
        w[a + "ln_x.weight"] = torch.full((C,), ((1 + i) / L) ** 0.7)
        w[a + "ln_x.bias"] = torch.zeros(C)
        f = p + "ffn."
        w[f + "x_k"] = (1.0 - ddd ** (r10 ** 4)).view(1, 1, C)
        w[f + "key.weight"] = (torch.rand(4 * C, C, generator=gen) * 2 - 1) * bound
        w[f + "value.weight"] = torch.zeros(C, 4 * C)
    w["ln_out.weight"], w["ln_out.bias"] = torch.ones(C), torch.zeros(C)
    gain = 0.5 * math.sqrt(vocab / C) if vocab > C else 0.5
    w["head.weight"] = _ortho(vocab, C, gain, gen)
    return w


class Trainer:
    """Holds the parameters (official names, `used`-row vocabulary) and runs optimiser steps."""

    def __init__(self, cfg: TrainConfig, used_ids: torch.Tensor):
        self.cfg = cfg
        self.used_ids = used_ids                      # World ids, sorted; row r <-> used_ids[r]
        self.log_unused = math.log(WORLD_ROWS - len(used_ids))
        self.params = {k: torch.nn.Parameter(v) for k, v in
                       init_weights(cfg, len(used_ids)).items()}
        decay = [p for k, p in self.params.items() if p.dim() == 2 and "weight" in k
                 and "ln" not in k]
        other = [p for p in self.params.values() if all(p is not q for q in decay)]
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay},
             {"params": other, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.99), eps=1e-8)

    def model(self) -> RWKV7:
        ckpt = Checkpoint("<training>", self.params)
        return RWKV7(ckpt, device=torch.device("cpu"), dtype="fp32", chunk_len=self.cfg.ctx_len)

    def loss(self, model: RWKV7, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy in nats/token of the full 65536-row model (see module docstring).

        `x`, `y`: [B, T] row ids; the B windows run as one batch from the zero state.
        """
        logits, _ = model.forward_batch(x, None, head="all")          # [B, T, S]
        const = torch.full((*logits.shape[:2], 1), self.log_unused)
        logits = torch.cat([logits, const], dim=-1)
        return F.cross_entropy(logits.flatten(0, 1), y.flatten())

    def lr_at(self, step: int) -> float:
        c = self.cfg
        if step < c.warmup:
            return c.lr * (step + 1) / c.warmup
        t = (step - c.warmup) / max(1, c.steps - c.warmup)
        return c.lr_final + 0.5 * (c.lr - c.lr_final) * (1 + math.cos(math.pi * t))

    def step(self, windows: torch.Tensor, step: int) -> float:
        """One AdamW step on `windows` [B, T+1] (row ids); returns the loss in nats/token."""
        for g in self.opt.param_groups:
            g["lr"] = self.lr_at(step)
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss(self.model(), windows[:, :-1], windows[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(self.params.values()), 1.0)
        self.opt.step()
        return loss.item()

    def export(self, dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
        """The state dict in the official layout with all 65536 World rows."""
        out = {}
        for k, p in self.params.items():
            t = p.detach()
            if k in ("emb.weight", "head.weight"):
                full = torch.zeros(WORLD_ROWS, t.shape[1])
                full[self.used_ids] = t
                t = full
            out[k] = t.to(dtype).contiguous()
        return out
