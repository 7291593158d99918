"""RWKV v6 "Finch" (x060): data-dependent token shift and data-dependent decay.

Matches `att_one_v6_0` / `att_seq_v6_0` / `ffn_one_v6` / `ffn_seq_v6` of the official `rwkv`
package, with its state layout: per layer the time-mix shift `att_x` [C], the WKV matrices
`wkv` [H, N_k, N_v] (fp32) and the channel-mix shift `ffn_x` [C].

Per head, with w_t = exp(-exp(time_decay + decay LoRA)) in (0, 1) along the key dimension and
u = time_faaaa:

    out_t = r_t @ (u * k_t^T v_t + S_{t-1})        S_t = k_t^T v_t + w_t * S_{t-1}

The sequence path runs this in its chunked form (`_wkv_chunked`); `_wkv_recurrent` is the plain
per-token loop it is tested against. As in the reference: ln0 is folded into the embedding in
the file's dtype, state-tuned files (`att.time_state`) set the initial WKV state, and fp16
halves x after every 6th layer (with att.output / ffn.value scaled to match).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..checkpoint import Checkpoint
from ..errors import CheckpointError
from ..state import WKVState
from . import v6_cpu
from .base import DEFAULT_CHUNK_LEN, ModelConfig, RWKVModel
from .bf16gemm import bf16_linear, lora_dtype, lora_linear
from .cpu_step import CpuStep, weight_shape
from .pages import PageReleaser
from .quant import Int4Linear, Int8Linear
from .weightcache import WeightCache, int4_matrix, int8_matrix

# a big weight: [out, in] in the weight dtype, or int8 / int4
Matrix = torch.Tensor | Int8Linear | Int4Linear

_V7_MARKERS = ("att.x_r", "att.k_k", "att.r_k")
_SUB_LEN = 16        # tokens per sub-chunk of the chunked WKV (halved where decays are strong)
_SAFE_LOG = 60.0     # exp(-B) inside a sub-chunk stays <= e^60 ~ 1e26
_MAX_LOG_DECAY = 30.0  # per-token log-decay floor of the chunked WKV (see _wkv_chunked)
_LN_X_EPS = 64e-5    # the reference's GroupNorm eps for v6
_RESCALE_EVERY = 6   # fp16 only: x is halved after every 6 layers, as the reference does


@dataclasses.dataclass(frozen=True)
class V6Config(ModelConfig):
    mix_lora: int    # D_mix: time_maa_w1 is [C, 5 * D_mix], time_maa_w2 [5, D_mix, C]
    decay_lora: int  # D_decay: time_decay_w1 is [C, D_decay], time_decay_w2 [D_decay, C]


class _Att(NamedTuple):
    ln_w: torch.Tensor        # [C]
    ln_b: torch.Tensor
    maa_x: torch.Tensor       # [C]
    maa_wkvrg: torch.Tensor   # [5, C] time_maa_w, _k, _v, _r, _g
    maa_w1: torch.Tensor      # [5 * D_mix, C] (F.linear layout)
    maa_w2: torch.Tensor      # [5, C, D_mix] (F.linear layout per mix)
    decay_w1: torch.Tensor    # [D_decay, C]
    decay_w2: torch.Tensor    # [C, D_decay]
    time_decay: torch.Tensor  # [C] fp32
    time_first: torch.Tensor  # [H, N] fp32 (u)
    receptance: Matrix        # [C, C] weight dtype, [out, in]
    key: Matrix
    value: Matrix
    gate: Matrix
    output: Matrix
    lnx_w: torch.Tensor       # [C] fp32
    lnx_b: torch.Tensor


class _Ffn(NamedTuple):
    ln_w: torch.Tensor        # [C]
    ln_b: torch.Tensor
    maa_k: torch.Tensor       # [C]
    maa_r: torch.Tensor
    key: Matrix               # [F, C]
    receptance: Matrix        # [C, C]
    value: Matrix             # [C, F]


def _mv(x: torch.Tensor, weight: Matrix) -> torch.Tensor:
    """Matrix-vector: bf16 weights stay bf16 ([out, in] through F.linear is fast for vectors);
    int8 / int4 weights multiply as quant.py does (fp32 activations, CPU)."""
    if isinstance(weight, (Int8Linear, Int4Linear)):
        return weight(x)
    return F.linear(x.to(weight.dtype), weight).to(x.dtype)


def _mm(x: torch.Tensor, weight: Matrix) -> torch.Tensor:
    """Matrix-matrix in the activations' dtype: bf16 weights through bf16gemm's C GEMM where it
    applies, else the weight upcast (torch's 16-bit GEMM on CPU is slow)."""
    if isinstance(weight, (Int8Linear, Int4Linear)):
        return weight(x)
    if (y := bf16_linear(x, weight)) is not None:
        return y
    return F.linear(x, weight.to(x.dtype))


def _wkv_recurrent(r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w_log: torch.Tensor,
                   u: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """The plain per-token recurrence. r, k, v, w_log: [H, T, N] fp32; u: [H, N]; s: [H, N, N]
    is advanced in place. Returns out [H, T, N]."""
    w = w_log.exp()
    out = torch.empty_like(r)
    for t in range(r.shape[1]):
        kv = k[:, t, :, None] * v[:, t, None, :]
        out[:, t] = (r[:, t, None, :] @ (u[:, :, None] * kv + s)).squeeze(1)
        s.mul_(w[:, t, :, None]).add_(kv)
    return out


def _wkv_chunked(r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w_log: torch.Tensor,
                 u: torch.Tensor, s: torch.Tensor, sub_len: int = _SUB_LEN) -> torch.Tensor:
    """`_wkv_recurrent` over sub-chunks of up to `sub_len` tokens, all sub-chunks at once.

    With A the exclusive cumulative log-decay inside a sub-chunk (A_t = sum_{j<t} log w_j) and
    B the inclusive one, the state before token t is exp(A_t) * S_0 plus, for s < t,
    exp(A_t - B_s) * k_s^T v_s. Inside a sub-chunk this is one GEMM of r_t * exp(A_t) with
    k_s * exp(-B_s); the boundary states are a scan with one step per sub-chunk, where every
    exponent is <= 0. exp(-B) is kept <= e^60 (far from fp32 overflow) by halving the
    sub-chunk while its total decay is stronger than that, and by flooring the per-token
    log-decay at -30: exp(-30) ~ 1e-13 is 0 to fp32 next to the k^T v it is added to.
    """
    H, T, N = r.shape
    # fp64 sums: exponents are differences of them, which fp32 would leave ~1e-5 off.
    w_log = w_log.double().clamp(min=-_MAX_LOG_DECAY)
    L = min(sub_len, T)
    while True:
        n_sub = -(-T // L)
        pad = n_sub * L - T  # zero k/v and zero log-decay: padding neither writes nor decays
        b = F.pad(w_log, (0, 0, 0, pad)).reshape(H, n_sub, L, N).cumsum(2)  # inclusive
        if L * _MAX_LOG_DECAY <= _SAFE_LOG or bool(b[:, :, -1].min() >= -_SAFE_LOG):
            break
        L //= 2
    r, k, v = (F.pad(x, (0, 0, 0, pad)).reshape(H, n_sub, L, N) for x in (r, k, v))
    a = F.pad(b[:, :, :-1], (0, 0, 1, 0))                      # exclusive: a_{t+1} is b_t
    b_end = b[:, :, -1:]                                        # [H, S, 1, N]
    r_decayed = r * a.exp().float()                             # r_t * exp(A_t), <= |r_t|
    att = (r_decayed @ (k * (-b).exp().float()).mT).tril_(-1)  # [H, S, L(t), L(s)], s < t
    bonus = (r * u[:, None, None, :] * k).sum(-1)               # the u term, on the diagonal
    out = (att + torch.diag_embed(bonus)) @ v                   # [H, S, L, N]

    # Boundary states: S_{c+1} = exp(B_end) * S_c + sum_s (k_s * exp(B_end - B_s))^T v_s.
    kv = (k * (b_end - b).exp().float()).mT @ v                 # [H, S, N, N]
    decay_end = b_end.exp().float().mT                          # [H, S, N, 1]
    starts = torch.empty(H, n_sub, N, N, dtype=s.dtype, device=s.device)
    for c in range(n_sub):
        starts[:, c] = s
        s.mul_(decay_end[:, c]).add_(kv[:, c])
    out = out + r_decayed @ starts
    return out.reshape(H, n_sub * L, N)[:, :T]


class RWKV6(RWKVModel):
    state_class = WKVState
    supports_int8 = True
    supports_int4 = True
    config: V6Config

    @classmethod
    def detect(cls, ckpt: Checkpoint) -> str | None:
        # The reference calls any file with a 'time_maa' tensor v6; v7 files have none.
        keys = list(ckpt.keys())
        if any(m in key for key in keys for m in _V7_MARKERS):
            return None
        return "6.0" if any("time_maa" in key for key in keys) else None

    def __init__(self, ckpt: Checkpoint, device: torch.device, dtype: str,
                 chunk_len: int = DEFAULT_CHUNK_LEN, cache: WeightCache | None = None):
        super().__init__(ckpt, device, dtype, chunk_len)
        # CPU computes in fp32 whatever the weights; CUDA in the weight dtype (WKV always fp32).
        self.compute_dtype = torch.float32 if device.type == "cpu" else self.dtype
        emb = _matrix(ckpt, "emb.weight")
        vocab, C = emb.shape
        n_layer = ckpt.n_layers()
        H, N = _matrix(ckpt, "blocks.0.att.time_faaaa").shape
        if H * N != C:
            raise CheckpointError(f"{ckpt.path}: tensor 'blocks.0.att.time_faaaa' has shape "
                                  f"{(H, N)}, expected H * N = n_embd {C}")
        mix5 = _matrix(ckpt, "blocks.0.att.time_maa_w1").shape[1]
        if mix5 % 5:
            raise CheckpointError(f"{ckpt.path}: tensor 'blocks.0.att.time_maa_w1' has "
                                  f"{mix5} columns, expected 5 * D_mix")
        self.config = V6Config(
            version="6.0", n_layer=n_layer, n_embd=C, vocab_size=vocab, n_head=H, head_size=N,
            ffn_dim=_matrix(ckpt, "blocks.0.ffn.key.weight").shape[0], mix_lora=mix5 // 5,
            decay_lora=_matrix(ckpt, "blocks.0.att.time_decay_w1").shape[1])
        self._load(ckpt, cache)
        ckpt.check_consumed()

    def _load(self, ckpt: Checkpoint, cache: WeightCache | None) -> None:
        cfg, dev, cd = self.config, self.device, self.compute_dtype
        C, H, N = cfg.n_embd, cfg.n_head, cfg.head_size
        rescale = self.dtype == torch.float16

        def vec(key: str, dtype: torch.dtype = cd) -> torch.Tensor:
            t = ckpt.require(key)
            if t.numel() != C or t.squeeze().dim() != 1:
                raise CheckpointError(f"{ckpt.path}: tensor '{key}' has shape "
                                      f"{tuple(t.shape)}, expected {C} values")
            return t.reshape(C).to(device=dev, dtype=dtype)

        def mat(key: str, shape: tuple[int, ...], dtype: torch.dtype = cd,
                scale: float = 1.0) -> torch.Tensor:
            t = ckpt.expect_shape(key, shape).to(device=dev, dtype=dtype)
            return (t * scale if scale != 1.0 else t).contiguous()

        # LoRAs as v7's (bf16gemm.lora_dtype): every product widens them (lora_linear, the C
        # step's bf16 kernel), so the activations stay fp32.
        lora = lora_dtype(dev, self.dtype_name) or cd
        pages = PageReleaser(ckpt.path)  # converted weights: drop the file's copy as we go
        # huge-page memory the C one-token step streams the big matrices from (CPU only)
        arena = v6_cpu.arena(cfg, self.dtype_name, self.dtype, dev)

        def big(key: str, shape: tuple[int, int], scale: float = 1.0) -> Matrix:
            # int8 / int4: fp32 activations, so no fp16 rescale
            t = ckpt.expect_shape(key, shape)
            if self.dtype_name == "int8":  # the C step and prefill read the same int8 rows
                rows = arena.take(shape, torch.int8) if arena else None
                out: Matrix = int8_matrix(cache, key, t, rows, pages.release)
            elif self.dtype_name == "int4":
                packed = arena.take(weight_shape(shape, "int4"), torch.uint8) if arena else None
                out = int4_matrix(cache, key, t, packed, pages.release)
            elif arena is not None and scale == 1.0:  # [out, in] row-major for the C step
                out = arena.take(shape, self.dtype)
                pages.copy(t, out)
            else:
                out = mat(key, shape, self.dtype, scale)
            pages.release(t, out)
            return out

        # Fold ln0 in the file's dtype, as the reference does: a bf16 file gets a bf16-rounded
        # embedding, and it is the embedding the model was evaluated with.
        emb = ckpt.require("emb.weight")
        fold = emb.dtype
        emb = F.layer_norm(emb.to(device=dev), (C,),
                           vec("blocks.0.ln0.weight", fold), vec("blocks.0.ln0.bias", fold))
        self.emb = emb.to(self.dtype).contiguous()
        self.layers: list[tuple[_Att, _Ffn, bool]] = []
        # State-tuned files carry an initial WKV state for every layer.
        tuned = "blocks.0.att.time_state" in ckpt
        time_states: list[torch.Tensor] = []
        D, Dd, Fd = cfg.mix_lora, cfg.decay_lora, cfg.ffn_dim
        for i in range(cfg.n_layer):
            p, a, f = f"blocks.{i}.", f"blocks.{i}.att.", f"blocks.{i}.ffn."
            # fp16: weights into the residual are scaled down by 2**(i // 6), x halved to match.
            scale = 0.5 ** (i // _RESCALE_EVERY) if rescale else 1.0
            att = _Att(
                ln_w=vec(p + "ln1.weight"), ln_b=vec(p + "ln1.bias"),
                maa_x=vec(a + "time_maa_x"),
                maa_wkvrg=torch.stack([vec(a + f"time_maa_{m}") for m in "wkvrg"]),
                maa_w1=mat(a + "time_maa_w1", (C, 5 * D), lora).t().contiguous(),
                maa_w2=mat(a + "time_maa_w2", (5, D, C), lora).mT.contiguous(),
                decay_w1=mat(a + "time_decay_w1", (C, Dd), lora).t().contiguous(),
                decay_w2=mat(a + "time_decay_w2", (Dd, C), lora).t().contiguous(),
                time_decay=vec(a + "time_decay", torch.float32),
                time_first=mat(a + "time_faaaa", (H, N), torch.float32),
                receptance=big(a + "receptance.weight", (C, C)),
                key=big(a + "key.weight", (C, C)),
                value=big(a + "value.weight", (C, C)),
                gate=big(a + "gate.weight", (C, C)),
                output=big(a + "output.weight", (C, C), scale),
                lnx_w=vec(a + "ln_x.weight", torch.float32),
                lnx_b=vec(a + "ln_x.bias", torch.float32))
            ffn = _Ffn(
                ln_w=vec(p + "ln2.weight"), ln_b=vec(p + "ln2.bias"),
                maa_k=vec(f + "time_maa_k"), maa_r=vec(f + "time_maa_r"),
                key=big(f + "key.weight", (Fd, C)),
                receptance=big(f + "receptance.weight", (C, C)),
                value=big(f + "value.weight", (C, Fd), scale))
            halve_after = rescale and (i + 1) % _RESCALE_EVERY == 0
            self.layers.append((att, ffn, halve_after))
            if tuned:  # stored [H, N_v, N_k], as the reference reads it
                time_states.append(mat(a + "time_state", (H, N, N), torch.float32).mT)
        self.time_state = torch.stack(time_states).contiguous() if time_states else None
        self.ln_out_w, self.ln_out_b = vec("ln_out.weight"), vec("ln_out.bias")
        self.head = big("head.weight", (cfg.vocab_size, C))

    def zero_state(self) -> WKVState:
        c = self.config
        state = WKVState.zeros(c.n_layer, c.n_embd, c.n_head, c.head_size, device=self.device)
        if self.time_state is not None:
            state.wkv.copy_(self.time_state)
        return state

    def forward(self, tokens: Sequence[int], state: WKVState,
                full_output: bool = False) -> torch.Tensor:
        tokens = list(tokens)
        if not tokens:
            raise ValueError("forward needs at least one token")
        if min(tokens) < 0 or max(tokens) >= self.config.vocab_size:
            raise ValueError(f"token id out of range for vocabulary of {self.config.vocab_size}")
        if len(tokens) == 1:
            logits = self._forward_one(int(tokens[0]), state)
            return logits.unsqueeze(0) if full_output else logits
        outputs = []
        for start in range(0, len(tokens), self.chunk_len):
            ids = torch.tensor(tokens[start:start + self.chunk_len], device=self.device)
            x = self.emb[ids].to(self.compute_dtype)
            for i, (att, ffn, halve_after) in enumerate(self.layers):
                x = self._att_seq(i, att, x, state)
                x = self._ffn_seq(i, ffn, x, state)
                if halve_after:
                    x = x / 2
            if full_output:
                outputs.append(self._head(x))
        return torch.cat(outputs) if full_output else self._head(x[-1])

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x, (self.config.n_embd,), self.ln_out_w, self.ln_out_b)
        return (_mv(x, self.head) if x.dim() == 1 else _mm(x, self.head)).float()

    # --- one token (RNN mode) ----------------------------------------------------------------

    def _forward_one(self, token: int, state: WKVState) -> torch.Tensor:
        """One token: in C where it can run (CPU, no gradients wanted), else in torch."""
        step = self._c_step_for(state)
        return self._forward_one_torch(token, state) if step is None else step.step(token, state)

    def _build_c_step(self) -> CpuStep | None:
        return v6_cpu.build(self)

    def _c_step_missing(self) -> str:
        return v6_cpu.missing(self)

    def _weight_tensors(self) -> list[object]:
        tensors = [self.emb, self.ln_out_w, self.ln_out_b, self.head]
        for att, ffn, _ in self.layers:
            tensors.extend((*att, *ffn))
        return tensors

    def _forward_one_torch(self, token: int, state: WKVState) -> torch.Tensor:
        x = self.emb[token].to(self.compute_dtype)
        for i, (att, ffn, halve_after) in enumerate(self.layers):
            x = self._att_one(i, att, x, state)
            x = self._ffn_one(i, ffn, x, state)
            if halve_after:
                x = x / 2
        return self._head(x)

    def _att_one(self, i: int, w: _Att, x: torch.Tensor, state: WKVState) -> torch.Tensor:
        H, N = self.config.n_head, self.config.head_size
        xx = F.layer_norm(x, x.shape, w.ln_w, w.ln_b)
        sx = state.att_x[i].to(xx.dtype) - xx
        state.att_x[i] = xx
        lora = torch.tanh(lora_linear(xx + sx * w.maa_x, w.maa_w1)).view(5, 1, -1)
        maa_w2 = w.maa_w2.to(lora.dtype)
        mixed = xx + sx * (w.maa_wkvrg + torch.bmm(lora, maa_w2.mT).view(5, -1))  # [5, C]
        wx, kx, vx, rx, gx = mixed.unbind(0)
        r = _mv(rx, w.receptance).float().view(H, N)
        k = _mv(kx, w.key).float().view(H, N)
        v = _mv(vx, w.value).float().view(H, N)
        g = F.silu(_mv(gx, w.gate))
        decay = w.time_decay + lora_linear(torch.tanh(lora_linear(wx, w.decay_w1)),
                                           w.decay_w2).float()
        decay = torch.exp(-torch.exp(decay)).view(H, N, 1)

        s = state.wkv[i]  # [H, N_k, N_v], advanced in place
        out = torch.bmm(r.view(H, 1, N), s).view(H, N) + (r * w.time_first * k).sum(
            -1, keepdim=True) * v
        s.mul_(decay).baddbmm_(k.view(H, N, 1), v.view(H, 1, N))
        out = F.group_norm(out.view(1, -1), H, w.lnx_w, w.lnx_b, eps=_LN_X_EPS).view(-1)
        return x + _mv(out.to(x.dtype) * g, w.output)

    def _ffn_one(self, i: int, w: _Ffn, x: torch.Tensor, state: WKVState) -> torch.Tensor:
        xx = F.layer_norm(x, x.shape, w.ln_w, w.ln_b)
        sx = state.ffn_x[i].to(xx.dtype) - xx
        state.ffn_x[i] = xx
        r = torch.sigmoid(_mv(xx + sx * w.maa_r, w.receptance))
        h = torch.relu(_mv(xx + sx * w.maa_k, w.key)).square()
        return x + r * _mv(h, w.value)

    # --- a chunk of tokens (sequence mode) ---------------------------------------------------

    def _att_seq(self, i: int, w: _Att, x: torch.Tensor, state: WKVState) -> torch.Tensor:
        T, C = x.shape
        H, N = self.config.n_head, self.config.head_size
        xx = F.layer_norm(x, (C,), w.ln_w, w.ln_b)
        sx = torch.cat((state.att_x[i].to(xx.dtype).unsqueeze(0), xx[:-1])) - xx
        state.att_x[i] = xx[-1]
        lora = torch.tanh(lora_linear(xx + sx * w.maa_x, w.maa_w1)).view(T, 5, -1).transpose(0, 1)
        maa_w2 = w.maa_w2.to(lora.dtype)
        mixed = xx + sx * (w.maa_wkvrg.unsqueeze(1) + torch.bmm(lora, maa_w2.mT))  # [5, T, C]
        wx, kx, vx, rx, gx = mixed.unbind(0)

        def heads(t: torch.Tensor) -> torch.Tensor:  # [T, C] -> [H, T, N] fp32
            return t.float().view(T, H, N).transpose(0, 1).contiguous()

        r, k, v = heads(_mm(rx, w.receptance)), heads(_mm(kx, w.key)), heads(_mm(vx, w.value))
        g = F.silu(_mm(gx, w.gate))
        w_log = -torch.exp(w.time_decay + lora_linear(torch.tanh(lora_linear(wx, w.decay_w1)),
                                                      w.decay_w2).float())
        out = _wkv_chunked(r, k, v, heads(w_log), w.time_first, state.wkv[i])
        out = F.group_norm(out.transpose(0, 1).reshape(T, C), H, w.lnx_w, w.lnx_b, eps=_LN_X_EPS)
        return x + _mm(out.to(x.dtype) * g, w.output)

    def _ffn_seq(self, i: int, w: _Ffn, x: torch.Tensor, state: WKVState) -> torch.Tensor:
        xx = F.layer_norm(x, (x.shape[-1],), w.ln_w, w.ln_b)
        sx = torch.cat((state.ffn_x[i].to(xx.dtype).unsqueeze(0), xx[:-1])) - xx
        state.ffn_x[i] = xx[-1]
        r = torch.sigmoid(_mm(xx + sx * w.maa_r, w.receptance))
        h = torch.relu(_mm(xx + sx * w.maa_k, w.key)).square()
        return x + r * _mm(h, w.value)


def _matrix(ckpt: Checkpoint, key: str) -> torch.Tensor:
    """A tensor that must be 2-D (used to read the config's sizes)."""
    t = ckpt.require(key)
    if t.dim() != 2:
        raise CheckpointError(f"{ckpt.path}: tensor '{key}' has shape {tuple(t.shape)}, "
                              "expected a matrix")
    return t
