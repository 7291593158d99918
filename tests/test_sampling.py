"""The sampler against hand-computed distributions and the reference package's sample_logits."""

import math

import numpy as np
import pytest
import torch

from chatrwkv.sampling import (
    LogitRules,
    Penalty,
    Sampler,
    SamplingSettings,
    chat_newline_bias,
    qa_newline_bias,
)

P = torch.tensor([0.5, 0.3, 0.15, 0.05])
LOGITS = P.log()


def close(a, b, tol=1e-6):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float32),
                          torch.as_tensor(b, dtype=torch.float32), atol=tol)


def test_top_p_cut_keeps_the_smallest_head_reaching_p():
    # cumulative 0.5, 0.8, ... reaches 0.7 at the 2nd token: keep {0, 1}
    assert close(Sampler(1.0, 0.7).probs(LOGITS), [0.625, 0.375, 0, 0])
    assert close(Sampler(1.0, 0.5).probs(LOGITS), [1, 0, 0, 0])
    assert close(Sampler(1.0, 1.0).probs(LOGITS), P)
    assert close(Sampler(1.0, 0.0).probs(LOGITS), [1, 0, 0, 0])


def test_top_k_after_top_p():
    assert close(Sampler(1.0, 1.0, top_k=2).probs(LOGITS), [0.625, 0.375, 0, 0])
    assert close(Sampler(1.0, 0.9, top_k=3).probs(LOGITS), [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0])
    assert close(Sampler(1.0, 1.0, top_k=10).probs(LOGITS), P)


def test_temperature_is_a_power_of_the_cut_distribution():
    kept = torch.tensor([0.5, 0.3, 0.0, 0.0]) / 0.8
    sq = kept ** 2
    assert close(Sampler(0.5, 0.7).probs(LOGITS), sq / sq.sum())
    root = P ** 0.5
    assert close(Sampler(2.0, 1.0).probs(LOGITS), root / root.sum())


def test_temperature_zero_is_argmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([0.1, 2.0, 1.9, -5.0])
    assert all(Sampler(0.0, 1.0).sample(logits, g) == 1 for _ in range(20))


def test_top_p_one_keeps_everything_even_when_fp32_sums_fall_short():
    logits = torch.randn(65536, generator=torch.Generator().manual_seed(3)) * 3
    probs = Sampler(1.0, 1.0).probs(logits)
    assert int((probs > 0).sum()) == 65536


def test_same_seed_same_tokens_and_frequencies_follow_probs():
    s = Sampler(1.0, 0.9)
    a = [s.sample(LOGITS, torch.Generator().manual_seed(7)) for _ in range(5)]
    b = [s.sample(LOGITS, torch.Generator().manual_seed(7)) for _ in range(5)]
    assert a == b
    g = torch.Generator().manual_seed(1)
    draws = torch.tensor([s.sample(LOGITS, g) for _ in range(6000)])
    freq = torch.bincount(draws, minlength=4).float() / len(draws)
    assert close(freq, s.probs(LOGITS), tol=0.025)  # ~4 sigma for 6000 draws


def test_penalty_presence_frequency_and_decay():
    pen = Penalty(4, presence=0.4, frequency=0.2, decay=0.5)
    for t in (2, 2, 3):
        pen.update(t)
    # counts: t2: (1 * 0.5 + 1) * 0.5 = 0.75; t3: 1
    out = pen.apply(torch.zeros(4))
    assert close(out, [0, 0, -(0.4 + 0.75 * 0.2), -(0.4 + 1 * 0.2)])


def test_logit_rules():
    rules = LogitRules(banned=frozenset({0}), no_repeat=frozenset({2}), newline_id=1,
                       newline_bias=lambda step: -float(step))
    out = rules.apply(torch.zeros(4), step=3, last_token=2)
    assert out.tolist() == [-math.inf, -3.0, -math.inf, 0.0]
    out = rules.apply(torch.zeros(4), step=0, last_token=3)
    assert out.tolist() == [-math.inf, 0.0, 0.0, 0.0]


def test_chat_newline_schedule_matches_chatrwkv():
    # ChatRWKV adds adj(i) after feeding token i, i.e. to the logits of token i + 1
    def adj(i):
        if i <= 0:
            return -999999999
        if i <= 40:
            return (i - 40) / 10
        if i <= 150:
            return 0
        return min(3, (i - 150) * 0.25)
    assert chat_newline_bias(0) == -math.inf
    for step in range(1, 400):
        expected = adj(step - 1)
        got = chat_newline_bias(step)
        assert got == expected or (expected < -1e8 and got == -math.inf), step
    assert qa_newline_bias(0) == 0 and qa_newline_bias(5) == -2


def test_defaults_are_chatrwkv_v2():
    s = SamplingSettings()
    assert (s.temperature, s.top_p, s.top_k, s.presence, s.frequency, s.decay) == (
        1.2, 0.5, 0, 0.4, 0.4, 0.996)
    assert s.with_overrides(0.3, None) == SamplingSettings(temperature=0.3)


@pytest.mark.parametrize("temp,top_p,top_k", [(1.0, 0.85, 0), (1.2, 0.5, 0), (0.7, 0.95, 20),
                                              (2.0, 0.3, 5), (1.0, 0.999, 0)])
def test_distribution_equals_reference_sample_logits(monkeypatch, temp, top_p, top_k):
    import reference  # noqa: F401  (sets the reference package's environment)
    from rwkv.utils import PIPELINE

    seen = {}

    def capture(a, p):
        seen["p"] = np.asarray(p, dtype=np.float64)
        return 0
    monkeypatch.setattr(np.random, "choice", capture)
    pipeline = PIPELINE.__new__(PIPELINE)
    logits = torch.randn(500, generator=torch.Generator().manual_seed(11)) * 2
    pipeline.sample_logits(logits.clone(), temperature=temp, top_p=top_p, top_k=top_k)
    ours = Sampler(temp, top_p, top_k).probs(logits).double().numpy()
    np.testing.assert_allclose(ours, seen["p"], atol=1e-6)
