"""Many fp32 tokens times a bf16 weight on the CPU (the sequence path of a bf16 model).

_bgemm.h widens the stored bf16 weights to fp32 in registers and multiplies with fp32 FMAs, so
the result is x @ W.float().T up to the order of fp32 sums: no rounding of the activations
(torch's bf16 GEMM rounds them to bf16) and no fp32 copy of the weights (MKL's fp32 GEMM needs
one, per call or kept: twice the memory).

Measured on the development machine (Xeon, Sapphire/Emerald Rapids class, AVX-512 BF16, no
AMX; 2 threads, shared with other work: medians of 3 runs of `flock /tmp/chatrwkv-bench.lock
python benchmarks/bench_bgemm.py --threads 2`, each the median of 5 interleaved rounds), for
the 0.1B-1.5B layer shapes and the 0.1B head, this GEMM against
  - torch's bf16 GEMM (v4/v7's path before): 1.17-1.54x at every shape for T = 256, 64, 16
    (e.g. 1024 x 1024, T = 256: 240 vs 164 GFLOP/s). Its vdpbf16ps issues at a quarter of the
    fp32 FMA rate here; widening costs 8 instructions per 48 FMAs instead.
  - the weight converted to fp32 per call (v5/v6's path before): 0.88-0.93x on 768 x 768
    (T = 256, 64) and 1024 x 1024 (T = 256), where MKL's kernel beats ours by more than the
    conversion costs (279 vs 210 on a kept copy); 1.0-3.6x elsewhere, 2-8x at T = 16.
  - MKL on an fp32 copy kept beside the model (twice the memory, not an option for bf16):
    0.75-0.95x at T = 256, 0.70-1.19x at T = 64, 0.59-1.78x at T = 16.
Whole model, v7 0.1B / 0.4B bf16, 512-token prefill, tok/s, this GEMM on vs off (off: the
torch bf16 path): `chatrwkv bench --dtype bf16,fp32 --runs 3` medians 792 vs 581 and 277 vs 163
(fp32: 939 and 271 in the same runs); one process alternating on and off per prefill, on a
loaded machine, 266 vs 211 and 99 vs 78.
"""

from __future__ import annotations

import torch

from . import quant


def available() -> bool:
    """Whether the C GEMM runs SIMD kernels here (AVX2 or better); its scalar twin is slower
    than torch's GEMM, which then runs."""
    return quant.c_gemm_fast() and hasattr(quant._quantcpu, "bgemm")


def bf16_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor | None:
    """x [..., in] (fp32, CPU, more than one row) times a contiguous bf16 CPU weight [out, in]:
    fp32 [..., out], or None where the C GEMM does not apply (the caller's torch path runs)."""
    if x.dtype != torch.float32 or weight.dtype != torch.bfloat16 or x.dim() < 2 \
            or weight.dim() != 2 or x.device.type != "cpu" or weight.device.type != "cpu" \
            or not weight.is_contiguous() or x.shape[-1] != weight.shape[1] or x.numel() == 0 \
            or (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)) \
            or not available():
        return None
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    if rows.shape[0] < 2:
        return None
    y = torch.empty(rows.shape[0], weight.shape[0])
    quant._quantcpu.bgemm(weight.data_ptr(), weight.shape[0], weight.shape[1], rows.data_ptr(),
                          rows.shape[0], y.data_ptr(), torch.get_num_threads())
    return y.view(*x.shape[:-1], weight.shape[0])


def lora_dtype(device: torch.device, dtype: str) -> torch.dtype | None:
    """bf16 (as official files hold them) for v6's and v7's LoRA matrices on the CPU next to
    bf16, int8 and int4 weights: in fp32 they were a fifth of the bytes an int4 token reads at
    v7 1.5B (201 of 956 MB), ~9% at v6 1.6B. None: the model's activation dtype, as before."""
    return torch.bfloat16 if device.type == "cpu" and dtype in ("bf16", "int8", "int4") else None


def lora_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x times a LoRA matrix [out, in], in x's dtype. A bf16 matrix with fp32 activations (v6's
    and v7's LoRAs on the CPU next to weights of 16 bits or fewer; the C steps read them as
    they are) is widened to a transient fp32 copy, never the activations rounded: a LoRA
    matrix is at most a few MB, and MKL's fp32 GEMM on the copy kept prefill's speed where
    this module's GEMM, made for big matrices, cost 10-15% of a v7 0.4B int8 prefill. A vector
    goes through torch.mv: F.linear on a vector adds ~3 us of dispatch per call."""
    if x.dtype != weight.dtype:
        weight = weight.to(x.dtype)
    return torch.mv(weight, x) if x.dim() == 1 else torch.nn.functional.linear(x, weight)
