"""8-bit weights (models/quant.py and `--dtype int8`): the quantization error is bounded, the fast
product (the C GEMM where it is built, else fbgemm) stays close to its plain weight-only twin,
and int8 v7 / v4 models stay close to fp32 in both the RNN and the sequence path."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from chatrwkv.errors import ChatRWKVError
from chatrwkv.models import load_model, quant
from chatrwkv.models.base import resolve_dtype
from chatrwkv.models.quant import (
    INT4_GROUP,
    Int4Linear,
    Int8Linear,
    dequantize_int4,
    fbgemm_available,
    pack_int4,
    quantize_int4,
    quantize_rows,
    unpack_int4,
)
from chatrwkv.synth import write_checkpoint

needs_fbgemm = pytest.mark.skipif(not fbgemm_available(), reason="torch built without fbgemm")
needs_fast_int8 = pytest.mark.skipif(not fbgemm_available() and quant._quantcpu is None,
                                     reason="neither fbgemm nor the C extension")

# The fast path also rounds the activation to 8 bits (one scale per token): on Gaussian data the
# product's relative error measured ~0.011, the weight-only twin's ~0.008.
FAST_VS_EXACT_REL = 0.03
FAST_VS_TWIN_REL = 0.03
# int8 vs fp32 logits of the tiny random models (logit std ~1), max abs deviation over the
# prompt: measured ~0.05 for both v7 and v4, in the RNN and the sequence path alike.
V7_INT8_TOL = 0.15
V4_INT8_TOL = 0.15
SEQ_VS_RNN_TOL = 0.15  # int8 sequence vs int8 RNN path (measured ~0.045): different roundings

PROMPT = torch.randint(0, 500, (24,), generator=torch.Generator().manual_seed(3)).tolist()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_quantize_rows_error_is_half_a_step():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(96, 80, generator=g) * torch.rand(96, 1, generator=g) * 3
    w[5] = 0  # an all-zero row must not divide by zero
    q, scale = quantize_rows(w)
    assert q.dtype == torch.int8 and scale.shape == (96,) and q.abs().max() <= 127
    err = (w - q.float() * scale.unsqueeze(1)).abs()
    assert (err <= scale.unsqueeze(1) / 2 + 1e-6).all()
    assert torch.equal(q[5], torch.zeros(80, dtype=torch.int8))
    assert torch.equal(quantize_rows(-w)[0], -q)  # symmetric


@needs_fast_int8
@pytest.mark.parametrize("rows", [1, 7])
def test_fast_product_close_to_twin_and_exact(rows):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(192, 128, generator=g) * 0.05
    x = torch.randn(rows, 128, generator=g)
    x[-1] *= 50  # tokens of very different size each get their own activation scale
    lin = Int8Linear(w)
    fast, twin, exact = lin(x), lin.reference(x), x @ w.t()
    assert fast.shape == (rows, 192) and fast.dtype == torch.float32
    for i in range(rows):  # per token: a large token must not swamp a small one
        assert _rel(fast[i], exact[i]) < FAST_VS_EXACT_REL
        assert _rel(fast[i], twin[i]) < FAST_VS_TWIN_REL
    assert lin(x[0]).shape == (192,)  # a vector in, a vector out


@needs_fbgemm
def test_packed_weight_unpacks_to_the_same_int8():
    w = torch.randn(64, 48, generator=torch.Generator().manual_seed(2))
    q, scale = quantize_rows(w)
    lin = Int8Linear(w, use_fbgemm=True)
    assert lin.q is None  # only the packed copy is kept
    assert torch.equal(lin.int8_weight(), q)
    assert torch.equal(lin.dequantize(), q.float() * scale.unsqueeze(1))


def test_fallback_without_fbgemm_is_the_twin(monkeypatch):
    monkeypatch.setattr(quant, "_quantcpu", None)  # no C extension either
    g = torch.Generator().manual_seed(4)
    w, x = torch.randn(40, 24, generator=g), torch.randn(3, 24, generator=g)
    lin = Int8Linear(w, use_fbgemm=False)
    assert torch.equal(lin(x), lin.reference(x))
    assert _rel(lin(x), x @ w.t()) < 0.02


def _logits(model, tokens, one_by_one):
    state = model.zero_state()
    with torch.inference_mode():
        if one_by_one:
            out = torch.stack([model.forward([t], state) for t in tokens])
        else:
            out = model.forward(tokens, state, full_output=True)
    return out, state


@needs_fast_int8
@pytest.mark.parametrize("version,dims,tol", [
    ("7.0", {"n_layer": 2, "n_embd": 128, "vocab_size": 500, "head_size": 32}, V7_INT8_TOL),
    ("4", {"n_layer": 2, "n_embd": 64, "vocab_size": 500}, V4_INT8_TOL),
])
def test_int8_model_close_to_fp32(tmp_path, version, dims, tol):
    path = write_checkpoint(tmp_path / "m.pth", version, seed=5, **dims)
    fp32, int8 = load_model(path, "cpu", "fp32"), load_model(path, "cpu", "int8")
    assert int8.dtype_name == "int8" and "int8" in int8.describe()
    ref, _ = _logits(fp32, PROMPT, one_by_one=True)
    rnn, rnn_state = _logits(int8, PROMPT, one_by_one=True)
    seq, seq_state = _logits(int8, PROMPT, one_by_one=False)
    assert rnn.dtype == torch.float32 and torch.isfinite(rnn).all()
    assert (rnn - ref).abs().max().item() < tol
    assert (seq - ref).abs().max().item() < tol
    assert (seq - rnn).abs().max().item() < SEQ_VS_RNN_TOL
    for a, b in zip(rnn_state.tensors().values(), seq_state.tensors().values()):
        assert a.dtype == torch.float32 and torch.isfinite(a).all() and a.shape == b.shape


@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_quantized_dtype_refused_where_not_implemented(tmp_path, dtype):
    with pytest.raises(ChatRWKVError, match="CPU-only"):
        resolve_dtype(dtype, torch.device("cuda"))
    path = write_checkpoint(tmp_path / "v5.pth", "5.2", seed=1, n_layer=1, n_embd=64,
                            vocab_size=50, head_size=32)
    from chatrwkv.checkpoint import Checkpoint
    from chatrwkv.models.v5 import RWKV5

    # every version has int8 and int4 now; a new one may not at first
    lacking = type("Lacking", (RWKV5,), {f"supports_{dtype}": False})
    with pytest.raises(ChatRWKVError, match=f"{dtype} is not implemented"):
        lacking(Checkpoint.open(path), torch.device("cpu"), dtype)


# --- giving back the checkpoint's pages (models/pages.py) ---------------------------------------

def test_released_checkpoint_pages_read_back_unchanged(tmp_path):
    from chatrwkv.checkpoint import Checkpoint
    from chatrwkv.models.pages import PageReleaser

    path = write_checkpoint(tmp_path / "big.pth", "7.0", seed=2, n_layer=1, n_embd=128,
                            vocab_size=4096, head_size=32)
    ckpt = Checkpoint.open(path)
    head = ckpt.require("head.weight")
    before = head.clone()
    releaser = PageReleaser(path)
    if sys.platform == "linux":  # torch.load mmaps the file privately: pages really go back
        assert releaser.ranges and releaser._madvise is not None
    releaser.release(head, head.float())
    assert torch.equal(head, before)  # the pages come back from the file
    in_memory = torch.randn(4096, 128)
    kept = in_memory.clone()
    releaser.release(in_memory, kept)  # not in the file's mapping: left alone
    assert torch.equal(in_memory, kept)


def _rss_file_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssFile:"))


@pytest.mark.skipif(sys.platform != "linux" or tuple(map(int, os.uname().release.split(".")[:2]))
                    < (5, 14), reason="MADV_POPULATE_READ is Linux 5.14+")
def test_populate_reads_a_mapped_tensor_in_with_one_call(tmp_path):
    from chatrwkv.models.pages import populate

    data = torch.randn(16 << 18)  # 16 MiB
    (tmp_path / "m.bin").write_bytes(data.numpy().tobytes())
    mapped = torch.from_file(str(tmp_path / "m.bin"), shared=True, size=data.numel())
    before = _rss_file_kib()
    populate(mapped[: 8 << 18])  # the first 8 MiB: resident now, the rest not yet
    grown = _rss_file_kib() - before
    assert 7 << 10 < grown < 12 << 10, grown
    assert torch.equal(mapped, data)
    in_memory = data.clone()
    populate(in_memory)  # resident memory: nothing to read, nothing changes
    assert torch.equal(in_memory, data)


# --- 4-bit weights (quant.py's int4, _quantcpu.c) ------------------------------------------------

needs_quantcpu = pytest.mark.skipif(quant._quantcpu is None, reason="C extension not built")
# int4 vs fp32 logits of the tiny random models: Gaussian weights quantize with ~9% relative
# error (trained weights far less); measured max abs deviation ~0.5-1.0 over the prompt.
INT4_TOL = 2.0
INT4_SEQ_VS_RNN_TOL = 0.1  # bf16 activations in the sequence path (measured ~0.02)


def test_int4_packing_puts_weight_16j_plus_i_in_nibble_j_of_word_i():
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (3, 300), generator=g, dtype=torch.uint8)
    packed = pack_int4(codes)
    assert packed.shape == (3, 3 * 64)  # 300 weights: two full blocks and a padded one
    assert torch.equal(unpack_int4(packed, 300), codes)
    words = packed.view(torch.int32)  # little-endian words of 4 bytes
    for e in (0, 1, 15, 16, 37, 127, 128, 255, 299):
        b, k = divmod(e, 128)
        word = int(words[1, b * 16 + k % 16]) & 0xFFFFFFFF
        assert (word >> (4 * (k // 16))) & 15 == codes[1, e]
    assert (unpack_int4(packed, 384)[:, 300:] == 8).all()  # padding is the code of 0


def test_int4_quantization_error_and_zero_rows():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(40, 200, generator=g) * torch.rand(40, 1, generator=g)
    w[3] = 0
    packed, scales = quantize_int4(w)
    assert scales.dtype == torch.float16 and scales.shape == (40, -(-200 // INT4_GROUP))
    deq = dequantize_int4(packed, scales, 200)
    assert torch.equal(deq[3], torch.zeros(200))
    # Within half a step d of its code, or clipped: the codes reach 7 d >= 0.7 max|w| of the
    # group (the search shrinks d = max|w| / 8 by at most 0.8), so clipping costs < 3 d.
    step = scales.float().abs().repeat_interleave(INT4_GROUP, 1)[:, :200]
    assert ((deq - w).abs() <= 3 * step + 1e-6).all()
    assert (deq - w).abs().le(step / 2 + 1e-6).float().mean().item() > 0.95
    assert ((deq - w).norm() / w.norm()).item() < 0.12


@needs_quantcpu
def test_int4_c_quantizer_equals_the_torch_twin():
    g = torch.Generator().manual_seed(5)
    w = torch.randn(70, 300, generator=g) * torch.rand(70, 1, generator=g) * 0.1
    w[:, 7] *= 40  # an outlier column: groups whose scale the search shrinks
    packed, scales = quantize_int4(w)  # C, rows in blocks over threads
    codes, twin_scales = quant._quantize_groups(w, INT4_GROUP)
    assert torch.equal(scales, twin_scales)
    assert torch.equal(packed, pack_int4(codes))


@needs_quantcpu
@pytest.mark.parametrize("shape", [(96, 72), (50, 300), (64, 256)])
def test_int4_c_kernels_at_every_level_equal_the_twin(shape):
    g = torch.Generator().manual_seed(2)
    w, x = torch.randn(*shape, generator=g), torch.randn(shape[1], generator=g)
    lin = Int4Linear(w)
    deq = lin.dequantize()
    try:
        for level in (2, 1, 0):
            if quant._quantcpu.set_simd(level) != level:
                continue  # this CPU cannot run that level
            assert (lin(x) - deq @ x).abs().max().item() < 1e-4
            assert torch.equal(lin._block(0, shape[0], torch.float32), deq)
            assert torch.equal(lin._block(3, 9, torch.bfloat16), deq[3:9].bfloat16())
    finally:
        quant._quantcpu.set_simd(True)


def test_int4_sequence_product_close_to_twin():
    g = torch.Generator().manual_seed(3)
    w, x = torch.randn(300, 160, generator=g) * 0.05, torch.randn(7, 160, generator=g)
    lin = Int4Linear(w)
    fast, twin = lin(x), lin.reference(x)
    # the C GEMM rounds each token's activations to int8 (measured 0.0078 here), the dequantizing
    # fallback to bf16 (~0.003)
    assert fast.shape == (7, 300) and _rel(fast, twin) < 0.02
    lin.use_c = False  # the torch twin of the C parts: the same products
    assert _rel(lin(x), twin) < 0.01 and _rel(lin(x[0]), twin[0]) < 1e-5


@pytest.mark.parametrize("version,dims", [
    ("7.0", {"n_layer": 2, "n_embd": 128, "vocab_size": 500, "head_size": 32}),
    ("4", {"n_layer": 2, "n_embd": 64, "vocab_size": 500}),
])
def test_int4_model_close_to_fp32(tmp_path, version, dims):
    path = write_checkpoint(tmp_path / "m.pth", version, seed=5, **dims)
    fp32, int4 = load_model(path, "cpu", "fp32"), load_model(path, "cpu", "int4")
    assert int4.dtype_name == "int4" and "int4" in int4.describe()
    ref, _ = _logits(fp32, PROMPT, one_by_one=True)
    rnn, _ = _logits(int4, PROMPT, one_by_one=True)
    seq, _ = _logits(int4, PROMPT, one_by_one=False)
    assert torch.isfinite(rnn).all() and (rnn - ref).abs().max().item() < INT4_TOL
    assert (seq - rnn).abs().max().item() < INT4_SEQ_VS_RNN_TOL
    # random weights, ~9% error each: most greedy tokens still agree with fp32
    assert (rnn.argmax(-1) == ref.argmax(-1)).float().mean().item() >= 0.5


@needs_quantcpu
def test_nonfinite_scan_at_every_level_finds_each_bad_value():
    g = torch.Generator().manual_seed(4)
    try:
        for level in (2, 1, 0):
            if quant._quantcpu.set_simd(level) != level:
                continue
            for dtype in (torch.float32, torch.bfloat16, torch.float16):
                for n in (1, 15, 300, 4099):
                    t = (torch.randn(n, generator=g) * 1e3).to(dtype)  # large but finite
                    assert not quant.has_nonfinite(t)
                    for pos in (0, n // 2, n - 1):
                        for bad in (float("nan"), float("inf"), float("-inf")):
                            u = t.clone()
                            u[pos] = bad
                            assert quant.has_nonfinite(u), (level, dtype, n, pos, bad)
    finally:
        quant._quantcpu.set_simd(True)
    strided = torch.zeros(8, 8)[:, 1]
    strided[3] = float("nan")
    assert quant.has_nonfinite(strided)  # not contiguous: torch's check


@needs_quantcpu
@pytest.mark.parametrize("shape", [(70, 300), (9, 4096), (3, 40)])
def test_int4_quantizer_gives_the_same_bits_at_every_level(shape):
    g = torch.Generator().manual_seed(6)
    w = torch.randn(*shape, generator=g) * torch.rand(shape[0], 1, generator=g) * 0.1
    w[:, 1] *= 40
    w[0] = 0  # an all-zero row: scale +0 (as the scalar loop), codes 8
    results = []
    try:
        for level in (2, 1, 0):
            if quant._quantcpu.set_simd(level) == level:
                results.append(quantize_int4(w))
    finally:
        quant._quantcpu.set_simd(True)
    codes, scales = quant._quantize_groups(w[1:], INT4_GROUP)
    for packed, sc in results:
        assert torch.equal(packed, results[-1][0]) and torch.equal(sc, results[-1][1])
        assert torch.equal(sc[1:], scales) and torch.equal(packed[1:], pack_int4(codes))
        assert bool((sc[0].view(torch.int16) == -32768).all())  # -0.0 in fp16


@needs_quantcpu
@pytest.mark.parametrize("shape", [(2100, 64), (9, 4096), (3, 40)])
def test_int4_quantizer_reads_bf16_rows_as_their_fp32_values(shape):
    # bf16 checkpoints go to C as they are (widened a row at a time, no fp32 block in torch):
    # the same bits as the fp32 copy at every level, over several blocks of rows.
    g = torch.Generator().manual_seed(7)
    w = (torch.randn(*shape, generator=g) * torch.rand(shape[0], 1, generator=g) * 0.1)
    w[:, 1] *= 40
    w[0] = 0
    w = w.bfloat16()
    try:
        for level in (2, 1, 0):
            if quant._quantcpu.set_simd(level) == level:
                packed, scales = quantize_int4(w)
                want_packed, want_scales = quantize_int4(w.float())
                assert torch.equal(packed, want_packed) and torch.equal(scales, want_scales)
    finally:
        quant._quantcpu.set_simd(True)
    w[shape[0] - 1, 3] = float("inf")
    with pytest.raises(quant.NonFiniteWeights):
        quantize_int4(w)


def test_quantizers_refuse_nonfinite_weights():
    w = torch.randn(40, 64)
    w[5, 9] = float("nan")
    with pytest.raises(quant.NonFiniteWeights):
        quantize_rows(w)
    with pytest.raises(quant.NonFiniteWeights):
        quantize_int4(w)


def _quantize_rows_twin(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """quantize_rows's torch loop, whatever the C extension."""
    saved, quant._quantcpu = quant._quantcpu, None
    try:
        return quantize_rows(w)
    finally:
        quant._quantcpu = saved


@needs_quantcpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_c_quantizer_gives_the_twins_bits_at_every_level(dtype):
    g = torch.Generator().manual_seed(8)
    w = torch.randn(300, 1000, generator=g) * torch.rand(300, 1, generator=g)
    w[3] = 0
    w[4, :10] = torch.arange(10) * 0.5  # halves: ties that round to even
    w = w.to(dtype)
    twin = _quantize_rows_twin(w)
    try:
        for level in (2, 1, 0):
            if quant._quantcpu.set_simd(level) == level:
                q, s = quantize_rows(w)
                assert torch.equal(q, twin[0]) and torch.equal(s, twin[1]), level
    finally:
        quant._quantcpu.set_simd(True)
