"""Token sampling in the reference order, repetition penalties, and per-step logit rules.

Reference: `PIPELINE.sample_logits` of the `rwkv` package (softmax, top-p cutoff, optional top-k,
then temperature as `p ** (1/T)`), with ChatRWKV v2's presence/frequency penalties and their decay.
Everything here works on one logits vector `[V]` and token ids; no text.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Collection

import torch

from .samplingsettings import (  # noqa: F401 - re-exported
    PENALTY_MAX,
    SETTING_RANGES,
    SamplingSettings,
    setting_problem,
    settings_from_dict,
)

NEG_INF = float("-inf")


class Sampler:
    """Built once from its parameters; `sample` draws with an explicit `torch.Generator`."""

    def __init__(self, temperature: float, top_p: float, top_k: int = 0):
        if not (math.isfinite(temperature) and temperature >= 0):
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if not 0.0 <= top_p <= 1.0:
            raise ValueError(f"top_p must be in [0, 1], got {top_p}")
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {top_k}")
        self.temperature = temperature
        self.top_p = top_p
        self.top_k = top_k

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """The distribution `sample` draws from (for T > 0), normalized, fp32 on the CPU.

        Never fails on a bad vector: NaN logits are never drawn, +inf logits share all the mass,
        and a vector with nothing drawable gives all the mass to its first token. Temperature is
        applied in log space, `exp((log p - log p_max) / T)`, which is the reference's
        `p ** (1/T)` renormalized, but cannot underflow to all zeros for a small T (at
        T = 0.01 the reference's fp32 power makes every probability 0) and needs no threshold:
        the likeliest kept token is always exp(0) = 1."""
        x = _drawable(logits)
        probs = torch.softmax(x, dim=-1)
        sorted_probs, sorted_ids = torch.sort(probs, descending=True)
        # top_p = 1 keeps everything: an fp32 cumsum may reach 1.0 early (cutting the tail) or
        # stop just short of it (the reference then falls back to greedy).
        if self.top_p < 1.0:
            reached = torch.nonzero(torch.cumsum(sorted_probs, dim=-1) >= self.top_p)
            cut_index = int(reached[0]) if len(reached) else len(sorted_probs) - 1
            probs = torch.where(probs < sorted_probs[cut_index], torch.zeros_like(probs), probs)
        if 0 < self.top_k < len(probs):
            probs[sorted_ids[self.top_k:]] = 0.0
        if self.temperature != 1.0:
            logp = probs.double().log()
            scaled = (logp - logp.max()) / self.temperature  # max entry: 0 / T = 0
            probs = torch.exp(scaled).float()
        return probs / probs.sum()

    def sample(self, logits: torch.Tensor, generator: torch.Generator) -> int:
        if self.temperature == 0:
            return int(torch.argmax(_drawable(logits)))
        return int(torch.multinomial(self.probs(logits), 1, generator=generator)[0])


def _drawable(logits: torch.Tensor) -> torch.Tensor:
    """fp32 CPU logits any sampler step can take: NaN -> -inf (never drawn); if any +inf, those
    tokens alone (equal shares: the limit of a huge logit); if nothing is finite, token 0."""
    x = logits.detach().float().cpu()
    if bool(torch.isfinite(x).all()):
        return x
    x = torch.nan_to_num(x, nan=NEG_INF, posinf=math.inf, neginf=NEG_INF)
    top = torch.isposinf(x)
    if bool(top.any()):
        return torch.where(top, 0.0, NEG_INF)
    if not bool(torch.isfinite(x).any()):
        x = torch.full_like(x, NEG_INF)
        if len(x):
            x[0] = 0.0
    return x


class Penalty:
    """ChatRWKV's repetition penalty: `logit -= presence + count * frequency` for every token seen
    in this reply, where counts decay by `decay` each generated token. Fresh per reply."""

    def __init__(self, vocab_size: int, presence: float, frequency: float, decay: float):
        self.presence = presence
        self.frequency = frequency
        self.decay = decay
        self.counts = torch.zeros(vocab_size)
        self.seen = torch.zeros(vocab_size, dtype=torch.bool)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """Penalize `logits` (CPU fp32) in place and return them."""
        n = min(len(logits), len(self.counts))
        penalty = self.seen[:n] * self.presence + self.counts[:n] * self.frequency
        logits[:n] -= penalty
        return logits

    def update(self, token: int) -> None:
        self.counts *= self.decay
        if 0 <= token < len(self.counts):
            self.counts[token] += 1.0
            self.seen[token] = True


@dataclasses.dataclass(frozen=True)
class LogitRules:
    """Fixed adjustments before penalties and sampling (ChatRWKV's `run_rnn` tweaks).

    banned: never sampled (end-of-text in chat replies).
    no_repeat: such a token cannot follow itself (ChatRWKV's full-width `，：？！`).
    newline_bias: `step -> added to the newline logit` for the token about to be sampled.
    """

    banned: frozenset[int] = frozenset()
    no_repeat: frozenset[int] = frozenset()
    newline_id: int | None = None
    newline_bias: Callable[[int], float] | None = None

    def apply(self, logits: torch.Tensor, step: int, last_token: int | None) -> torch.Tensor:
        for t in self.banned:
            logits[t] = NEG_INF
        if last_token is not None and last_token in self.no_repeat:
            logits[last_token] = NEG_INF
        if self.newline_id is not None and self.newline_bias is not None:
            logits[self.newline_id] += self.newline_bias(step)
        return logits


CHAT_LEN_SHORT = 40   # ChatRWKV: newline discouraged while the reply is shorter than this
CHAT_LEN_LONG = 150   # ... and increasingly encouraged after this


def chat_newline_bias(step: int) -> float:
    """ChatRWKV v2's newline schedule, by the index of the token about to be sampled.

    ChatRWKV adds `newline_adj(i)` after feeding token i, so token `step` sees `i = step - 1`;
    token 0 comes right after the prompt, where the newline is banned too (no empty reply).
    """
    i = step - 1
    if i <= 0:
        return NEG_INF
    if i <= CHAT_LEN_SHORT:
        return (i - CHAT_LEN_SHORT) / 10
    if i <= CHAT_LEN_LONG:
        return 0.0
    return min(3.0, (i - CHAT_LEN_LONG) * 0.25)


def qa_newline_bias(step: int) -> float:
    """`+qa`: ChatRWKV subtracts 2 from the newline logit after each generated token."""
    return 0.0 if step == 0 else -2.0


def single_tokens(encode: Callable[[str], list[int]], chars: Collection[str]) -> frozenset[int]:
    """Ids of the characters that are one token each in this vocabulary."""
    return frozenset(ids[0] for ch in chars if len(ids := encode(ch)) == 1)
