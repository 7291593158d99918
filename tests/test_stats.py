"""The stats line under a reply is end to end: computed from a clock the tests drive by hand,
so sampling and detokenizing (not only the forward pass) are seen to count."""

from __future__ import annotations

import pytest
from chat_fakes import FakeModel, FakeTokenizer

from chatrwkv import commands as C
from chatrwkv.prompts import Prompt
from chatrwkv.session import ReplyEnd, Session
from chatrwkv.stats import ReplyClock, Stats, format_stats


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_reply_clock_from_a_fake_clock():
    clock = FakeClock()
    rc = ReplyClock(clock)
    clock.now += 0.5                    # encoding and feeding 10 tokens
    rc.prefilled(10)
    for _ in range(4):
        clock.now += 0.25               # sample, forward, detokenize one token
        rc.token()
    clock.now += 0.1                    # closing the turn
    s = rc.finish()
    assert s == Stats(tokens=4, prefill_tokens=10, prefill_s=pytest.approx(0.5),
                      first_token_s=pytest.approx(0.75), decode_s=pytest.approx(1.0),
                      total_s=pytest.approx(1.6))
    assert s.prefill_rate == pytest.approx(20.0) and s.decode_rate == pytest.approx(4.0)
    line = format_stats(s, interrupted=True)
    assert line == ("4 tokens · first token 750 ms · prefill 10 tok at 20 tok/s · "
                    "decode 4.0 tok/s · 1.60 s · stopped")


def test_no_prefill_and_no_tokens():
    clock = FakeClock()
    rc = ReplyClock(clock)              # `+` resamples: nothing is fed first
    clock.now += 2.0
    rc.token()
    s = rc.finish()
    assert (s.prefill_tokens, s.prefill_s, s.first_token_s, s.decode_s) == (0, 0.0, 2.0, 2.0)
    empty = ReplyClock(clock).finish()
    assert empty.tokens == 0 and empty.first_token_s is None and empty.decode_rate == 0.0
    assert format_stats(empty) == "0 tokens · 0 ms"


class SlowTokenizer(FakeTokenizer):
    """Detokenizing one token takes `cost` seconds of the fake clock."""

    def __init__(self, clock: FakeClock, cost: float):
        super().__init__()
        self.clock, self.cost = clock, cost

    def stream(self):
        inner = super().stream()
        outer = self

        class Stream:
            def feed(self, token: int) -> str:
                outer.clock.now += outer.cost
                return inner.feed(token)

            def flush(self) -> str:
                return inner.flush()

        return Stream()


class SlowModel(FakeModel):
    """A forward pass takes `cost` seconds of the fake clock per call."""

    def __init__(self, clock: FakeClock, cost: float):
        super().__init__()
        self.clock, self.cost = clock, cost

    def forward(self, tokens, state, full_output=False):
        self.clock.now += self.cost
        return super().forward(tokens, state, full_output)


@pytest.mark.parametrize("line", ["+gen once upon a time", "hello there"])
def test_session_stats_count_detokenizing_not_only_the_forward_pass(line):
    clock = FakeClock()
    model, tok = SlowModel(clock, 0.01), SlowTokenizer(clock, 0.03)
    prompt = Prompt(name="t", user="User", bot="Bot", separator=":",
                    init="\nUser: hi\n\nBot: hello\n\n")
    session = Session(model, tok, prompt, seed=1, max_tokens=20)
    session.clock = clock
    session.start(prompt)
    events = list(session.handle(C.parse(line)))
    (end,) = [e for e in events if isinstance(e, ReplyEnd)]
    s = end.stats
    assert s.tokens >= 1 and s.prefill_tokens > 0
    # Each generated token: one forward (0.01) and one detokenizing step (0.03) of fake time;
    # the old line timed the forward alone and said 100 tok/s here.
    assert s.decode_s == pytest.approx(0.04 * s.tokens)
    assert s.decode_rate == pytest.approx(25.0)
    assert s.first_token_s == pytest.approx(s.prefill_s + 0.04)


def test_verbose_piped_mode_prints_each_replys_stats_on_stderr_only():
    """`--verbose` in piped mode: the stats line after each reply goes to stderr (as llama-cli's
    timings); stdout is byte for byte what it is without the flag."""
    import io

    from chatrwkv.ui import run_piped

    def run(verbose: bool) -> tuple[str, str]:
        prompt = Prompt(name="t", user="User", bot="Bot", separator=":", init="\n")
        session = Session(FakeModel(), FakeTokenizer(), prompt, seed=0, max_tokens=4)
        session.start(prompt)
        out, err = io.StringIO(), io.StringIO()
        run_piped(session, ["hi\n", "+gen x\n", "+set temperature 1\n"], out, err,
                  verbose=verbose)
        return out.getvalue(), err.getvalue()

    quiet_out, quiet_err = run(False)
    out, err = run(True)
    assert out == quiet_out and quiet_out.strip()
    stats = [line for line in err.splitlines() if "tok/s" in line]
    assert len(stats) == 2 and "tok/s" not in quiet_err and "tok/s" not in out
    assert stats[1].startswith("4 tokens · first token ")
    assert [line for line in err.splitlines() if "tok/s" not in line] == quiet_err.splitlines()
