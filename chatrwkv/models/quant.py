"""8-bit weights for the big matrices: int8 with one fp32 scale per output channel.

`Int8Linear(W)` quantizes a [out, in] weight once at load (symmetric, round to nearest,
scale = max|row| / 127) and then computes `x @ W.T` for fp32 `x` of shape [in] or [T, in].

Where the C extension is built, one copy of the int8 rows serves everything: one token runs
_cpukern.h's matrix-vector kernel (fp32 activations: `reference` up to the order of sums),
more rows the integer GEMM of _qgemm.h (each token's activations rounded to int8 with one
scale, VNNI dot products; on the demo model the sequence path's KL from fp32 measured 0.00007,
as with fbgemm, 0.00006). One-token steps in C (v4, v7) read the same rows (`keep_rows`).
Without the extension, fbgemm's dynamic int8 linear (`quantized::linear_dynamic`, on its own
packed copy of the weight: the plain rows are dropped unless `keep_rows`) where torch has it,
and elsewhere (ARM builds) the product by the dequantized weight. `reference` is the plain
weight-only twin: fp32 activations times the dequantized weight, against which tests bound
the fast paths.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F

from .pages import populate

try:
    from . import _quantcpu
except ImportError:  # built without a C compiler: the torch twins run
    _quantcpu = None

CK_INT8 = 2  # _cpukern.h's CK_I8

QMAX = 127  # symmetric: -127..127, so that -W quantizes to -q exactly


class NonFiniteWeights(ValueError):
    """A matrix holds NaN or Inf (a damaged file). The quantizers see every weight anyway, so
    they check as they go, and the load does not read those tensors a second time to check."""


# At most this many weights per block in quantize_rows' torch loop (4 MiB fp32 temporaries):
# blocks of 4096 rows (32 MiB at 2048 columns) sat under glibc's dynamic mmap threshold once
# it had risen, so they came from a heap that did not shrink (a first 1.5B int8 load peaked at
# 2.7-3.6 GiB for 1.69 GiB of weights; 2.07 GiB with these blocks).
QUANT_BLOCK_ELEMS = 1 << 20


def quantize_rows(weight: torch.Tensor, block: int = 4096, out: torch.Tensor | None = None,
                  done: Callable[[torch.Tensor], None] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """[out, in] float -> (int8 [out, in], fp32 scales [out]) with |w - q * s| <= s / 2.

    In blocks of rows, so that the fp32 temporaries of a big head stay small. `out`: an int8
    tensor of the weight's shape to write q into (memory the caller chose); `done(rows)` is
    called with each block of source rows once it is quantized (to drop its file pages)."""
    q = torch.empty(weight.shape, dtype=torch.int8) if out is None else out
    scale = torch.empty(weight.shape[0])
    if _quantcpu is not None and q.is_contiguous() and weight.dim() == 2 \
            and weight.device.type == "cpu" and weight.dtype in (torch.float32, torch.bfloat16):
        _quantize_rows_c(weight, q, scale, block, done)  # the same bits, ~10x faster
        return q, scale
    block = max(1, min(block, QUANT_BLOCK_ELEMS // max(1, weight.shape[-1])))
    for s in range(0, weight.shape[0], block):
        w = weight[s:s + block].detach().float()
        sc = (w.abs().amax(dim=1) / QMAX).clamp_(min=1e-12)  # an all-zero row keeps scale > 0
        if not bool(torch.isfinite(sc).all()):  # amax propagates NaN as well as Inf
            raise NonFiniteWeights("NaN or infinite weights")
        q[s:s + block] = torch.round(w / sc.unsqueeze(1)).clamp_(-QMAX, QMAX)
        scale[s:s + block] = sc
        if done is not None:
            done(weight[s:s + block])
    return q, scale


def _quantize_rows_c(weight: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, block: int,
                     done: Callable[[torch.Tensor], None] | None) -> None:
    """quantize_rows in C (_quantprep.h), blocks of rows spread over torch's threads."""
    rows, n = weight.shape
    step = max(1, min(rows, block * 64 // max(n, 1)))  # ~1 MiB of fp32 a task

    def one(s: int) -> None:
        populate(weight[s:s + step])
        w = weight[s:s + step].detach().contiguous()
        if not _quantcpu.quantize8(w.data_ptr(), w.shape[0], n, w.dtype == torch.bfloat16,
                                   q[s:s + step].data_ptr(), scale[s:s + step].data_ptr()):
            raise NonFiniteWeights("NaN or infinite weights")
        if done is not None:
            done(weight[s:s + step])

    _each_block(one, range(0, rows, step))


def _each_block(one: Callable[[int], None], starts: range, parallel: bool = True) -> None:
    """`one(start)` for each block of rows, spread over torch's threads when `parallel` (the C
    quantizers release the GIL) and there is more than one block and one thread."""
    if not parallel or len(starts) == 1 or torch.get_num_threads() == 1:
        for s in starts:
            one(s)
    else:
        with ThreadPoolExecutor(torch.get_num_threads()) as pool:
            list(pool.map(one, starts))


def fbgemm_available() -> bool:
    return "fbgemm" in torch.backends.quantized.supported_engines


def c_gemm_fast() -> bool:
    """Whether _qgemm.h runs SIMD kernels here (AVX2 or better): its scalar twin (and a CPU
    that is not x86) is slower than torch's GEMM on dequantized weights, which then runs."""
    return _quantcpu is not None and _quantcpu.gemm_level() > 0


def c_gemm(desc: tuple[int, ...], x: torch.Tensor, n_out: int,
           wsum: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 [T, in] x times a described int8/int4 matrix through _qgemm.h: [T, out]."""
    x = x.contiguous()
    y = torch.empty(x.shape[0], n_out)
    _quantcpu.gemm(desc, x.data_ptr(), x.shape[0], y.data_ptr(), torch.get_num_threads(),
                   0 if wsum is None else wsum.data_ptr())
    return y


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
        self._wsum: torch.Tensor | None = None  # int32 row sums for the C GEMM, on first use
        # The C kernels read the plain rows: no second copy. `use_fbgemm=True` insists on fbgemm
        # (comparisons); without the extension it is the fast path where torch has it.
        self.use_c = _quantcpu is not None and not use_fbgemm
        if not self.use_c and (fbgemm_available() if use_fbgemm is None else use_fbgemm):
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

    def describe(self) -> tuple[int, int, int, int, int]:
        """(address, scale address, dtype code, out, in) for the C kernels."""
        if self.q is None or not (self.q.is_contiguous() and self.scale.is_contiguous()):
            raise ValueError("int8 rows must be kept and contiguous")
        return (self.q.data_ptr(), self.scale.data_ptr(), CK_INT8, *self.shape)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1]).float()
        n_out = self.shape[0]
        if self.use_c:
            if rows.shape[0] == 1:  # fp32 activations, as `reference`
                xv = rows[0].contiguous()
                y = torch.empty(n_out)
                _quantcpu.gemv(self.describe(), xv.data_ptr(), y.data_ptr(),
                               torch.get_num_threads())
                return y.view(*x.shape[:-1], n_out)
            if not c_gemm_fast():
                return self.reference(x)
            return c_gemm(self.describe(), rows, n_out, self.row_sums()).view(*x.shape[:-1], n_out)
        if self._packed is None:
            return self.reference(x)
        if rows.shape[0] == 1:
            # reduce_range=False: VNNI has no 16-bit overflow in its dot products: all 8 bits.
            y = torch.ops.quantized.linear_dynamic(rows, self._packed, False)
        else:
            # fbgemm picks one activation scale for all rows; scaling every row to max |x| = 1
            # first (and back after: the product is linear) gives each token its own range.
            norm = rows.abs().amax(dim=1, keepdim=True).clamp_(min=1e-30)
            y = torch.ops.quantized.linear_dynamic(rows / norm, self._packed, False).mul_(norm)
        return y.view(*x.shape[:-1], n_out)

    def row_sums(self) -> torch.Tensor:
        """int32 [out] sums of the int8 rows (the VNNI GEMM's correction), made on first use."""
        if self._wsum is None:
            self._wsum = torch.empty(self.shape[0], dtype=torch.int32)
            _quantcpu.rowsum(self.q.data_ptr(), self.shape[0], self.shape[1],
                             self._wsum.data_ptr())
        return self._wsum

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The slow twin: fp32 activations times the dequantized weight."""
        return F.linear(x.float(), self.dequantize())


# --- 4-bit weights ------------------------------------------------------------------------------
#
# Group-wise: each run of INT4_GROUP weights along a row (the input dimension) has one fp16 scale
# d, and a weight is (u - 8) * d for a 4-bit code u in 0..15 (symmetric, llama.cpp Q4_0's
# mapping: the largest |w| of the group lands exactly on -8 * d). Each group's d is the one with
# the least squared error among a few shrinkings of max|w| / 8 (`SCALE_SEARCH`): it costs only
# load time. Measured on the demo model (16,384 held-out tokens; KL from fp32 over 2,000):
# group 32 / 64 / 128 gave KL 0.0058 / 0.0062 / 0.0071 plain and 0.0040 / 0.0050 / 0.0052 with
# the search; a per-group minimum (Q4_1-like, 0.25-0.5 more bits a weight) 0.0044 / 0.0049 /
# 0.0054 with it, no better than the symmetric search at the same group; bf16 scales instead of
# fp16 changed nothing measurable (0.0049 vs 0.0050 at 64). So: 32, symmetric, fp16, search.
#
# The codes are packed for the C kernels (_cpukern.h): a row is cut into blocks of 128 weights,
# 64 bytes each = 16 little-endian 32-bit words, and nibble j (bits 4j..4j+3) of word i holds
# weight 16 j + i of the block. One AVX-512 load then yields 8 vectors of 16 consecutive weights
# by shifting the whole register by 4 bits at a time (the lookup ignores the upper bits); a
# partial last block is padded with code 8 (weight 0). Rows start on 64-byte boundaries.


_SCAN_DTYPES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 4}  # _quantprep.h's codes


def has_nonfinite(t: torch.Tensor) -> bool:
    """Whether `t` holds NaN or Inf: in C at memory speed (no temporaries) where it is built
    and `t` is a contiguous fp32/bf16/fp16 CPU tensor, else through torch."""
    if _quantcpu is not None and t.dtype in _SCAN_DTYPES and t.device.type == "cpu" \
            and t.is_contiguous():
        return _quantcpu.nonfinite(t.data_ptr(), t.numel(), _SCAN_DTYPES[t.dtype])
    return not bool(torch.isfinite(t).all())


INT4_BLOCK = 128
INT4_GROUP = 32  # 4.5 bits a weight with its fp16 scale, as llama.cpp's Q4_0
INT4_SCALE_DTYPE = torch.float16
SCALE_SEARCH = (1.0, 0.975, 0.95, 0.925, 0.9, 0.875, 0.85, 0.8, 1.05)  # factors of max|w| / 8


def int4_row_bytes(n_in: int) -> int:
    """Packed bytes of one row of `n_in` weights."""
    return -(-n_in // INT4_BLOCK) * (INT4_BLOCK // 2)


def int4_groups(n_in: int, group: int = INT4_GROUP) -> int:
    return -(-n_in // group)


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes 0..15 [R, n] -> packed uint8 [R, int4_row_bytes(n)] (layout above)."""
    R, n = codes.shape
    pad = -n % INT4_BLOCK
    if pad:
        codes = torch.cat((codes, codes.new_full((R, pad), 8)), dim=1)
    u = codes.view(R, -1, 8, 16).transpose(2, 3)          # [R, block, i, j]: weight 16 j + i
    return (u[..., 0::2] | (u[..., 1::2] << 4)).reshape(R, -1)


def unpack_int4(packed: torch.Tensor, n_in: int) -> torch.Tensor:
    """The inverse of `pack_int4`: uint8 codes [R, n_in]."""
    R = packed.shape[0]
    p = packed.view(R, -1, 16, 4)
    u = torch.stack((p & 15, p >> 4), dim=-1).view(R, -1, 16, 8)
    return u.transpose(2, 3).reshape(R, -1)[:, :n_in]


def _quantize_groups(w: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 [R, n] -> (codes uint8 [R, n], scales [R, groups] in INT4_SCALE_DTYPE)."""
    R, n = w.shape
    wg = torch.nn.functional.pad(w, (0, -n % group)).view(R, -1, group)
    peak = wg.gather(-1, wg.abs().argmax(-1, keepdim=True))  # the signed largest |w|
    best_err = best_d = best_u = None
    for f in SCALE_SEARCH:
        d = (peak * (-f / 8)).to(INT4_SCALE_DTYPE).float()
        inv = torch.where(d != 0, 1 / d, torch.zeros_like(d))
        u = torch.round(wg * inv).add_(8).clamp_(0, 15)
        err = ((u - 8) * d - wg).square_().sum(-1, keepdim=True)
        if best_err is None:
            best_err, best_d, best_u = err, d, u
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_d = torch.where(better, d, best_d)
            best_u = torch.where(better, u, best_u)
    codes = best_u.view(R, -1)[:, :n].to(torch.uint8)
    return codes, best_d.squeeze(-1).to(INT4_SCALE_DTYPE)


def quantize_int4(weight: torch.Tensor, group: int = INT4_GROUP, block: int = 1024,
                  out: torch.Tensor | None = None,
                  done: Callable[[torch.Tensor], None] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """[out, in] float -> (packed uint8 [out, int4_row_bytes(in)], scales [out, groups]).

    In blocks of rows (small fp32 temporaries), on torch's thread count, in C where it is built
    (`_quantize_groups` is its twin: 60x slower); `out`: a uint8 tensor of the packed shape to
    write into (memory the caller chose); `done(rows)` after each block of source rows."""
    if weight.dim() != 2 or group % 16 or group < 16:
        raise ValueError(f"int4 needs a 2-D weight and a group that is a multiple of 16, got "
                         f"{tuple(weight.shape)} and {group}")
    rows, n = weight.shape
    packed = torch.empty(rows, int4_row_bytes(n), dtype=torch.uint8) if out is None else out
    scales = torch.empty(rows, int4_groups(n, group), dtype=INT4_SCALE_DTYPE)

    in_c = _quantcpu is not None and packed.is_contiguous()

    def one(s: int) -> None:
        populate(weight[s:s + block])
        w = weight[s:s + block].detach()
        # bf16 rows (official files) go to C as they are: it widens a row at a time
        if not (in_c and w.dtype == torch.bfloat16 and w.device.type == "cpu"
                and w.is_contiguous()):
            w = w.float().contiguous()
        if has_nonfinite(w):
            raise NonFiniteWeights("NaN or infinite weights")
        if not in_c:
            codes, scales[s:s + block] = _quantize_groups(w, group)
            packed[s:s + block] = pack_int4(codes)
        else:
            _quantcpu.quantize(w.data_ptr(), w.shape[0], n, group, packed[s:s + block].data_ptr(),
                               scales[s:s + block].data_ptr(), w.dtype == torch.bfloat16)
        if done is not None:
            done(weight[s:s + block])

    _each_block(one, range(0, rows, block), parallel=_quantcpu is not None)
    return packed, scales


def dequantize_int4(packed: torch.Tensor, scales: torch.Tensor, n_in: int,
                    group: int = INT4_GROUP, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The [out, n_in] weight that (packed, scales) stand for: the plain torch twin."""
    codes = unpack_int4(packed, n_in).float() - 8
    d = scales.float().repeat_interleave(group, dim=1)[:, :n_in]
    return (codes * d).to(dtype)


CK_INT4 = 3  # _cpukern.h's CK_I4


def qgemm_group_ok(group: int) -> bool:
    """Whether _qgemm.h's int4 GEMM takes this group size (a multiple of 32)."""
    return group >= 32 and group % 32 == 0

DEQUANT_BLOCK_ELEMS = 1 << 21  # weights per dequantized block in the sequence path (4 MiB bf16)


@functools.cache
def native_bf16() -> bool:
    """Whether oneDNN multiplies bf16 natively here (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class Int4Linear:
    """A [out, in] weight held as packed int4 + fp16 group scales; `self(x)` is `x @ W.T`.

    One token (x of one row) runs the C matrix-vector kernel (fp32 activations, the weights
    exactly as `dequantize` gives them); more rows run the C integer GEMM on the same packed
    rows (_qgemm.h: each token's activations rounded to int8 with one scale). Groups the GEMM
    does not take (not a multiple of 32) dequantize blocks of rows to bf16 where the CPU
    multiplies bf16 natively (fp32 elsewhere) for torch's GEMM. Without the C extension
    everything runs through `dequantize` (the torch twin)."""

    def __init__(self, weight: torch.Tensor, group: int = INT4_GROUP,
                 packed_out: torch.Tensor | None = None,
                 done: Callable[[torch.Tensor], None] | None = None):
        if weight.dim() != 2:
            raise ValueError(f"Int4Linear needs a 2-D weight, got shape {tuple(weight.shape)}")
        self.shape = tuple(weight.shape)
        self.group = group
        self.packed, self.scales = quantize_int4(weight, group, out=packed_out, done=done)
        self.use_c = _quantcpu is not None

    @classmethod
    def from_parts(cls, parts: dict[str, torch.Tensor], shape: tuple[int, int],
                   group: int = INT4_GROUP,
                   packed_out: torch.Tensor | None = None) -> Int4Linear:
        """The matrix again from its `parts()` (a weight cache); ValueError if they are not
        the parts of a [out, in] = `shape` matrix."""
        packed, scales = parts.get("packed"), parts.get("scales")
        want_packed = (shape[0], int4_row_bytes(shape[1]))
        want_scales = (shape[0], int4_groups(shape[1], group))
        if packed is None or scales is None or packed.dtype != torch.uint8 \
                or tuple(packed.shape) != want_packed or scales.dtype != INT4_SCALE_DTYPE \
                or tuple(scales.shape) != want_scales or has_nonfinite(scales):
            raise ValueError(f"not the int4 parts of a {shape} matrix")
        self = cls.__new__(cls)
        self.shape, self.group = tuple(shape), group
        # packed rows go where the caller wants them (the C step's arena); scales are small
        self.packed = packed_out.copy_(packed) if packed_out is not None else packed
        self.scales = scales.clone()
        self.use_c = _quantcpu is not None
        return self

    def parts(self) -> dict[str, torch.Tensor]:
        """The tensors that `from_parts` rebuilds this matrix from."""
        return {"packed": self.packed, "scales": self.scales}

    def describe(self) -> tuple[int, int, int, int, int, int]:
        """(address, scale address, dtype code, out, in, group) for the C kernels."""
        if not (self.packed.is_contiguous() and self.scales.is_contiguous()):
            raise ValueError("int4 weights must be contiguous")
        return (self.packed.data_ptr(), self.scales.data_ptr(), CK_INT4, *self.shape, self.group)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The [out, in] weight this object stands for (the torch twin)."""
        return dequantize_int4(self.packed, self.scales, self.shape[1], self.group, dtype)

    def _block(self, r0: int, r1: int, dtype: torch.dtype) -> torch.Tensor:
        if not self.use_c:
            return dequantize_int4(self.packed[r0:r1], self.scales[r0:r1], self.shape[1],
                                   self.group, dtype)
        out = torch.empty(r1 - r0, self.shape[1], dtype=dtype)
        _quantcpu.dequant(self.describe(), r0, r1, out.data_ptr(),
                          0 if dtype == torch.float32 else 1)
        return out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1]).float()
        n_out = self.shape[0]
        if rows.shape[0] == 1 and self.use_c:
            xv = rows[0].contiguous()
            y = torch.empty(n_out)
            _quantcpu.gemv(self.describe(), xv.data_ptr(), y.data_ptr(), torch.get_num_threads())
            return y.view(*x.shape[:-1], n_out)
        if self.use_c and qgemm_group_ok(self.group) and c_gemm_fast():  # on the same rows
            return c_gemm(self.describe(), rows, n_out).view(*x.shape[:-1], n_out)
        # one token keeps fp32 activations (the C kernel's result, slower); many go to bf16
        dtype = torch.bfloat16 if native_bf16() and rows.shape[0] > 1 else torch.float32
        xs = rows.to(dtype)
        y = torch.empty(rows.shape[0], n_out)
        step = max(16, DEQUANT_BLOCK_ELEMS // self.shape[1])
        for r0 in range(0, n_out, step):
            r1 = min(n_out, r0 + step)
            y[:, r0:r1] = F.linear(xs, self._block(r0, r1, dtype))
        return y.view(*x.shape[:-1], n_out)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The slow twin: fp32 activations times the dequantized weight."""
        return F.linear(x.float(), self.dequantize())
