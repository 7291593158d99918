"""RWKV v5: sub-versions 5.0, 5.1 and 5.2 in one module.

The sub-versions differ only in their weights, and that difference is settled at load time:
- 5.0: one decay and one bonus (`time_first`, used as exp(time_first)) per head, no gate;
- 5.1: adds the SiLU gate (`att.gate`, `att.time_mix_g`) and may carry `time_faaaa` (the bonus
  itself) instead of `time_first`;
- 5.2: decay and bonus per key channel, `[H, N]`.
Per-head decays and bonuses are expanded to `[H, N]`, so one WKV kernel serves all three; the
only per-layer branch in the hot path is "is there a gate".

WKV recurrence per head (state S is [N_k, N_v], as in the official `rwkv` package):
    out_t = r_t @ (diag(u) k_t^T v_t + S)        S <- k_t^T v_t + diag(w) S
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..checkpoint import Checkpoint
from ..errors import CheckpointError
from ..state import WKVState
from . import v5_cpu
from .base import DEFAULT_CHUNK_LEN, ModelConfig, RWKVModel
from .bf16gemm import bf16_linear
from .cpu_step import CpuStep, weight_shape
from .pages import PageReleaser
from .quant import Int4Linear, Int8Linear
from .weightcache import WeightCache, int4_matrix, int8_matrix

# a big weight: [out, in] in the weight dtype, or int8 / int4
Matrix = torch.Tensor | Int8Linear | Int4Linear

# The official ln_x is GroupNorm(eps=1e-5) applied to x / head_size_divisor (8); the reference
# folds the divisor into eps: 1e-5 * 8**2.
LN_X_EPS = 64e-5
# Tokens per block of the parallel WKV form: the intra-block decay tensor is C * B**2 floats.
WKV_BLOCK = 32
# fp16 only: halve the residual stream after every 6th layer, as the reference does.
FP16_RESCALE_LAYER = 6


@dataclasses.dataclass(frozen=True)
class V5Config(ModelConfig):
    gated: bool  # 5.1 and 5.2 have the SiLU output gate


@dataclasses.dataclass(frozen=True, slots=True)
class _Layer:
    """One block's prepared weights. Matrices keep the checkpoint's [out, in] layout."""

    ln1_w: torch.Tensor
    ln1_b: torch.Tensor
    att_mix: torch.Tensor         # [M, C]: time_mix_r, _k, _v (, _g)
    receptance: Matrix
    key: Matrix
    value: Matrix
    gate: Matrix | None           # None for 5.0
    output: Matrix
    log_decay: torch.Tensor       # [H, N] fp32: log w = -exp(time_decay)
    decay: torch.Tensor           # [H, N, 1] fp32: w
    bonus: torch.Tensor           # [H, N, 1] fp32: u
    ln_x_w: torch.Tensor          # [C] fp32
    ln_x_b: torch.Tensor
    ln2_w: torch.Tensor
    ln2_b: torch.Tensor
    ffn_mix: torch.Tensor         # [2, C]: time_mix_r, _k
    ffn_key: Matrix
    ffn_receptance: Matrix
    ffn_value: Matrix
    halve_after: bool             # fp16 rescaling point


def _linear(x: torch.Tensor, weight: Matrix) -> torch.Tensor:
    """x @ weight.T in x's dtype. Mixed dtypes happen only on CPU with 16-bit weights: a vector
    goes through a 16-bit GEMV (no fp32 copy of the weight), a matrix through bf16gemm's C GEMM
    (bf16 weights) or fp32 GEMM. int8 / int4 weights (CPU, fp32 activations) multiply as
    quant.py does."""
    if isinstance(weight, (Int8Linear, Int4Linear)):
        return weight(x)
    if x.dtype == weight.dtype:
        return F.linear(x, weight)
    if (y := bf16_linear(x, weight)) is not None:
        return y
    if x.dim() == 1:
        return F.linear(x.to(weight.dtype), weight).to(x.dtype)
    return F.linear(x, weight.to(x.dtype))


def _non_unit(shape: Sequence[int]) -> list[int]:
    return [d for d in shape if d != 1]


def _squeezed(ckpt: Checkpoint, key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """`key` reshaped to `shape`, accepting any extra size-1 dims (the reference squeezes)."""
    t = ckpt.require(key)
    if _non_unit(t.shape) != _non_unit(shape):
        raise CheckpointError(
            f"{ckpt.path}: tensor '{key}' has shape {tuple(t.shape)}, expected {shape}")
    return t.reshape(shape)


def _wkv_serial(r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, s: torch.Tensor,
                decay: torch.Tensor, bonus: torch.Tensor) -> torch.Tensor:
    """The plain recurrence, one token at a time (the obviously-correct twin of _wkv_parallel).

    r, k, v: [T, H, N] fp32; s: [H, N, N] fp32, updated in place; returns [T, H, N]."""
    out = torch.empty_like(r)
    for t in range(r.shape[0]):
        kv = k[t].unsqueeze(-1) * v[t].unsqueeze(-2)
        out[t] = (r[t].unsqueeze(-2) @ (bonus * kv + s)).squeeze(-2)
        s.mul_(decay).add_(kv)
    return out


def _wkv_parallel(r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, s: torch.Tensor,
                  log_decay: torch.Tensor, bonus: torch.Tensor) -> torch.Tensor:
    """The same recurrence in blocks of WKV_BLOCK tokens, each block as matrix products.

    Within a block, token t sees token j < t through w^(t-1-j) and itself through u. The decay
    tensor D[h, t, j, i] holds those factors per key channel i; every exponent is <= 0, so it is
    exact and stable for any decay (no w^-j factors). Arguments as for _wkv_serial."""
    T, H, N = r.shape
    B = min(T, WKV_BLOCK)
    steps = torch.arange(B + 1, device=r.device, dtype=torch.float32)
    w_pow = torch.exp(log_decay.unsqueeze(1) * steps.view(1, -1, 1))  # [H, B+1, N]: w^0..w^B
    t_idx = torch.arange(B, device=r.device)
    lag = t_idx.view(-1, 1) - t_idx.view(1, -1) - 1                   # [t, j]: t-1-j
    D = w_pow[:, lag.clamp(min=0)]                                    # [H, B, B, N]
    D = D * (lag >= 0).view(1, B, B, 1)
    D[:, t_idx, t_idx] = bonus.view(H, 1, N)

    r, k, v = r.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)  # [H, T, N]
    out = torch.empty(H, T, N, device=r.device, dtype=torch.float32)
    for a in range(0, T, B):
        n = min(B, T - a)
        rb, kb, vb = r[:, a:a + n], k[:, a:a + n], v[:, a:a + n]
        scores = (rb.unsqueeze(2) * kb.unsqueeze(1) * D[:, :n, :n]).sum(-1)  # [H, n, n]
        out[:, a:a + n] = scores @ vb + (rb * w_pow[:, :n]) @ s
        k_decayed = kb * w_pow[:, :n].flip(1)                         # k_j * w^(n-1-j)
        s.mul_(w_pow[:, n].unsqueeze(-1)).add_(k_decayed.transpose(1, 2) @ vb)
    return out.transpose(0, 1)


class RWKV5(RWKVModel):
    state_class = WKVState
    supports_int8 = True
    supports_int4 = True

    @classmethod
    def detect(cls, ckpt: Checkpoint) -> str | None:
        keys = list(ckpt.keys())
        if not any(".att.ln_x." in k for k in keys):
            return None  # v4
        if any("time_maa" in k or k.endswith((".att.x_r", ".att.k_k", ".att.r_k")) for k in keys):
            return None  # v6 / v7
        # As the reference: a second time_decay dimension wider than 1 means per-channel decay.
        decays = [ckpt.tensors[k].shape for k in keys if k.endswith(".att.time_decay")]
        if decays and len(decays[0]) > 1 and decays[0][1] > 1:
            return "5.2"
        if any(k.endswith(".att.gate.weight") for k in keys):
            return "5.1"
        return "5.0"

    def __init__(self, ckpt: Checkpoint, device: torch.device, dtype: str,
                 chunk_len: int = DEFAULT_CHUNK_LEN, cache: WeightCache | None = None):
        super().__init__(ckpt, device, dtype, chunk_len)
        version = self.detect(ckpt)
        if version is None:
            raise CheckpointError(f"{ckpt.path}: not an RWKV v5 checkpoint")
        n_layer = ckpt.n_layers()
        emb = ckpt.require("emb.weight")
        if emb.dim() != 2:
            raise CheckpointError(f"{ckpt.path}: tensor 'emb.weight' must be 2-D, "
                                  f"got shape {tuple(emb.shape)}")
        vocab_size, C = emb.shape
        decay0 = ckpt.require("blocks.0.att.time_decay")
        if version == "5.2":
            H, N = decay0.shape[:2]
        else:
            H = decay0.numel()
            N = C // H if H else 0
        if H * N != C:
            raise CheckpointError(f"{ckpt.path}: tensor 'blocks.0.att.time_decay' has shape "
                                  f"{tuple(decay0.shape)}, which does not divide n_embd {C}")
        ffn_dim = ckpt.require("blocks.0.ffn.key.weight").shape[0]
        self.config = V5Config(version=version, n_layer=n_layer, n_embd=C, vocab_size=vocab_size,
                               n_head=H, head_size=N, ffn_dim=ffn_dim, gated=version != "5.0")
        # On CPU we compute in fp32 whatever the weights; on CUDA in the weight dtype.
        self.compute_dtype = self.dtype if device.type == "cuda" else torch.float32
        self._cache = cache
        self._pages = PageReleaser(ckpt.path)  # converted weights: drop the file's copy
        # huge-page memory the C one-token step streams the big matrices from (CPU only)
        self._arena = v5_cpu.arena(self.config, dtype, self.dtype, device)
        self.blocks = tuple(self._load_layer(ckpt, i) for i in range(n_layer))

        # ln0 folded into the embedding in the file's dtype when it is uniform, as the reference
        # does (a bf16 model's rows get its bf16 rounding); the table stays on the CPU.
        ln0 = [ckpt.expect_shape(f"blocks.0.ln0.{n}", (C,)) for n in ("weight", "bias")]
        if not emb.dtype == ln0[0].dtype == ln0[1].dtype:
            emb, ln0 = emb.float(), [t.float() for t in ln0]
        self.emb = F.layer_norm(emb, (C,), *ln0).to(self.dtype).contiguous()
        self.ln_out_w = self._vec(ckpt.expect_shape("ln_out.weight", (C,)))
        self.ln_out_b = self._vec(ckpt.expect_shape("ln_out.bias", (C,)))
        self.head = self._big(ckpt, "head.weight", (vocab_size, C))
        del self._cache, self._pages, self._arena
        ckpt.check_consumed()

    # --- loading -------------------------------------------------------------------------------

    def _vec(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(device=self.device, dtype=self.compute_dtype).contiguous()

    def _mat(self, t: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        if scale != 1.0:
            t = t.float() * scale
        return t.to(device=self.device, dtype=self.dtype).contiguous()

    def _big(self, ckpt: Checkpoint, key: str, shape: tuple[int, int],
             scale: float = 1.0) -> Matrix:
        """A big matrix: int8 / int4 (fp32 activations, no fp16 rescale), else `_mat`."""
        t, arena = ckpt.expect_shape(key, shape), self._arena
        if self.dtype_name == "int8":  # the C step and prefill read the same int8 rows
            rows = arena.take(shape, torch.int8) if arena else None
            out: Matrix = int8_matrix(self._cache, key, t, rows, self._pages.release)
        elif self.dtype_name == "int4":
            packed = arena.take(weight_shape(shape, "int4"), torch.uint8) if arena else None
            out = int4_matrix(self._cache, key, t, packed, self._pages.release)
        elif arena is not None and scale == 1.0:  # [out, in] row-major for the C step
            out = arena.take(shape, self.dtype)
            self._pages.copy(t, out)
        else:
            out = self._mat(t, scale)
        self._pages.release(t, out)
        return out

    def _fp32(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(device=self.device, dtype=torch.float32).contiguous()

    def _load_layer(self, ckpt: Checkpoint, i: int) -> _Layer:
        c = self.config
        C, H, N, Fd = c.n_embd, c.n_head, c.head_size, c.ffn_dim
        p, att, ffn = f"blocks.{i}.", f"blocks.{i}.att.", f"blocks.{i}.ffn."

        def vec(key: str) -> torch.Tensor:
            return ckpt.expect_shape(key, (C,))

        def mat(key: str, shape: tuple[int, int], scale: float = 1.0) -> Matrix:
            return self._big(ckpt, key, shape, scale)

        head_shape = (H, N) if c.version == "5.2" else (H, 1)
        log_decay = -torch.exp(_squeezed(ckpt, att + "time_decay", head_shape).float())
        if att + "time_faaaa" in ckpt:
            bonus = _squeezed(ckpt, att + "time_faaaa", head_shape).float()
        else:  # early 5.x files store log(u)
            bonus = torch.exp(_squeezed(ckpt, att + "time_first", head_shape).float())
        log_decay, bonus = log_decay.expand(H, N), bonus.expand(H, N)

        mix_names = ("r", "k", "v", "g") if c.gated else ("r", "k", "v")
        att_mix = torch.stack([_squeezed(ckpt, f"{att}time_mix_{m}", (C,)) for m in mix_names])
        ffn_mix = torch.stack([_squeezed(ckpt, f"{ffn}time_mix_{m}", (C,)) for m in ("r", "k")])
        # fp16 rescaling (as the reference): the residual is halved after every 6th layer, so
        # the matrices writing into it are scaled to match.
        rescale = FP16_RESCALE_LAYER if self.dtype == torch.float16 else 0
        out_scale = 0.5 ** (i // rescale) if rescale else 1.0
        return _Layer(
            ln1_w=self._vec(vec(p + "ln1.weight")), ln1_b=self._vec(vec(p + "ln1.bias")),
            att_mix=self._vec(att_mix),
            receptance=mat(att + "receptance.weight", (C, C)),
            key=mat(att + "key.weight", (C, C)),
            value=mat(att + "value.weight", (C, C)),
            gate=mat(att + "gate.weight", (C, C)) if c.gated else None,
            output=mat(att + "output.weight", (C, C), out_scale),
            log_decay=self._fp32(log_decay), decay=self._fp32(log_decay.exp().unsqueeze(-1)),
            bonus=self._fp32(bonus.unsqueeze(-1)),
            ln_x_w=self._fp32(vec(att + "ln_x.weight")), ln_x_b=self._fp32(vec(att + "ln_x.bias")),
            ln2_w=self._vec(vec(p + "ln2.weight")), ln2_b=self._vec(vec(p + "ln2.bias")),
            ffn_mix=self._vec(ffn_mix),
            ffn_key=mat(ffn + "key.weight", (Fd, C)),
            ffn_receptance=mat(ffn + "receptance.weight", (C, C)),
            ffn_value=mat(ffn + "value.weight", (C, Fd), out_scale),
            halve_after=bool(rescale) and (i + 1) % rescale == 0,
        )

    # --- running -------------------------------------------------------------------------------

    def zero_state(self) -> WKVState:
        c = self.config
        return WKVState.zeros(c.n_layer, c.n_embd, c.n_head, c.head_size, device=self.device)

    def forward(self, tokens: Sequence[int], state: WKVState,
                full_output: bool = False) -> torch.Tensor:
        tokens = list(tokens)
        if not tokens:
            raise ValueError("forward needs at least one token")
        if len(tokens) == 1:
            logits = self._forward_one(int(tokens[0]), state)
            return logits.unsqueeze(0) if full_output else logits
        outputs = []
        for a in range(0, len(tokens), self.chunk_len):
            chunk = tokens[a:a + self.chunk_len]
            last = a + self.chunk_len >= len(tokens)
            if full_output or last:
                outputs.append(self._forward_seq(chunk, state, full_output))
            else:
                self._forward_seq(chunk, state, None)
        return torch.cat(outputs) if full_output else outputs[-1]

    def _embed(self, tokens: int | list[int]) -> torch.Tensor:
        return self.emb[tokens].to(device=self.device, dtype=self.compute_dtype)

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x, (self.config.n_embd,), self.ln_out_w, self.ln_out_b)
        return _linear(x, self.head).float()

    def _forward_one(self, token: int, state: WKVState) -> torch.Tensor:
        """One token: in C where it can run (CPU, no gradients wanted), else in torch."""
        step = self._c_step_for(state)
        return self._forward_one_torch(token, state) if step is None else step.step(token, state)

    def _build_c_step(self) -> CpuStep | None:
        return v5_cpu.build(self)

    def _c_step_missing(self) -> str:
        return v5_cpu.missing(self)

    def _weight_tensors(self) -> list[object]:
        tensors = [self.emb, self.ln_out_w, self.ln_out_b, self.head]
        for b in self.blocks:
            tensors.extend(getattr(b, f.name) for f in dataclasses.fields(b))
        return tensors

    def _forward_one_torch(self, token: int, state: WKVState) -> torch.Tensor:
        """RNN mode: one token, matrix-vector products, the state updated in place."""
        C, H, N = self.config.n_embd, self.config.n_head, self.config.head_size
        dt = self.compute_dtype
        x = self._embed(token)
        for i, b in enumerate(self.blocks):
            xx = F.layer_norm(x, (C,), b.ln1_w, b.ln1_b)
            mixed = torch.lerp(state.att_x[i].to(dt), xx, b.att_mix)  # [M, C]
            state.att_x[i].copy_(xx)
            r = _linear(mixed[0], b.receptance).float().view(H, 1, N)
            k = _linear(mixed[1], b.key).float().view(H, N, 1)
            v = _linear(mixed[2], b.value).float().view(H, 1, N)
            s = state.wkv[i]
            kv = k * v
            y = (r @ torch.addcmul(s, b.bonus, kv)).view(1, C)
            s.mul_(b.decay).add_(kv)
            y = F.group_norm(y, H, b.ln_x_w, b.ln_x_b, eps=LN_X_EPS).view(C).to(dt)
            if b.gate is not None:
                y = y * F.silu(_linear(mixed[3], b.gate))
            x = x + _linear(y, b.output)

            xx = F.layer_norm(x, (C,), b.ln2_w, b.ln2_b)
            mixed = torch.lerp(state.ffn_x[i].to(dt), xx, b.ffn_mix)
            state.ffn_x[i].copy_(xx)
            rr = torch.sigmoid(_linear(mixed[0], b.ffn_receptance))
            kk = torch.relu(_linear(mixed[1], b.ffn_key)).square()
            x = x + rr * _linear(kk, b.ffn_value)
            if b.halve_after:
                x = x / 2
        return self._head(x)

    def _forward_seq(self, tokens: list[int], state: WKVState,
                     full_output: bool | None) -> torch.Tensor | None:
        """Sequence mode for one chunk: every projection as a [T, C] matrix product and the WKV
        in its blocked parallel form. Returns logits of all tokens (full_output), of the last
        token (False), or nothing (None: a chunk before the last one)."""
        C, H, N = self.config.n_embd, self.config.n_head, self.config.head_size
        dt = self.compute_dtype
        T = len(tokens)
        x = self._embed(tokens)  # [T, C]
        for i, b in enumerate(self.blocks):
            xx = F.layer_norm(x, (C,), b.ln1_w, b.ln1_b)
            prev = torch.cat((state.att_x[i].to(dt).unsqueeze(0), xx[:-1]))
            mixed = torch.lerp(prev, xx, b.att_mix.unsqueeze(1))  # [M, T, C]
            state.att_x[i].copy_(xx[-1])
            r = _linear(mixed[0], b.receptance).float().view(T, H, N)
            k = _linear(mixed[1], b.key).float().view(T, H, N)
            v = _linear(mixed[2], b.value).float().view(T, H, N)
            y = _wkv_parallel(r, k, v, state.wkv[i], b.log_decay, b.bonus).reshape(T, C)
            y = F.group_norm(y, H, b.ln_x_w, b.ln_x_b, eps=LN_X_EPS).to(dt)
            if b.gate is not None:
                y = y * F.silu(_linear(mixed[3], b.gate))
            x = x + _linear(y, b.output)

            xx = F.layer_norm(x, (C,), b.ln2_w, b.ln2_b)
            prev = torch.cat((state.ffn_x[i].to(dt).unsqueeze(0), xx[:-1]))
            mixed = torch.lerp(prev, xx, b.ffn_mix.unsqueeze(1))
            state.ffn_x[i].copy_(xx[-1])
            rr = torch.sigmoid(_linear(mixed[0], b.ffn_receptance))
            kk = torch.relu(_linear(mixed[1], b.ffn_key)).square()
            x = x + rr * _linear(kk, b.ffn_value)
            if b.halve_after:
                x = x / 2
        if full_output is None:
            return None
        return self._head(x if full_output else x[-1])
