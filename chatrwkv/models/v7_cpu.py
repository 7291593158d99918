"""The C one-token step of RWKV v7 (`_v7cpu.c`), wired to a loaded `RWKV7`.

`CpuStep.build(model)` describes the model's prepared weights to the C side by address (no copy)
and returns None when the C part cannot run them: extension not built, not on the CPU, or a
weight layout it does not know. The object holds the model, so the weights it points into live
as long as it does. `step(token, state)` advances a `WKVState` in place, as the torch twin
`RWKV7._forward_one_torch` does, and returns fp32 logits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .quant import Int8Linear

if TYPE_CHECKING:
    from ..state import WKVState
    from .v7 import RWKV7

try:
    from . import _v7cpu
except ImportError:  # built without a C compiler: the torch path runs
    _v7cpu = None

CK_DTYPES = {torch.float32: 0, torch.bfloat16: 1}
CK_INT8 = 2


def available() -> bool:
    return _v7cpu is not None


def use_simd(on: bool) -> bool:
    """AVX2 kernels where the CPU has them (True), or the scalar twins (False, for tests)."""
    return bool(_v7cpu.set_simd(on)) if _v7cpu is not None else False


def _fp32(t: torch.Tensor | None) -> int:
    if t is None:
        return 0
    if t.dtype != torch.float32 or not t.is_contiguous() or t.device.type != "cpu":
        raise _Unsupported
    return t.data_ptr()


def _mat(w: torch.Tensor | Int8Linear | None) -> tuple[int, int, int, int, int] | None:
    if w is None:
        return None
    if isinstance(w, Int8Linear):
        q = w.q
        if q is None or not q.is_contiguous():
            raise _Unsupported
        return (q.data_ptr(), _fp32(w.scale), CK_INT8, *w.shape)
    if w.dim() != 2 or w.dtype not in CK_DTYPES or not w.is_contiguous() or \
            w.device.type != "cpu":
        raise _Unsupported
    return (w.data_ptr(), 0, CK_DTYPES[w.dtype], w.shape[0], w.shape[1])


class _Unsupported(Exception):
    """A weight the C step cannot read: the model keeps the torch path."""


class CpuStep:
    def __init__(self, model: RWKV7, handle: object):
        # The C side points into these tensors: hold them (not the model: no cycle).
        self._weights = (model.layers, model.emb, model.ln0_w, model.ln0_b, model.ln_out_w,
                         model.ln_out_b, model.head)
        c = model.config
        self.vocab_size = c.vocab_size
        self.shapes = {"att_x": (c.n_layer, c.n_embd), "ffn_x": (c.n_layer, c.n_embd),
                       "wkv": (c.n_layer, c.n_head, c.head_size, c.head_size)}
        self.handle = handle

    @classmethod
    def build(cls, model: RWKV7, n_threads: int | None = None) -> CpuStep | None:
        if _v7cpu is None or model.device.type != "cpu" or model.act_dtype != torch.float32:
            return None
        c = model.config
        try:
            layers = []
            for p in model.layers:
                vecs = (p.ln1_w, p.ln1_b, p.maa, p.w0, p.a0, p.v0, p.k_k, p.k_a, p.r_k,
                        p.ln_x_w, p.ln_x_b, p.ln2_w, p.ln2_b, p.ffn_x_k)
                mats = (p.R, p.K, p.V, p.O, p.ffn_K, p.ffn_V, p.w1, p.w2, p.a1, p.a2,
                        p.v1, p.v2, p.g1, p.g2)
                layers.append(tuple(_fp32(v) for v in vecs) + tuple(_mat(m) for m in mats))
            emb = model.emb
            if emb.dtype not in CK_DTYPES or not emb.is_contiguous():
                raise _Unsupported
            handle = _v7cpu.new_model(
                (c.n_layer, c.n_embd, c.n_head, c.head_size, c.ffn_dim, c.vocab_size),
                emb.data_ptr(), CK_DTYPES[emb.dtype], _fp32(model.ln0_w), _fp32(model.ln0_b),
                _fp32(model.ln_out_w),
                _fp32(model.ln_out_b), _mat(model.head), layers,
                n_threads or torch.get_num_threads())
        except _Unsupported:
            return None
        return cls(model, handle)

    @property
    def n_threads(self) -> int:
        return _v7cpu.threads(self.handle)

    def accepts(self, state: WKVState) -> bool:
        """Whether `state` is what the C side writes into: contiguous fp32 CPU, right shapes."""
        for name, shape in self.shapes.items():
            t = getattr(state, name)
            if t.dtype != torch.float32 or t.device.type != "cpu" or not t.is_contiguous() \
                    or tuple(t.shape) != shape or t.requires_grad:
                return False
        return True

    def step(self, token: int, state: WKVState) -> torch.Tensor:
        if not self.accepts(state):
            raise ValueError("the C step needs a contiguous fp32 CPU state of the model's shape")
        logits = torch.empty(self.vocab_size)
        _v7cpu.step(self.handle, token, state.att_x.data_ptr(), state.wkv.data_ptr(),
                    state.ffn_x.data_ptr(), logits.data_ptr())
        return logits
