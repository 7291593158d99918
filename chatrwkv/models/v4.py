"""RWKV v4 (Pile and World checkpoints): token shift, per-channel WKV with exponent stabilisation.

The math mirrors the official `rwkv` package (`RWKV.att_one/att_seq/ffn_one/ffn_seq`). The WKV
state of a layer is a numerator `aa`, a denominator `bb` and their shared exponent `pp`: the true
sums are `aa * exp(pp)` and `bb * exp(pp)`, which keeps them finite for any decay and key.

Precision: the WKV and the state run in fp32 always. On CPU activations are fp32, and in torch
16-bit weights are multiplied in their own dtype (the activation is rounded to it, accumulation is
fp32): on this AVX512-BF16 CPU a bf16 GEMM measured several times faster than upcasting the
weights. One-token steps on the CPU normally run in C (`v4_cpu.py`), which keeps fp32 activations
for every weight dtype. On CUDA activations are in the weight dtype, and fp16 halves the residual
every `RESCALE_LAYER` layers as the reference does, so it cannot overflow.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F

from ..checkpoint import Checkpoint
from ..errors import CheckpointError
from ..state import State
from . import v4_cpu
from .base import DEFAULT_CHUNK_LEN, ModelConfig, RWKVModel
from .bf16gemm import bf16_linear
from .cpu_step import CpuStep, weight_shape
from .pages import PageReleaser
from .quant import Int4Linear, Int8Linear
from .weightcache import WeightCache, int4_matrix, int8_matrix

# a big weight: [out, in] in the weight dtype, or int8 / int4
Matrix = torch.Tensor | Int8Linear | Int4Linear

RESCALE_LAYER = 6    # fp16 only: x /= 2 after every 6th layer (the reference's default)
WKV_BLOCK = 16       # tokens per block of the parallel WKV: [T+1, T, C] temporaries
PP_INIT = -1e30      # the reference's initial exponent: "no history yet"


@dataclasses.dataclass
class V4State(State):
    """The v4 recurrent state; every field is [L, C] fp32 (names: the reference's xx/aa/bb/pp)."""

    kind: ClassVar[str] = "v4"

    att_x: torch.Tensor    # last ln1 output (time-mix token shift)
    att_num: torch.Tensor  # aa: WKV numerator / exp(att_max)
    att_den: torch.Tensor  # bb: WKV denominator / exp(att_max)
    att_max: torch.Tensor  # pp: shared exponent, PP_INIT before the first token
    ffn_x: torch.Tensor    # last ln2 output (channel-mix token shift)


class _Layer(NamedTuple):
    """One block's prepared weights; matrices have the checkpoint's [out, in] shape."""

    ln1_w: torch.Tensor
    ln1_b: torch.Tensor
    att_mix_k: torch.Tensor
    att_mix_v: torch.Tensor
    att_mix_r: torch.Tensor
    time_decay: torch.Tensor  # -exp(time_decay), fp32: log of the per-step decay
    time_first: torch.Tensor  # fp32: log-bonus of the current token
    att_key: Matrix
    att_value: Matrix
    att_receptance: Matrix
    att_output: Matrix
    ln2_w: torch.Tensor
    ln2_b: torch.Tensor
    ffn_mix_k: torch.Tensor
    ffn_mix_r: torch.Tensor
    ffn_key: Matrix
    ffn_receptance: Matrix
    ffn_value: Matrix


def _linear(x: torch.Tensor, weight: Matrix) -> torch.Tensor:
    """`x @ weight.T` returned in x's dtype; a 16-bit weight multiplies in its own dtype, except
    many fp32 rows times bf16 on the CPU (bf16gemm: fp32 FMAs, activations not rounded)."""
    if isinstance(weight, (Int8Linear, Int4Linear)):
        return weight(x)
    if weight.dtype == x.dtype:
        return F.linear(x, weight)
    if (y := bf16_linear(x, weight)) is not None:
        return y
    return F.linear(x.to(weight.dtype), weight).to(x.dtype)


def wkv_loop(time_decay: torch.Tensor, time_first: torch.Tensor, k: torch.Tensor,
             v: torch.Tensor, aa: torch.Tensor, bb: torch.Tensor, pp: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The reference recurrence token by token (the slow twin of `wkv_parallel`).

    k, v: [T, C] fp32; aa, bb, pp: [C]. Returns (wkv [T, C], aa, bb, pp), inputs untouched.
    """
    out = torch.empty_like(k)
    for t in range(k.shape[0]):
        kk, vv = k[t], v[t]
        ww = time_first + kk
        p = torch.maximum(pp, ww)
        e1, e2 = torch.exp(pp - p), torch.exp(ww - p)
        out[t] = (e1 * aa + e2 * vv) / (e1 * bb + e2)
        ww = time_decay + pp
        p = torch.maximum(ww, kk)
        e1, e2 = torch.exp(ww - p), torch.exp(kk - p)
        aa, bb, pp = e1 * aa + e2 * vv, e1 * bb + e2, p
    return out, aa, bb, pp


def _log_weights(time_decay: torch.Tensor, time_first: torch.Tensor, n: int) -> torch.Tensor:
    """[n+1, n, C]: log-weight of token i in output row t, before adding k_i.

    Row t < n is output t: (t-1-i) decay steps for i < t, the time_first bonus for i == t, none
    (-inf) for i > t. Row n is the state after the block: (n-1-i) decay steps for every i.
    """
    t = torch.arange(n + 1, device=time_decay.device).unsqueeze(1)
    i = torch.arange(n, device=time_decay.device).unsqueeze(0)
    steps = (t - 1 - i).clamp(min=0).to(time_decay.dtype)
    logw = steps.unsqueeze(-1) * time_decay
    logw = torch.where((t == i).unsqueeze(-1), time_first, logw)
    return logw.masked_fill((i > t).unsqueeze(-1), float("-inf"))


def wkv_parallel(time_decay: torch.Tensor, time_first: torch.Tensor, k: torch.Tensor,
                 v: torch.Tensor, aa: torch.Tensor, bb: torch.Tensor, pp: torch.Tensor,
                 block: int = WKV_BLOCK
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The WKV of `wkv_loop`, computed for `block` tokens at a time in parallel.

    Inside a block every output is a weighted sum over the block's tokens and the incoming state,
    with all log-weights known in closed form; each row is stabilised by its own maximum exponent.
    The extra last row is the outgoing state, and its maximum is exactly the reference's pp.
    """
    T = k.shape[0]
    out = torch.empty_like(k)
    cached: tuple[int, torch.Tensor] | None = None
    for start in range(0, T, block):
        n = min(block, T - start)
        if cached is None or cached[0] != n:
            cached = (n, _log_weights(time_decay, time_first, n))
        kb, vb = k[start:start + n], v[start:start + n]
        logw = cached[1] + kb                                       # [n+1, n, C]
        steps = torch.arange(n + 1, device=k.device, dtype=k.dtype).unsqueeze(1)
        log_state = pp + steps * time_decay                         # [n+1, C]
        m = torch.maximum(logw.amax(dim=1), log_state)
        e = torch.exp(logw - m.unsqueeze(1))
        e_state = torch.exp(log_state - m)
        num = (e * vb).sum(dim=1) + e_state * aa
        den = e.sum(dim=1) + e_state * bb
        out[start:start + n] = num[:n] / den[:n]
        aa, bb, pp = num[n], den[n], m[n]
    return out, aa, bb, pp


class RWKV4(RWKVModel):
    state_class: ClassVar[type[State]] = V4State
    supports_int8 = True
    supports_int4 = True

    @classmethod
    def detect(cls, ckpt: Checkpoint) -> str | None:
        # The reference calls a model v4 unless a key holds ln_x (v5+), gate.weight (v5.1+) or
        # time_maa (v6); v7 has ln_x too.
        keys = list(ckpt.keys())
        if not all(k in ckpt for k in ("emb.weight", "blocks.0.att.time_first",
                                       "blocks.0.att.time_mix_k")):
            return None
        if any("ln_x" in k or "gate.weight" in k or "time_maa" in k for k in keys):
            return None
        return "4"

    def __init__(self, ckpt: Checkpoint, device: torch.device, dtype: str,
                 chunk_len: int = DEFAULT_CHUNK_LEN, cache: WeightCache | None = None):
        super().__init__(ckpt, device, dtype, chunk_len)
        version = self.detect(ckpt)
        if version is None:
            raise CheckpointError(f"{ckpt.path}: not an RWKV v4 checkpoint")
        emb = ckpt.require("emb.weight")
        if emb.dim() != 2:
            raise CheckpointError(f"{ckpt.path}: tensor 'emb.weight' has shape "
                                  f"{tuple(emb.shape)}, expected (vocab, n_embd)")
        V, C = emb.shape
        n_ffn = ckpt.shape("blocks.0.ffn.key.weight")[0]
        self.config = ModelConfig(version=version, n_layer=ckpt.n_layers(), n_embd=C,
                                  vocab_size=V, n_head=1, head_size=C, ffn_dim=n_ffn)
        # Activations: fp32 on CPU (16-bit weights still multiply in 16 bits), the weight dtype
        # on CUDA.
        self.act_dtype = torch.float32 if device.type == "cpu" else self.dtype
        self.rescale_layer = RESCALE_LAYER if self.dtype == torch.float16 else 0

        def vec(key: str, dtype: torch.dtype | None = None) -> torch.Tensor:
            t = ckpt.require(key)
            if t.squeeze().shape != (C,):
                raise CheckpointError(f"{ckpt.path}: tensor '{key}' has shape {tuple(t.shape)}, "
                                      f"expected {C} values")
            return t.squeeze().to(self.device, dtype or self.act_dtype, copy=True)

        pages = PageReleaser(ckpt.path)  # converted weights: drop the file's copy as we go
        arena = v4_cpu.arena(self.config, dtype, self.dtype, device)

        def mat(key: str, shape: tuple[int, int], scale: float = 1.0) -> Matrix:
            t = ckpt.expect_shape(key, shape)
            if dtype == "int8":  # no rescaling: int8 runs in fp32 activations (CPU only)
                # The C step and the sequence path read the same int8 rows (quant.py).
                rows = arena.take(shape, torch.int8) if arena else None
                out: Matrix = int8_matrix(cache, key, t, rows, pages.release)
            elif dtype == "int4":  # packed rows in the arena, for the C step and prefill alike
                packed = arena.take(weight_shape(shape, dtype), torch.uint8) if arena else None
                out = int4_matrix(cache, key, t, packed, pages.release)
            elif arena is not None:  # fp32 or bf16 for the C step: [out, in], row-major
                out = arena.take(shape, self.dtype)
                pages.copy(t, out)
            elif self.dtype == torch.float32:
                # No C step: stored [in, out] (a transposed view keeps the [out, in] shape), as
                # torch's fp32 matrix-vector products streamed ~1.7x faster so (measured).
                out = torch.empty(t.shape[::-1], dtype=self.dtype, device=self.device)
                out = out.copy_(t.t()).t()  # one copy: cast and transpose together
            else:
                out = t.to(self.device, self.dtype, copy=True)
                out = out.div_(scale) if scale != 1.0 else out
            pages.release(t, out)
            return out

        # ln0 is folded into the embedding in the checkpoint's dtype, exactly as the reference
        # does; the table stays 16-bit when the checkpoint is (a row is cast per token).
        ln0_w, ln0_b = ckpt.require("blocks.0.ln0.weight"), ckpt.require("blocks.0.ln0.bias")
        for key, t in (("blocks.0.ln0.weight", ln0_w), ("blocks.0.ln0.bias", ln0_b)):
            if tuple(t.shape) != (C,):
                raise CheckpointError(f"{ckpt.path}: tensor '{key}' has shape "
                                      f"{tuple(t.shape)}, expected ({C},)")
        folded = F.layer_norm(emb, (C,), ln0_w.to(emb.dtype), ln0_b.to(emb.dtype))
        emb_dtype = emb.dtype if self.dtype == torch.float32 else self.dtype
        self.emb = folded.to(self.device, emb_dtype)
        pages.release(emb, self.emb)

        layers = []
        for i in range(self.config.n_layer):
            b, att, ffn = f"blocks.{i}.", f"blocks.{i}.att.", f"blocks.{i}.ffn."
            scale = float(2 ** (i // self.rescale_layer)) if self.rescale_layer else 1.0
            layers.append(_Layer(
                ln1_w=vec(b + "ln1.weight"), ln1_b=vec(b + "ln1.bias"),
                att_mix_k=vec(att + "time_mix_k"), att_mix_v=vec(att + "time_mix_v"),
                att_mix_r=vec(att + "time_mix_r"),
                time_decay=-torch.exp(vec(att + "time_decay", torch.float32)),
                time_first=vec(att + "time_first", torch.float32),
                att_key=mat(att + "key.weight", (C, C)),
                att_value=mat(att + "value.weight", (C, C)),
                att_receptance=mat(att + "receptance.weight", (C, C)),
                att_output=mat(att + "output.weight", (C, C), scale),
                ln2_w=vec(b + "ln2.weight"), ln2_b=vec(b + "ln2.bias"),
                ffn_mix_k=vec(ffn + "time_mix_k"), ffn_mix_r=vec(ffn + "time_mix_r"),
                ffn_key=mat(ffn + "key.weight", (n_ffn, C)),
                ffn_receptance=mat(ffn + "receptance.weight", (C, C)),
                ffn_value=mat(ffn + "value.weight", (C, n_ffn), scale),
            ))
        self.layers: tuple[_Layer, ...] = tuple(layers)
        self.ln_out_w, self.ln_out_b = vec("ln_out.weight"), vec("ln_out.bias")
        self.head = mat("head.weight", (V, C))
        ckpt.check_consumed()

    def zero_state(self) -> V4State:
        L, C = self.config.n_layer, self.config.n_embd
        zeros = [torch.zeros(L, C, device=self.device) for _ in range(4)]
        return V4State(att_x=zeros[0], att_num=zeros[1], att_den=zeros[2],
                       att_max=torch.full((L, C), PP_INIT, device=self.device), ffn_x=zeros[3])

    def forward(self, tokens: Sequence[int], state: State, full_output: bool = False
                ) -> torch.Tensor:
        if not isinstance(state, V4State):
            raise TypeError(f"RWKV v4 needs a V4State, got {type(state).__name__}")
        if len(tokens) == 0:
            raise ValueError("forward needs at least one token")
        V = self.config.vocab_size
        if not all(0 <= t < V for t in tokens):
            raise ValueError(f"token id out of range for vocabulary of {V}")
        if len(tokens) == 1:
            logits = self._step(int(tokens[0]), state)
            return logits.unsqueeze(0) if full_output else logits
        outputs = []
        for start in range(0, len(tokens), self.chunk_len):
            ids = torch.tensor(tokens[start:start + self.chunk_len], device=self.device)
            x = self._forward_seq(self.emb[ids].to(self.act_dtype), state)
            if full_output:
                outputs.append(self._head(x))
        return torch.cat(outputs) if full_output else self._head(x[-1])

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x, (self.config.n_embd,), self.ln_out_w, self.ln_out_b)
        return _linear(x, self.head).float()

    # --- RNN path: one token -------------------------------------------------------------------

    def _step(self, token: int, state: V4State) -> torch.Tensor:
        """One token to logits: in C where it can run (CPU, no gradients wanted), else torch."""
        step = self._c_step_for(state)
        return self._forward_one_torch(token, state) if step is None else step.step(token, state)

    def _build_c_step(self) -> CpuStep | None:
        return v4_cpu.build(self)

    def _c_step_missing(self) -> str:
        return v4_cpu.missing(self)

    def _weight_tensors(self) -> list[object]:
        tensors = [self.emb, self.ln_out_w, self.ln_out_b, self.head]
        for w in self.layers:
            tensors.extend(w)
        return tensors

    def _forward_one_torch(self, token: int, state: V4State) -> torch.Tensor:
        """The torch twin of the C step: one token to logits."""
        return self._head(self._forward_one(self.emb[token].to(self.act_dtype), state))

    def _forward_one(self, x: torch.Tensor, state: V4State) -> torch.Tensor:
        C, dt = self.config.n_embd, self.act_dtype
        for i, w in enumerate(self.layers):
            xx = F.layer_norm(x, (C,), w.ln1_w, w.ln1_b)
            # In fp32, sx is a view of the state: use it up before the state's copy_ below.
            sx = state.att_x[i].to(dt)
            r = torch.sigmoid(_linear(torch.lerp(sx, xx, w.att_mix_r), w.att_receptance))
            k = _linear(torch.lerp(sx, xx, w.att_mix_k), w.att_key).float()
            v = _linear(torch.lerp(sx, xx, w.att_mix_v), w.att_value).float()
            aa, bb, pp = state.att_num[i], state.att_den[i], state.att_max[i]
            ww = w.time_first + k
            p = torch.maximum(pp, ww)
            e1, e2 = torch.exp(pp - p), torch.exp(ww - p)
            wkv = (e1 * aa + e2 * v) / (e1 * bb + e2)
            ww = w.time_decay + pp
            p = torch.maximum(ww, k)
            e1, e2 = torch.exp(ww - p), torch.exp(k - p)
            aa.mul_(e1).add_(e2 * v)
            bb.mul_(e1).add_(e2)
            pp.copy_(p)
            state.att_x[i].copy_(xx)
            x = x + _linear(r * wkv.to(dt), w.att_output)

            xx = F.layer_norm(x, (C,), w.ln2_w, w.ln2_b)
            sx = state.ffn_x[i].to(dt)
            r = torch.sigmoid(_linear(torch.lerp(sx, xx, w.ffn_mix_r), w.ffn_receptance))
            kk = torch.relu(_linear(torch.lerp(sx, xx, w.ffn_mix_k), w.ffn_key)).square()
            state.ffn_x[i].copy_(xx)
            x = x + r * _linear(kk, w.ffn_value)
            if self.rescale_layer and (i + 1) % self.rescale_layer == 0:
                x = x / 2
        return x

    # --- sequence path: a chunk of T tokens at once ---------------------------------------------

    def _forward_seq(self, x: torch.Tensor, state: V4State) -> torch.Tensor:
        """x: [T, C] embeddings of one chunk -> [T, C] final hidden states; state advanced."""
        C, dt = self.config.n_embd, self.act_dtype
        for i, w in enumerate(self.layers):
            xx = F.layer_norm(x, (C,), w.ln1_w, w.ln1_b)
            sx = torch.cat((state.att_x[i].to(dt).unsqueeze(0), xx[:-1]))
            r = torch.sigmoid(_linear(torch.lerp(sx, xx, w.att_mix_r), w.att_receptance))
            k = _linear(torch.lerp(sx, xx, w.att_mix_k), w.att_key).float()
            v = _linear(torch.lerp(sx, xx, w.att_mix_v), w.att_value).float()
            wkv, aa, bb, pp = wkv_parallel(w.time_decay, w.time_first, k, v, state.att_num[i],
                                           state.att_den[i], state.att_max[i])
            state.att_num[i], state.att_den[i], state.att_max[i] = aa, bb, pp
            state.att_x[i] = xx[-1]
            x = x + _linear(r * wkv.to(dt), w.att_output)

            xx = F.layer_norm(x, (C,), w.ln2_w, w.ln2_b)
            sx = torch.cat((state.ffn_x[i].to(dt).unsqueeze(0), xx[:-1]))
            r = torch.sigmoid(_linear(torch.lerp(sx, xx, w.ffn_mix_r), w.ffn_receptance))
            kk = torch.relu(_linear(torch.lerp(sx, xx, w.ffn_mix_k), w.ffn_key)).square()
            state.ffn_x[i] = xx[-1]
            x = x + r * _linear(kk, w.ffn_value)
            if self.rescale_layer and (i + 1) % self.rescale_layer == 0:
                x = x / 2
        return x
