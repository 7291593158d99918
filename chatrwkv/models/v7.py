"""RWKV v7 "Goose" (x070): the delta-rule WKV with data-dependent decay and in-context learning rate.

Per layer and head the state S ([N_v, N_k], the official package's orientation) follows

    S_t = S_{t-1} (diag(w_t) + a_t b_t^T) + v_t k_t^T,    y_t = S_t r_t

with a = -kk (the normalized key) and b = kk * iclr. One token runs that update in place
(`_wkv_step_`); a prompt runs through `wkv_chunked`, an exact chunked form of the same recurrence
whose twin `wkv_loop` is the plain per-token loop. The sequence path is pure and differentiable
(`forward_batch`), so a trainer can use it on batches; `forward` wraps it for the chat runtime.

The DeepEmbed variant ("rwkv7a", version "7.0a") is detected by its `ffn.s_emb.weight` tensors and
differs only in the channel mix: the squared key activation is scaled per token (`v7_de.py`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..checkpoint import Checkpoint
from ..errors import CheckpointError
from ..state import WKVState
from . import v7_cpu
from .base import DEFAULT_CHUNK_LEN, ModelConfig, RWKVModel
from .bf16gemm import bf16_linear, lora_dtype, lora_linear
from .cpu_step import CpuStep, weight_shape
from .pages import PageReleaser
from .quant import Int4Linear, Int8Linear, native_bf16
from .v7_de import (
    DEEP_EMBED_KEY,
    DeepEmbedPages,
    deep_embed_rank,
    deep_embed_rows,
    deep_embed_scale,
)
from .weightcache import WeightCache, int4_matrix, int8_matrix

# a big weight: a tensor [out, in], or int8 / int4
Matrix = torch.Tensor | Int8Linear | Int4Linear

DECAY_SCALE = math.exp(-0.5)  # log w = -exp(-0.5) * sigmoid(w0 + lora): w in [0.545, 1)
LN_X_EPS = 64e-5              # the official ln_x GroupNorm eps (1e-5 * head_size_divisor**2)
# Sub-chunk of the chunked WKV. Since log w >= -DECAY_SCALE, 16 steps decay by at most
# exp(-9.7) ~ 6e-5, so the factored 1/decay terms stay below 2e4 and lose no fp32 precision.
WKV_SUBCHUNK = 16


@dataclasses.dataclass(frozen=True)
class RWKV7Config(ModelConfig):
    d_decay: int  # LoRA widths: w1/w2, a1/a2, v1/v2 (0 for a one-layer model), g1/g2
    d_aaa: int
    d_mv: int
    d_gate: int
    d_embed: int = 0  # DeepEmbed rank D (s_emb rows are D*D wide); 0 for plain v7


@dataclasses.dataclass(frozen=True, slots=True)
class _Layer:
    """One block's prepared weights: vectors in the compute dtype; small LoRA matrices [out, in]."""

    ln1_w: torch.Tensor
    ln1_b: torch.Tensor
    maa: torch.Tensor        # [6, C]: x_r, x_w, x_k, x_v, x_a, x_g
    w0: torch.Tensor         # [C] fp32 (the decay is computed in fp32)
    w1: torch.Tensor         # [D_w, C]
    w2: torch.Tensor         # [C, D_w]
    a0: torch.Tensor
    a1: torch.Tensor
    a2: torch.Tensor
    v0: torch.Tensor | None  # None in layer 0, which defines v_first instead
    v1: torch.Tensor | None
    v2: torch.Tensor | None
    g1: torch.Tensor
    g2: torch.Tensor
    k_k: torch.Tensor
    k_a: torch.Tensor
    r_k: torch.Tensor        # [H, N]
    R: Matrix                # [C, C] in the weight dtype, [out, in]
    K: Matrix
    V: Matrix
    O: Matrix
    ln_x_w: torch.Tensor     # [H, N]
    ln_x_b: torch.Tensor
    ln2_w: torch.Tensor
    ln2_b: torch.Tensor
    ffn_x_k: torch.Tensor
    ffn_K: Matrix            # [F, C]
    ffn_V: Matrix            # [C, F]
    # DeepEmbed (rwkv7a) only, else None; names as in the checkpoint (see v7_de.py)
    s_emb: torch.Tensor | None = None    # [V, D*D] as stored (the file's pages), on the CPU
    s_emb_x: Matrix | None = None        # [D*D, C]
    s1: torch.Tensor | None = None       # [D, C] ([out, in] of the official x @ s1)
    s2: torch.Tensor | None = None       # [F, D]
    s0: torch.Tensor | None = None       # [F]


def _mm(x: torch.Tensor, W: Matrix) -> torch.Tensor:
    """x times a big matrix [out, in], in x's dtype. Many fp32 tokens times bf16 weights (CPU)
    run bf16gemm's C GEMM (fp32 FMAs on the widened weights: faster than torch's bf16 GEMM
    here, and the activations are not rounded); elsewhere 16-bit weights with fp32 activations
    multiply in 16 bits (activations rounded, fp32 accumulation) where the CPU has native bf16,
    else the weight is upcast. int8 / int4 weights compute in fp32 (quant.py). One-token steps
    on the CPU normally run in C (`v7_cpu.py`, fp32 activations); this is their torch twin."""
    if isinstance(W, (Int8Linear, Int4Linear)):
        return W(x)
    if x.dtype == W.dtype:
        return F.linear(x, W)
    if (y := bf16_linear(x, W)) is not None:
        return y
    if x.dim() == 1 or (W.dtype == torch.bfloat16 and native_bf16()):
        return F.linear(x.to(W.dtype), W).to(x.dtype)
    return F.linear(x, W.to(x.dtype))


# --- the WKV recurrence -----------------------------------------------------------------------

def _wkv_step_(S: torch.Tensor, r: torch.Tensor, w: torch.Tensor, k: torch.Tensor,
               v: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """One token, in place on S [H, N, N]; vectors [H, N] fp32 (w is the decay itself).

    Matrix-vector products as multiply-and-sum: on CPU, bmm with a [N, 1] operand measured
    3x slower than these elementwise ops for N = 64 (the step is ~10% of a 0.1B token)."""
    sa = (S * a.unsqueeze(-2)).sum(-1, keepdim=True)        # S a: rank-1 update costs N^2, not N^3
    S.mul_(w.unsqueeze(-2))
    S.addcmul_(sa, b.unsqueeze(-2))
    S.addcmul_(v.unsqueeze(-1), k.unsqueeze(-2))
    return (S * r.unsqueeze(-2)).sum(-1)


def wkv_loop(S: torch.Tensor, r: torch.Tensor, logw: torch.Tensor, k: torch.Tensor,
             v: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain recurrence, token by token: S [B, H, N, N], inputs [B, H, T, N] -> (y, S)."""
    w = logw.exp()
    ys = []
    for t in range(r.shape[-2]):
        S = (S * w[..., t, None, :] + (S @ a[..., t, :, None]) @ b[..., t, None, :]
             + v[..., t, :, None] @ k[..., t, None, :])
        ys.append((S @ r[..., t, :, None]).squeeze(-1))
    return torch.stack(ys, dim=-2), S


def wkv_chunked(S: torch.Tensor, r: torch.Tensor, logw: torch.Tensor, k: torch.Tensor,
                v: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                chunk: int = WKV_SUBCHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """`wkv_loop` in chunks of `chunk` tokens (exact up to rounding; differentiable).

    With g_t the decay accumulated inside a chunk and u_t = S_{t-1} a_t, the state is
    S_t = (S_0 + sum_{j<=t} v_j (k_j/g_j)^T + u_j (b_j/g_j)^T) diag(g_t). The u_t solve a unit
    lower-triangular system, so everything but one small step per chunk is batched matmuls.
    """
    B, H, T, N = r.shape
    pad = -T % chunk
    if pad:  # padded steps (w = 1, zero vectors) leave the state unchanged
        r, logw, k, v, a, b = (F.pad(x, (0, 0, 0, pad)) for x in (r, logw, k, v, a, b))
    n = (T + pad) // chunk
    r, logw, k, v, a, b = (x.reshape(B, H, n, chunk, N) for x in (r, logw, k, v, a, b))
    lg = logw.cumsum(dim=-2)                                # log g_t, inclusive
    lg_end = lg[..., -1:, :]
    r_dec = r * lg.exp()
    a_dec = a * (lg - logw).exp()                           # u_t sees the state before step t
    inv = (-lg).exp()
    k_inv, b_inv = k * inv, b * inv
    to_end = (lg_end - lg).exp()
    k_end, b_end = k * to_end, b * to_end
    ones = torch.ones(chunk, chunk, dtype=torch.bool, device=r.device)
    strict, incl = ones.tril(-1), ones.tril()
    A_k = (a_dec @ k_inv.mT) * strict
    A_b = (a_dec @ b_inv.mT) * strict
    Q_k = (r_dec @ k_inv.mT) * incl
    Q_b = (r_dec @ b_inv.mT) * incl
    eye = torch.eye(chunk, dtype=r.dtype, device=r.device)
    lhs = eye - A_b
    W1 = torch.linalg.solve_triangular(lhs, a_dec, upper=False, unitriangular=True)
    U0 = torch.linalg.solve_triangular(lhs, A_k @ v, upper=False, unitriangular=True)
    decay_end = lg_end.exp()
    starts, us = [], []
    for c in range(n):  # the only sequential part: one small step per chunk
        starts.append(S)
        u = U0[:, :, c] + W1[:, :, c] @ S.mT
        us.append(u)
        S = S * decay_end[:, :, c] + v[:, :, c].mT @ k_end[:, :, c] + u.mT @ b_end[:, :, c]
    y = r_dec @ torch.stack(starts, 2).mT + Q_k @ v + Q_b @ torch.stack(us, 2)
    return y.reshape(B, H, n * chunk, N)[:, :, :T], S


# --- the model --------------------------------------------------------------------------------

class RWKV7(RWKVModel):
    state_class = WKVState
    supports_int8 = True
    supports_int4 = True
    config: RWKV7Config

    @classmethod
    def detect(cls, ckpt: Checkpoint) -> str | None:
        # As the official package: v7 is the layout with the delta-rule tensors; DeepEmbed adds
        # `ffn.s_emb.weight` per layer (what RWKV_DE_VERSION=1 makes the package read).
        v7_keys = ("att.x_r", "att.k_k", "att.r_k")
        if not any(k.endswith(v7_keys) for k in ckpt.tensors):
            return None
        return "7.0a" if any(k.endswith(DEEP_EMBED_KEY) for k in ckpt.tensors) else "7.0"

    def __init__(self, ckpt: Checkpoint, device: torch.device, dtype: str,
                 chunk_len: int = DEFAULT_CHUNK_LEN, cache: WeightCache | None = None):
        super().__init__(ckpt, device, dtype, chunk_len)
        # CPU computes in fp32 (no fast 16-bit GEMM there); CUDA in the weight dtype.
        self.act_dtype = torch.float32 if device.type == "cpu" else self.dtype
        self.config = cfg = _read_config(ckpt)
        C, H, N = cfg.n_embd, cfg.n_head, cfg.head_size

        def vec(key: str, dtype: torch.dtype | None = None) -> torch.Tensor:
            t = ckpt.require(key)
            if t.numel() != C or t.squeeze().dim() != 1:
                raise CheckpointError(f"{ckpt.path}: tensor '{key}' has shape {tuple(t.shape)}, "
                                      f"expected (1, 1, {C})")
            return t.reshape(C).to(device=device, dtype=dtype or self.act_dtype)

        def small(key: str, shape: tuple[int, ...], transpose: bool = False,
                  as_dtype: torch.dtype | None = None) -> torch.Tensor:
            t = ckpt.expect_shape(key, shape)
            t = t.t() if transpose else t
            return t.to(device=device, dtype=as_dtype or self.act_dtype).contiguous()

        # Products widen bf16 LoRAs to fp32 (lora_linear, the C step's bf16 kernel): the
        # activations stay fp32, so a bf16 file gives the same products.
        lora_as = lora_dtype(device, dtype)

        pages = PageReleaser(ckpt.path)  # converted weights: drop the file's copy as we go
        arena = v7_cpu.arena(cfg, dtype, self.dtype, device)

        def big(key: str, shape: tuple[int, ...]) -> Matrix:  # [out, in], as stored
            t = ckpt.expect_shape(key, shape)
            if dtype == "int8":  # the C step and prefill read the same int8 rows
                rows = arena.take(shape, torch.int8) if arena else None
                out: Matrix = int8_matrix(cache, key, t, rows, pages.release)
            elif dtype == "int4":  # packed rows in the arena, for the C step and prefill alike
                packed = arena.take(weight_shape(shape, dtype), torch.uint8) if arena else None
                out = int4_matrix(cache, key, t, packed, pages.release)
            elif arena is not None:
                out = arena.take(shape, self.dtype)
                pages.copy(t, out)
            else:
                out = t.to(device=device, dtype=self.dtype).contiguous()
            pages.release(t, out)
            return out

        def lora(p: str, name: str, width: int) -> tuple[torch.Tensor, torch.Tensor]:
            # Official x @ w1 @ w2 with w1 [C, D], w2 [D, C]: stored as F.linear's [out, in].
            return (small(f"{p}{name}1", (C, width), transpose=True, as_dtype=lora_as),
                    small(f"{p}{name}2", (width, C), transpose=True, as_dtype=lora_as))

        layers = []
        for i in range(cfg.n_layer):
            b, p = f"blocks.{i}.", f"blocks.{i}.att."
            w1, w2 = lora(p, "w", cfg.d_decay)
            a1, a2 = lora(p, "a", cfg.d_aaa)
            g1, g2 = lora(p, "g", cfg.d_gate)
            v0 = v1 = v2 = None
            if i > 0:
                v0 = vec(p + "v0")
                v1, v2 = lora(p, "v", cfg.d_mv)
            de = {}
            if cfg.d_embed:  # rwkv7a: shapes as the official trainer's Embedding/Linear/Parameters
                D, F_ = cfg.d_embed, cfg.ffn_dim
                de = {"s_emb": _embedding(ckpt.expect_shape(b + "ffn.s_emb.weight",
                                                            (cfg.vocab_size, D * D)),
                                          torch.device("cpu"), self.dtype),
                      "s_emb_x": big(b + "ffn.s_emb_x.weight", (D * D, C)),
                      "s1": small(b + "ffn.s1", (C, D), transpose=True),
                      "s2": small(b + "ffn.s2", (D, F_), transpose=True),
                      "s0": ckpt.expect_shape(b + "ffn.s0", (1, 1, F_)).reshape(F_).to(
                          device=device, dtype=self.act_dtype)}
            layers.append(_Layer(
                ln1_w=vec(b + "ln1.weight"), ln1_b=vec(b + "ln1.bias"),
                maa=torch.stack([vec(p + m) for m in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g")]),
                w0=vec(p + "w0", torch.float32), w1=w1, w2=w2,
                a0=vec(p + "a0"), a1=a1, a2=a2, v0=v0, v1=v1, v2=v2, g1=g1, g2=g2,
                k_k=vec(p + "k_k"), k_a=vec(p + "k_a"), r_k=small(p + "r_k", (H, N)),
                R=big(p + "receptance.weight", (C, C)), K=big(p + "key.weight", (C, C)),
                V=big(p + "value.weight", (C, C)), O=big(p + "output.weight", (C, C)),
                ln_x_w=vec(p + "ln_x.weight").view(H, N), ln_x_b=vec(p + "ln_x.bias").view(H, N),
                ln2_w=vec(b + "ln2.weight"), ln2_b=vec(b + "ln2.bias"),
                ffn_x_k=vec(b + "ffn.x_k"),
                ffn_K=big(b + "ffn.key.weight", (cfg.ffn_dim, C)),
                ffn_V=big(b + "ffn.value.weight", (C, cfg.ffn_dim)), **de,
            ))
        self.layers: tuple[_Layer, ...] = tuple(layers)
        # The embedding stays as stored where it can (a memory-mapped file: only the rows of
        # tokens seen become resident); ln0 is applied to each row as it is used, in fp32.
        self.emb = _embedding(ckpt.require("emb.weight"), device, self.dtype)
        self.ln0_w = vec("blocks.0.ln0.weight", torch.float32)
        self.ln0_b = vec("blocks.0.ln0.bias", torch.float32)
        self.ln_out_w, self.ln_out_b = vec("ln_out.weight"), vec("ln_out.bias")
        self.head = big("head.weight", (cfg.vocab_size, C))
        self._de_pages = DeepEmbedPages(ckpt.path, [p.s_emb for p in self.layers]) \
            if cfg.d_embed else None
        # Newer official files carry a layer-0 value LoRA that the model never uses.
        ckpt.check_consumed(ignore=("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2"))

    def zero_state(self) -> WKVState:
        c = self.config
        return WKVState.zeros(c.n_layer, c.n_embd, c.n_head, c.head_size, device=self.device)

    def zero_batch_state(self, batch: int) -> WKVState:
        """A state for `forward_batch`: every field gets a batch dimension after the layer."""
        c = self.config
        z = WKVState.zeros(c.n_layer, c.n_embd, c.n_head, c.head_size, device=self.device)
        return WKVState(**{k: t.unsqueeze(1).repeat_interleave(batch, 1).contiguous()
                           for k, t in z.tensors().items()})

    def forward(self, tokens: Sequence[int], state: WKVState,
                full_output: bool = False) -> torch.Tensor:
        if len(tokens) == 0:
            raise ValueError("forward needs at least one token")
        if len(tokens) == 1:
            logits = self._forward_one(int(tokens[0]), state)
            if self._de_pages is not None:
                self._de_pages.stepped()
            return logits.unsqueeze(0) if full_output else logits
        ids = torch.as_tensor(tokens, dtype=torch.long, device=self.device).view(1, -1)
        batch = WKVState(**{k: t.unsqueeze(1) for k, t in state.tensors().items()})
        if torch.is_grad_enabled():  # autograd may save these inputs: the copy below must not
            batch = batch.clone()
        outs = []
        T = ids.shape[1]
        for start in range(0, T, self.chunk_len):
            last = start + self.chunk_len >= T
            head = "all" if full_output else ("last" if last else "none")
            logits, batch = self.forward_batch(ids[:, start:start + self.chunk_len], batch, head)
            if logits is not None:
                outs.append(logits[0])
        # The state stays a plain buffer (gradients stop here); `forward_batch` carries them.
        for name, t in state.tensors().items():
            t.copy_(getattr(batch, name).squeeze(1).detach())
        return torch.cat(outs) if full_output else outs[-1]

    # --- sequence mode (pure, differentiable, batched) ------------------------------------------

    def forward_batch(self, tokens: torch.Tensor, state: WKVState | None = None,
                      head: str = "all") -> tuple[torch.Tensor | None, WKVState]:
        """Tokens [B, T] from `state` (fields [L, B, ...], None: zeros) -> (logits, new state).

        Pure: `state` is not modified. Logits are fp32: [B, T, V] for head="all", [B, V] for
        head="last", None for head="none". Everything is differentiable, including in the
        prepared weights (`self.layers`, `self.emb`, `self.head`) if a trainer asks for it.
        """
        if state is None:
            state = self.zero_batch_state(tokens.shape[0])
        C = self.config.n_embd
        x0 = F.layer_norm(self.emb[tokens].float(), (C,), self.ln0_w, self.ln0_b)
        x = x0.to(self.act_dtype)                           # [B, T, C]
        v_first = x
        att_x, wkv, ffn_x = [], [], []
        for i, p in enumerate(self.layers):
            xx = F.layer_norm(x, (C,), p.ln1_w, p.ln1_b)
            out, v_first, S = self._time_mix_seq(p, xx, state.att_x[i], v_first, state.wkv[i])
            x = x + out
            att_x.append(xx[:, -1])
            wkv.append(S)
            xx = F.layer_norm(x, (C,), p.ln2_w, p.ln2_b)
            scale = None
            if p.s_emb is not None:
                scale = deep_embed_scale(p, xx, deep_embed_rows(p, tokens, x0, _mm))
                if self._de_pages is not None:
                    self._de_pages.release(p.s_emb)
            x = x + _channel_mix_seq(p, xx, state.ffn_x[i], scale)
            ffn_x.append(xx[:, -1])
        new_state = WKVState(att_x=torch.stack(att_x).float(), wkv=torch.stack(wkv),
                             ffn_x=torch.stack(ffn_x).float())
        if head == "none":
            return None, new_state
        if head == "last":
            x = x[:, -1]
        x = F.layer_norm(x, (C,), self.ln_out_w, self.ln_out_b)
        if x.dim() == 2 and x.shape[0] == 1:
            return _mm(x[0], self.head).float().unsqueeze(0), new_state
        return _head_mm(x, self.head).float(), new_state

    def _time_mix_seq(self, p: _Layer, x: torch.Tensor, x_prev: torch.Tensor,
                      v_first: torch.Tensor, S: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T, C = x.shape
        H, N = self.config.n_head, self.config.head_size
        dx = _shift_diff(x, x_prev)
        xr, xw, xk, xv, xa, xg = torch.addcmul(x, dx, p.maa.view(6, 1, 1, C)).unbind(0)
        r, k, v = _mm(xr, p.R), _mm(xk, p.K), _mm(xv, p.V)
        w = lora_linear(torch.tanh(lora_linear(xw, p.w1)), p.w2)
        logw = -DECAY_SCALE * torch.sigmoid(p.w0 + w.float())
        a = torch.sigmoid(p.a0 + lora_linear(lora_linear(xa, p.a1), p.a2))
        g = lora_linear(torch.sigmoid(lora_linear(xg, p.g1)), p.g2)
        if p.v1 is None:
            v_first = v
        else:
            mix = torch.sigmoid(p.v0 + lora_linear(lora_linear(xv, p.v1), p.v2))
            v = torch.lerp(v, v_first, mix)
        if not torch.is_grad_enabled() and x.device.type == "cpu":
            # In C: the key's normalization and scaling, the recurrence, GroupNorm, bonus, gate
            # (on the development machine a 0.1B layer's 512 tokens: 3.9 ms for the recurrence
            # against 15.8 ms for the chunked form, and ~16 torch operations fewer).
            S_new = S.float().clone(memory_format=torch.contiguous_format)
            y = v7_cpu.time_mix_seq(S_new, r.float(), logw.exp(), k.float(), v.float(),
                                    a.float(), g.float(),
                                    (p.k_k, p.k_a, p.r_k, p.ln_x_w, p.ln_x_b))
            if y is not None:
                return _mm(y.to(x.dtype), p.O), v_first, S_new
        kk = F.normalize((k * p.k_k).view(B, T, H, N), dim=-1).view(B, T, C)
        k = k * (1 + (a - 1) * p.k_a)

        def heads(t: torch.Tensor) -> torch.Tensor:  # [B, T, C] -> fp32 [B, H, T, N]
            return t.float().view(B, T, H, N).transpose(1, 2)

        y, S = wkv_chunked(S, heads(r), heads(logw), heads(k), heads(v), heads(-kk),
                           heads(kk * a))
        y = y.transpose(1, 2).to(x.dtype)                    # [B, T, H, N]
        y = F.layer_norm(y, (N,), eps=LN_X_EPS) * p.ln_x_w + p.ln_x_b
        y = y + (r * k * p.r_k.view(C)).view(B, T, H, N).sum(-1, keepdim=True) * v.view(B, T, H, N)
        return _mm(y.reshape(B, T, C) * g, p.O), v_first, S

    # --- RNN mode (one token, in place) ---------------------------------------------------------

    def _forward_one(self, token: int, state: WKVState) -> torch.Tensor:
        """One token: in C where it can run (CPU, no gradients wanted), else in torch."""
        step = self._c_step_for(state)
        return self._forward_one_torch(token, state) if step is None else step.step(token, state)

    def _build_c_step(self) -> CpuStep | None:
        return v7_cpu.build(self)

    def _c_step_missing(self) -> str:
        return v7_cpu.missing(self)

    def _weight_tensors(self) -> list[object]:
        tensors = [self.emb, self.ln0_w, self.ln0_b, self.ln_out_w, self.ln_out_b, self.head]
        for p in self.layers:
            tensors.extend(getattr(p, f.name) for f in dataclasses.fields(p))
        return tensors

    def embedding_tables(self) -> list[torch.Tensor]:
        return [self.emb, *self.paged_tables()]

    def paged_tables(self) -> list[torch.Tensor]:
        return [p.s_emb for p in self.layers if p.s_emb is not None]  # see v7_de.DeepEmbedPages

    def _forward_one_torch(self, token: int, state: WKVState) -> torch.Tensor:
        act = self.act_dtype
        C, H, N = self.config.n_embd, self.config.n_head, self.config.head_size
        x0 = F.layer_norm(self.emb[token].float(), (C,), self.ln0_w, self.ln0_b)
        x = x0.to(act)
        v_first = x
        for i, p in enumerate(self.layers):
            xx = F.layer_norm(x, (C,), p.ln1_w, p.ln1_b)
            prev = state.att_x[i]
            dx = prev.to(act) - xx
            prev.copy_(xx)
            xr, xw, xk, xv, xa, xg = torch.addcmul(xx, dx, p.maa).unbind(0)
            r, k, v = _mm(xr, p.R), _mm(xk, p.K), _mm(xv, p.V)
            w = lora_linear(torch.tanh(lora_linear(xw, p.w1)), p.w2)
            w = torch.exp(-DECAY_SCALE * torch.sigmoid(p.w0 + w.float()))
            a = torch.sigmoid(p.a0 + lora_linear(lora_linear(xa, p.a1), p.a2))
            g = lora_linear(torch.sigmoid(lora_linear(xg, p.g1)), p.g2)
            kk = F.normalize((k * p.k_k).view(H, N), dim=-1)
            k = k * (1 + (a - 1) * p.k_a)
            if p.v1 is None:
                v_first = v
            else:
                mix = torch.sigmoid(p.v0 + lora_linear(lora_linear(xv, p.v1), p.v2))
                v = v + (v_first - v) * mix
            y = _wkv_step_(state.wkv[i], r.float().view(H, N), w.view(H, N),
                           k.float().view(H, N), v.float().view(H, N), -kk.float(),
                           (kk * a.view(H, N)).float())
            # ln_x as one GroupNorm op (the sequence path's layer_norm per head is its twin)
            y = F.group_norm(y.to(act).view(1, C), H, p.ln_x_w.view(C), p.ln_x_b.view(C),
                             eps=LN_X_EPS).view(H, N)
            y = y + (r * k).view(H, N).mul(p.r_k).sum(-1, keepdim=True) * v.view(H, N)
            x = x + _mm(y.view(C) * g, p.O)
            xx = F.layer_norm(x, (C,), p.ln2_w, p.ln2_b)
            prev = state.ffn_x[i]
            dx = prev.to(act) - xx
            prev.copy_(xx)
            k = torch.relu(_mm(torch.addcmul(xx, dx, p.ffn_x_k), p.ffn_K)).square()
            if p.s_emb is not None:
                k = k * deep_embed_scale(p, xx, deep_embed_rows(p, token, x0, _mm))
            x = x + _mm(k, p.ffn_V)
        x = F.layer_norm(x, (C,), self.ln_out_w, self.ln_out_b)
        return _mm(x, self.head).float()


def _shift_diff(x: torch.Tensor, x_prev: torch.Tensor) -> torch.Tensor:
    """Token shift minus x, [B, T, C]: the previous token's x (x_prev for the first) - x.
    Without autograd, written into one buffer (a cat and a subtraction: ~4% of a prefill)."""
    if torch.is_grad_enabled():
        return torch.cat((x_prev.to(x.dtype).unsqueeze(1), x[:, :-1]), 1) - x
    dx = torch.empty_like(x)
    torch.sub(x_prev.to(x.dtype), x[:, 0], out=dx[:, 0])
    torch.sub(x[:, :-1], x[:, 1:], out=dx[:, 1:])
    return dx


def _channel_mix_seq(p: _Layer, x: torch.Tensor, x_prev: torch.Tensor,
                     scale: torch.Tensor | None = None) -> torch.Tensor:
    k = _mm(torch.addcmul(x, _shift_diff(x, x_prev), p.ffn_x_k), p.ffn_K)
    k = torch.relu(k).square() if torch.is_grad_enabled() else torch.relu_(k).square_()
    if scale is not None:  # DeepEmbed: the per-token key scale
        k = k * scale
    return _mm(k, p.ffn_V)


def _head_mm(x: torch.Tensor, head: Matrix) -> torch.Tensor:
    if isinstance(head, (Int8Linear, Int4Linear)) or head.dtype in (torch.float32, x.dtype):
        return _mm(x, head)
    # Many rows through a 16-bit head: the bf16 C GEMM or a 16-bit GEMM, not an fp32 copy of
    # the [V, C] head.
    if (y := bf16_linear(x, head)) is not None:
        return y
    return F.linear(x.to(head.dtype), head).to(x.dtype)


def _embedding(emb: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The raw embedding: as stored on the CPU when fp32 or bf16 (exact in fp32, and what the
    C step reads), else in the weight dtype on the device."""
    if device.type == "cpu" and emb.dtype in (torch.float32, torch.bfloat16):
        return emb.contiguous()
    return emb.to(device=device, dtype=dtype).contiguous()


def _read_config(ckpt: Checkpoint) -> RWKV7Config:
    """Sizes from tensor shapes; head size from `att.r_k` [H, N] as the official package does."""
    emb, r_k = ckpt.require("emb.weight"), ckpt.require("blocks.0.att.r_k")
    if emb.dim() != 2:
        raise CheckpointError(f"{ckpt.path}: tensor 'emb.weight' has shape {tuple(emb.shape)}, "
                              "expected (vocab, n_embd)")
    vocab, C = emb.shape
    if r_k.dim() != 2 or r_k.shape[0] * r_k.shape[1] != C:
        raise CheckpointError(f"{ckpt.path}: tensor 'blocks.0.att.r_k' has shape "
                              f"{tuple(r_k.shape)}, expected (n_head, head_size) with "
                              f"n_head * head_size = {C}")
    n_layer = ckpt.n_layers()

    def width(key: str) -> int:
        t = ckpt.require(key)
        if t.dim() != 2 or t.shape[0] != C:
            raise CheckpointError(f"{ckpt.path}: tensor '{key}' has shape {tuple(t.shape)}, "
                                  f"expected ({C}, width)")
        return t.shape[1]

    ffn = ckpt.require("blocks.0.ffn.key.weight")
    d_embed = deep_embed_rank(ckpt, C) if any(k.endswith(DEEP_EMBED_KEY) for k in ckpt.tensors) \
        else 0
    return RWKV7Config(
        version="7.0a" if d_embed else "7.0", n_layer=n_layer, n_embd=C, vocab_size=vocab,
        n_head=r_k.shape[0], head_size=r_k.shape[1], ffn_dim=ffn.shape[0],
        d_decay=width("blocks.0.att.w1"),
        d_aaa=width("blocks.0.att.a1"), d_gate=width("blocks.0.att.g1"),
        d_mv=width("blocks.1.att.v1") if n_layer > 1 else 0, d_embed=d_embed)
