"""8-bit weights for the big matrices: int8 with one fp32 scale per output channel.

`Int8Linear(W)` quantizes a [out, in] weight once at load (symmetric, round to nearest,
scale = max|row| / 127) and then computes `x @ W.T` for fp32 `x` of shape [in] or [T, in].

The fast path is fbgemm's dynamic int8 linear (`quantized::linear_dynamic`): it quantizes the
activation on the fly (one asymmetric 8-bit scale per call: per token in decode) and multiplies
with VNNI/AVX2 integer dot products. On the 2-core development machine it streamed the weights
about 3x faster than fp32 `x @ W` and 3x faster than `torch._weight_int8pack_mm` (measured, one
thread: 60 vs 19 vs 21 GB/s fp32-equivalent). Where torch has no fbgemm (ARM builds), the slow
path multiplies by the dequantized weight. `reference` is the plain weight-only twin:
fp32 activations times the dequantized weight, against which tests bound the fast path.
One-token steps in C (v4, v7) read the plain int8 rows instead (`keep_rows`), with fp32
activations: exactly `reference`, at ~2.5x fbgemm's per-token speed (no per-call quantization).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

QMAX = 127  # symmetric: -127..127, so that -W quantizes to -q exactly


def quantize_rows(weight: torch.Tensor, block: int = 4096, out: torch.Tensor | None = None,
                  done: Callable[[torch.Tensor], None] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """[out, in] float -> (int8 [out, in], fp32 scales [out]) with |w - q * s| <= s / 2.

    In blocks of rows, so that the fp32 temporaries of a big head stay small. `out`: an int8
    tensor of the weight's shape to write q into (memory the caller chose); `done(rows)` is
    called with each block of source rows once it is quantized (to drop its file pages)."""
    q = torch.empty(weight.shape, dtype=torch.int8) if out is None else out
    scale = torch.empty(weight.shape[0])
    for s in range(0, weight.shape[0], block):
        w = weight[s:s + block].detach().float()
        sc = (w.abs().amax(dim=1) / QMAX).clamp_(min=1e-12)  # an all-zero row keeps scale > 0
        q[s:s + block] = torch.round(w / sc.unsqueeze(1)).clamp_(-QMAX, QMAX)
        scale[s:s + block] = sc
        if done is not None:
            done(weight[s:s + block])
    return q, scale


def fbgemm_available() -> bool:
    return "fbgemm" in torch.backends.quantized.supported_engines


class Int8Linear:
    """A [out, in] weight held as int8 + per-row scales; `self(x)` is `x @ W.T` in fp32."""

    def __init__(self, weight: torch.Tensor, use_fbgemm: bool | None = None,
                 keep_rows: bool = False, rows_out: torch.Tensor | None = None,
                 done: Callable[[torch.Tensor], None] | None = None):
        if weight.dim() != 2:
            raise ValueError(f"Int8Linear needs a 2-D weight, got shape {tuple(weight.shape)}")
        self.shape = tuple(weight.shape)
        self._setup(*quantize_rows(weight, out=rows_out, done=done), use_fbgemm, keep_rows)

    @classmethod
    def from_parts(cls, parts: dict[str, torch.Tensor], shape: tuple[int, int],
                   use_fbgemm: bool | None = None, keep_rows: bool = False,
                   rows_out: torch.Tensor | None = None) -> Int8Linear:
        """The matrix again from its `parts()` (a weight cache); ValueError if they are not
        the parts of a [out, in] = `shape` matrix."""
        q, scale = parts.get("q"), parts.get("scale")
        if q is None or scale is None or q.dtype != torch.int8 or tuple(q.shape) != shape \
                or scale.dtype != torch.float32 or tuple(scale.shape) != shape[:1] \
                or not bool((scale > 0).all()) or not bool(torch.isfinite(scale).all()):
            raise ValueError(f"not the int8 parts of a {shape} matrix")
        if rows_out is not None:
            q = rows_out.copy_(q)
        self = cls.__new__(cls)
        scale = scale.clone()  # small: its own memory, not a page of the cache file
        self.shape = tuple(shape)
        self._setup(q, scale, use_fbgemm, keep_rows)
        return self

    def parts(self) -> dict[str, torch.Tensor]:
        """The tensors that `from_parts` rebuilds this matrix from."""
        return {"q": self.int8_weight(), "scale": self.scale}

    def _setup(self, q: torch.Tensor, scale: torch.Tensor, use_fbgemm: bool | None,
               keep_rows: bool) -> None:
        self.q, self.scale = q, scale
        self._packed = None
        if fbgemm_available() if use_fbgemm is None else use_fbgemm:
            zero = torch.zeros(self.shape[0], dtype=torch.long)
            with warnings.catch_warnings():  # quantized tensors are deprecated, not yet gone
                warnings.simplefilter("ignore")
                qt = torch._make_per_channel_quantized_tensor(q, scale.double(), zero, 0)
                self._packed = torch.ops.quantized.linear_prepack(qt, None)
            # The packed copy is all fbgemm needs; the plain rows stay only for a C decode
            # step that reads them (`keep_rows`), else they go (half the memory).
            if not keep_rows:
                self.q = None

    @property
    def opaque_nbytes(self) -> int:
        """Bytes of the packed int8 matrix, which is no tensor (the bench counts them)."""
        return 0 if self._packed is None else self.shape[0] * self.shape[1]

    def int8_weight(self) -> torch.Tensor:
        if self.q is not None:
            return self.q
        qt, _ = torch.ops.quantized.linear_unpack(self._packed)
        return qt.int_repr()

    def dequantize(self) -> torch.Tensor:
        """The fp32 [out, in] weight this object stands for."""
        return self.int8_weight().float() * self.scale.unsqueeze(1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed is None:
            return self.reference(x)
        rows = x.reshape(-1, x.shape[-1]).float()
        if rows.shape[0] == 1:
            # reduce_range=False: VNNI has no 16-bit overflow in its dot products: all 8 bits.
            y = torch.ops.quantized.linear_dynamic(rows, self._packed, False)
        else:
            # fbgemm picks one activation scale for all rows; scaling every row to max |x| = 1
            # first (and back after: the product is linear) gives each token its own range.
            norm = rows.abs().amax(dim=1, keepdim=True).clamp_(min=1e-30)
            y = torch.ops.quantized.linear_dynamic(rows / norm, self._packed, False).mul_(norm)
        return y.view(*x.shape[:-1], self.shape[0])

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The slow twin: fp32 activations times the dequantized weight."""
        return F.linear(x.float(), self.dequantize())
