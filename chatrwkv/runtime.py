"""Prefill and generation over a model: token ids in, token ids out, no text.

A stop request (`threading.Event`, set by the UI's Ctrl-C handler) is honoured only between
forward calls, so a state is never left half-updated: after a stop, the state holds exactly the
tokens that were yielded (or, for a prefill, the caller throws its clone away).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Collection, Iterator, Sequence

import torch

from .sampling import LogitRules, Penalty, Sampler
from .state import State


class Cancelled(Exception):
    """A prefill stopped by the user; the state passed in is partly advanced: discard it."""


@dataclasses.dataclass
class Timing:
    """Tokens fed and the seconds the forward passes took (the stats line is end to end:
    stats.py)."""

    tokens: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def add(self, tokens: int, seconds: float) -> None:
        self.tokens += tokens
        self.seconds += seconds


class Generation:
    """Iterate to get sampled token ids; each yielded token has already been fed to `state`, and
    `logits` are the model's (unadjusted) output after it. Stop early by stopping the iteration.
    A token in `stop_tokens` ends the generation without being fed."""

    def __init__(self, runtime: Runtime, state: State, logits: torch.Tensor, *,
                 sampler: Sampler, penalty: Penalty, rules: LogitRules,
                 generator: torch.Generator, last_token: int | None,
                 stop_tokens: Collection[int] = (), cancel: threading.Event | None = None):
        self.runtime = runtime
        self.state = state
        self.logits = logits
        self.sampler = sampler
        self.penalty = penalty
        self.rules = rules
        self.generator = generator
        self.last_token = last_token
        self.stop_tokens = frozenset(stop_tokens)
        self.cancel = cancel
        self.tokens: list[int] = []
        self.stopped_by_user = False

    def __iter__(self) -> Iterator[int]:
        step = 0
        while True:
            if self.cancel is not None and self.cancel.is_set():
                self.stopped_by_user = True
                return
            adjusted = self.logits.detach().float().cpu().clone()
            self.rules.apply(adjusted, step, self.last_token)
            self.penalty.apply(adjusted)
            token = self.sampler.sample(adjusted, self.generator)
            if token in self.stop_tokens:
                return
            self.penalty.update(token)
            self.logits = self.runtime.forward([token], self.state)
            self.tokens.append(token)
            self.last_token = token
            step += 1
            yield token


class Runtime:
    """Runs a model (`RWKVModel`-like: `forward(tokens, state) -> logits`, `chunk_len`)."""

    def __init__(self, model):
        self.model = model
        self.chunk_len = max(1, int(getattr(model, "chunk_len", 256)))

    def forward(self, tokens: Sequence[int], state: State) -> torch.Tensor:
        with torch.inference_mode():
            return self.model.forward(list(tokens), state)

    def prefill(self, tokens: Sequence[int], state: State, *, timing: Timing | None = None,
                cancel: threading.Event | None = None) -> torch.Tensor:
        """Feed `tokens` (at least one) into `state` in place, chunk by chunk; return the logits
        after the last one. Raises `Cancelled` between chunks when `cancel` is set."""
        if not tokens:
            raise ValueError("prefill needs at least one token")
        logits = None
        for start in range(0, len(tokens), self.chunk_len):
            if cancel is not None and cancel.is_set():
                raise Cancelled
            chunk = tokens[start:start + self.chunk_len]
            t0 = time.perf_counter()
            logits = self.forward(chunk, state)
            if timing is not None:
                timing.add(len(chunk), time.perf_counter() - t0)
        assert logits is not None
        return logits

    def generate(self, state: State, logits: torch.Tensor, **kwargs) -> Generation:
        """A `Generation` continuing from `state` / `logits` (see its docstring for kwargs)."""
        return Generation(self, state, logits, **kwargs)
