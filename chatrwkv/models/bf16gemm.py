"""Many fp32 tokens times a bf16 weight on the CPU (the sequence path of a bf16 model).

_bgemm.h widens the stored bf16 weights to fp32 in registers and multiplies with fp32 FMAs, so
the result is x @ W.float().T up to the order of fp32 sums: no rounding of the activations
(torch's bf16 GEMM rounds them to bf16) and no fp32 copy of the weights (MKL's fp32 GEMM needs
one, per call or kept: twice the memory).

Measured on the development machine (Xeon, Sapphire/Emerald Rapids class, AVX-512 BF16, no
AMX; 2 threads shared with other work: best of interleaved rounds, GFLOP/s; reproduce with
`flock /tmp/chatrwkv-bench.lock python benchmarks/bench_bgemm.py`):
  - T = 256, 1.5B-sized layers (2048x2048, 1024x4096, 3072x768): this GEMM 233-247, torch's
    bf16 GEMM 155-173, MKL fp32 on a kept fp32 copy 241-263; one thread 104-120 / 89-94 /
    142-150. vdpbf16ps issues at a quarter of the fp32 FMA rate here, which is why torch's
    bf16 GEMM trails: widening costs 8 instructions per 48 FMAs instead.
  - T = 32 (one thread): this GEMM 79-100, torch bf16 70-73, MKL fp32 79-96.
See benchmarks/bench_bgemm.py for the table with the weight-converted-per-call alternative.
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
