"""The sampler never raises: every temperature the parser accepts, and logits with NaN or Inf
(issue 12 item 7, issue 15 item 16)."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from chatrwkv.commands import TEMP_MAX, parse
from chatrwkv.sampling import Penalty, Sampler

LOGITS = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()


def test_small_temperatures_sample_the_likeliest_token():
    # -temp=0.01 used to crash: p ** 100 underflows to all zeros in fp32
    g = torch.Generator().manual_seed(0)
    for t in (0.01, 1e-4, 1e-30, 5e-324):
        s = Sampler(t, 1.0)
        assert torch.allclose(s.probs(LOGITS), torch.tensor([1.0, 0.0, 0.0, 0.0]), atol=1e-20)
        assert s.sample(LOGITS, g) == 0


def test_ties_at_a_small_temperature_share_the_mass():
    probs = Sampler(1e-6, 1.0).probs(torch.tensor([2.0, 2.0, -1.0]))
    assert torch.allclose(probs, torch.tensor([0.5, 0.5, 0.0]))


def test_log_space_equals_the_reference_power_where_it_does_not_underflow():
    for t in (0.3, 0.7, 1.5, 5.0):
        p = torch.softmax(LOGITS, -1) ** (1 / t)
        assert torch.allclose(Sampler(t, 1.0).probs(LOGITS), p / p.sum(), atol=1e-6)


def test_bad_vectors_never_raise():
    g = torch.Generator().manual_seed(0)
    nan, inf = math.nan, math.inf
    cases = {
        (nan, 1.0, 0.5): {1, 2},       # NaN is never drawn
        (nan, nan, nan): {0},          # nothing drawable: the first token
        (-inf, -inf, -inf): {0},
        (1.0, inf, inf): {1, 2},       # +inf takes all the mass
        (inf, nan, -inf): {0},
    }
    for row, allowed in cases.items():
        logits = torch.tensor(row)
        for t in (0.0, 0.01, 1.0, TEMP_MAX):
            for top_p in (0.0, 0.5, 1.0):
                s = Sampler(t, top_p)
                assert s.sample(logits, g) in allowed, (row, t, top_p)
                if t:
                    assert bool(torch.isfinite(s.probs(logits)).all())


def test_a_penalty_too_big_for_fp32_still_samples():
    # --presence 1e308 is refused at the command line; the sampler survives it anyway
    logits = torch.randn(50)
    pen = Penalty(50, presence=1e308, frequency=1e308, decay=1.0)
    for t in range(50):
        pen.update(t)
    adjusted = pen.apply(logits.clone())
    assert Sampler(1.0, 0.5).sample(adjusted, torch.Generator().manual_seed(1)) in range(50)


finite_or_not = st.floats(allow_nan=True, allow_infinity=True, width=32)


@settings(max_examples=300, deadline=None)
@given(temperature=st.floats(0.0, TEMP_MAX), top_p=st.floats(0.0, 1.0),
       top_k=st.integers(0, 8), logits=st.lists(finite_or_not, min_size=1, max_size=12))
def test_every_accepted_setting_samples_a_valid_token(temperature, top_p, top_k, logits):
    s = Sampler(temperature, top_p, top_k)
    x = torch.tensor(logits, dtype=torch.float32)
    token = s.sample(x, torch.Generator().manual_seed(0))
    assert 0 <= token < len(logits)
    if temperature > 0:
        probs = s.probs(x)
        assert bool(torch.isfinite(probs).all()) and abs(float(probs.sum()) - 1) < 1e-4
        assert float(probs[token]) > 0
    finite = [v for v in logits if math.isfinite(v)]
    if finite and not any(v == math.inf for v in logits):
        assert math.isfinite(logits[token])  # a NaN or -inf logit is never drawn


@settings(max_examples=200, deadline=None)
@given(st.floats(allow_nan=True, allow_infinity=True))
def test_every_temperature_the_parser_accepts_samples(t):
    cmd = parse(f"hi -temp={t!r}")
    if type(cmd).__name__ == "ParseError":
        return
    temperature = cmd.overrides.temperature
    assert 0 <= temperature <= TEMP_MAX
    logits = torch.randn(300, generator=torch.Generator().manual_seed(2)) * 8
    assert 0 <= Sampler(temperature, 0.5).sample(logits, torch.Generator()) < 300
