"""What the user waited for during one reply, end to end, as `ollama run --verbose` and
llama-cli's timings report it: time to first token, prefill speed, and decode speed over wall
time (sampling, the forward pass, detokenizing and printing included), not the forward pass
alone (that once said 680 tok/s for a reply that came out at 5).

A `ReplyClock` starts when a command arrives; the session tells it when the input has been fed
(`prefilled`) and when each generated token has become text (`token`); `finish` freezes the
figures into `Stats`, which `format_stats` turns into the dim line under a reply. The clock
function is injectable so that tests drive time by hand. Fields a later feature needs (say, a
split of thinking and answer tokens) go into `Stats` with a default and one more part in
`format_stats`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable


@dataclasses.dataclass(frozen=True)
class Stats:
    tokens: int = 0              # generated tokens
    prefill_tokens: int = 0      # input tokens fed before the reply
    prefill_s: float = 0.0       # wall: from the command to the end of the prefill
    first_token_s: float | None = None  # wall: from the command to the first token's text
    decode_s: float = 0.0        # wall: from the end of the prefill to the last token's text
    total_s: float = 0.0         # wall: from the command to the end of the reply
    thinking: int = 0            # of `tokens`, how many were the reply's thinking (G1 models)

    @property
    def prefill_rate(self) -> float:
        return self.prefill_tokens / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_rate(self) -> float:
        return self.tokens / self.decode_s if self.decode_s > 0 else 0.0


class ReplyClock:
    """Collects the moments of one reply; `clock` returns seconds (default: perf_counter)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self._clock = clock
        self._start = clock()
        self._prefill_end: float | None = None
        self._prefill_tokens = 0
        self._first: float | None = None
        self._last: float | None = None
        self._tokens = 0

    def prefilled(self, tokens: int) -> None:
        """The input (`tokens` of it, maybe none) has been fed: decoding starts now."""
        self._prefill_tokens += tokens
        self._prefill_end = self._clock()

    def token(self) -> None:
        """One more generated token has been sampled, fed and turned into text."""
        now = self._clock()
        if self._prefill_end is None:
            self._prefill_end = self._start
        if self._first is None:
            self._first = now
        self._last = now
        self._tokens += 1

    def finish(self) -> Stats:
        end = self._clock()
        prefill_end = self._start if self._prefill_end is None else self._prefill_end
        last = prefill_end if self._last is None else self._last
        return Stats(
            tokens=self._tokens, prefill_tokens=self._prefill_tokens,
            prefill_s=prefill_end - self._start,
            first_token_s=None if self._first is None else self._first - self._start,
            decode_s=last - prefill_end, total_s=end - self._start)


def _seconds(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s"


def format_stats(stats: Stats, interrupted: bool = False) -> str:
    """`12 tokens · first token 85 ms · prefill 30 tok at 410 tok/s · decode 41.3 tok/s ·
    0.38 s` (decode and the total are wall time: sampling, detokenizing, printing included)."""
    parts = [f"{stats.tokens} tokens"]
    if stats.thinking:
        parts[0] += f" (thinking {stats.thinking}, answer {stats.tokens - stats.thinking})"
    if stats.first_token_s is not None:
        parts.append(f"first token {_seconds(stats.first_token_s)}")
    if stats.prefill_tokens:
        parts.append(f"prefill {stats.prefill_tokens} tok at {stats.prefill_rate:.0f} tok/s")
    if stats.tokens and stats.decode_s > 0:
        parts.append(f"decode {stats.decode_rate:.1f} tok/s")
    parts.append(_seconds(stats.total_s))
    if interrupted:
        parts.append("stopped")
    return " · ".join(parts)
