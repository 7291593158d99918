"""int4 weights for RWKV v5 and v6 (`--dtype int4`): every big matrix and the head become
quant.Int4Linear; the one-token path equals the dequantized torch twin (the same model with
every int4 matrix replaced by the fp32 matrix it stands for) to fp32 rounding; the sequence path
agrees with it and with token-by-token; the model stays near fp32; and the converted-weight
cache serves a second load without quantizing, with identical logits."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from v5v6_quant_helpers import CASES, PROMPT, dequantized_twin, logits, quantized_matrices

from chatrwkv.models import load_model, quant
from chatrwkv.models.quant import Int4Linear
from chatrwkv.models.weightcache import cache_files
from chatrwkv.synth import write_checkpoint

# The C matrix-vector kernel computes exactly `dequantize()`'s weights with fp32 activations:
# only the order of the sums differs from the twin (measured 0.0000 at 4 decimals).
ONE_TOKEN_VS_TWIN_TOL = 1e-4
# The sequence path rounds the activations (bf16 where the CPU multiplies bf16 natively; an
# integer GEMM may quantize them to 8 bits): measured 0.025-0.083 from the twin with bf16 on
# seeds 5-8, in the range the int8 tests allow fbgemm's 8-bit activations (0.3).
SEQ_VS_TWIN_TOL = 0.3
SEQ_VS_RNN_TOL = 0.3
# int4 vs fp32 on these tiny random models (Gaussian weights, ~9% error each after rounding to 4
# bits with a scale per 32): relative RMS error of the logits over the 24-token prompt measured
# 0.10-0.28 on seeds 5-9 (int8: 0.012-0.034; unrelated logits: ~1.4), greedy agreement 0.50-0.88.
INT4_REL_TOL = 0.4
INT4_MIN_AGREE = 0.4



def _per_layer(version: str) -> int:
    return 7 if version == "5.0" else 8  # att r, k, v, (gate), output; ffn key, receptance, value



def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("version,dims", CASES)
def test_int4_model_equals_its_twin_and_stays_near_fp32(tmp_path, version, dims):
    path = write_checkpoint(tmp_path / "m.pth", version, seed=5, **dims)
    fp32 = load_model(path, "cpu", "fp32")
    int4 = load_model(path, "cpu", "int4", use_cache=False)
    assert int4.dtype_name == "int4" and "int4" in int4.describe()
    assert len(quantized_matrices(int4, Int4Linear)) == _per_layer(version) * dims["n_layer"] + 1  # + the head
    # the embedding and the small vectors stay fp32
    assert int4.emb.dtype == torch.float32
    ref = logits(fp32, PROMPT, one_by_one=True)
    rnn = logits(int4, PROMPT, one_by_one=True)
    seq = logits(int4, PROMPT, one_by_one=False)
    assert rnn.dtype == torch.float32 and torch.isfinite(rnn).all() and torch.isfinite(seq).all()

    twin = dequantized_twin(int4, Int4Linear)
    assert not quantized_matrices(twin, Int4Linear)
    assert (rnn - logits(twin, PROMPT, True)).abs().max().item() < ONE_TOKEN_VS_TWIN_TOL
    assert (seq - logits(twin, PROMPT, False)).abs().max().item() < SEQ_VS_TWIN_TOL
    assert (seq - rnn).abs().max().item() < SEQ_VS_RNN_TOL

    assert _rel(rnn, ref) < INT4_REL_TOL and _rel(seq, ref) < INT4_REL_TOL
    assert (rnn.argmax(-1) == ref.argmax(-1)).float().mean().item() >= INT4_MIN_AGREE


@pytest.mark.parametrize("version,dims", [CASES[0], CASES[2], CASES[3]], ids=["5.2", "5.0", "6.0"])
def test_int4_second_load_comes_from_the_cache_with_identical_logits(
        tmp_path, monkeypatch, version, dims):
    path = write_checkpoint(tmp_path / "model.pth", version, seed=3, **dims)
    first = load_model(path, "cpu", "int4")
    files = cache_files()
    assert len(files) == 1 and ".int4." in files[0].name
    with safe_open(str(files[0]), framework="pt") as f:
        packed = [k for k in f.keys() if k.endswith(":packed")]  # noqa: SIM118 (no __iter__)
        assert f.metadata()["dtype"] == "int4"
    assert len(packed) == _per_layer(version) * dims["n_layer"] + 1

    def refuse(*args, **kwargs):
        raise AssertionError("quantized although the cache should have served")
    monkeypatch.setattr(quant, "quantize_int4", refuse)
    second = load_model(path, "cpu", "int4")
    assert cache_files() == files
    for one_by_one in (True, False):
        assert torch.equal(logits(first, PROMPT, one_by_one), logits(second, PROMPT, one_by_one))
