"""The interface every RWKV version module implements, and the precision / device options.

A version module (`v4.py`, `v5.py`, `v6.py`, `v7.py`) defines one `RWKVModel` subclass. Its
classmethod `detect` looks at tensor names and shapes only and returns the exact version string
("5.2", "7.0", ...) or None; `__init__` derives the frozen config from the weights, prepares them
once (transposes, folds, casts), and from then on `forward` runs tokens through the model.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import torch

from ..checkpoint import Checkpoint
from ..errors import ChatRWKVError
from ..state import State

if TYPE_CHECKING:
    from .cpu_step import CpuStep

# "int8" / "int4": the big matrices become int8 with per-channel scales or int4 with group-wise
# scales (models/quant.py, CPU only); the other weights, and `self.dtype`, stay fp32.
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16,
                                  "fp16": torch.float16, "int8": torch.float32,
                                  "int4": torch.float32}
DEFAULT_CHUNK_LEN = 256


def resolve_device(device: str | None) -> torch.device:
    """`None` means CUDA when present, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ChatRWKVError(f"unknown device '{device}' (use cpu or cuda)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ChatRWKVError("--device cuda was asked for, but no CUDA GPU is available")
    if dev.type not in ("cpu", "cuda"):
        raise ChatRWKVError(f"unsupported device '{device}' (use cpu or cuda)")
    return dev


def resolve_dtype(dtype: str | None, device: torch.device) -> str:
    """Default fp32 on CPU (no fast 16-bit GEMM there), fp16 on CUDA."""
    if dtype is None:
        return "fp16" if device.type == "cuda" else "fp32"
    if dtype not in DTYPES:
        raise ChatRWKVError(f"unknown dtype '{dtype}' (use one of: {', '.join(DTYPES)})")
    if device.type == "cpu" and dtype == "fp16":
        raise ChatRWKVError("fp16 is not supported on CPU (use fp32 or bf16)")
    if device.type == "cuda" and dtype in ("int8", "int4"):
        raise ChatRWKVError(f"{dtype} weights are CPU-only (use fp16 or bf16 on CUDA)")
    return dtype


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """What every version shares; versions extend it with their own fields (LoRA widths, ...)."""

    version: str      # "4", "5.0", "5.1", "5.2", "6.0", "7.0"
    n_layer: int
    n_embd: int       # C
    vocab_size: int
    n_head: int       # H (v4 has no heads: 1)
    head_size: int    # N (v4: C)
    ffn_dim: int


class RWKVModel(ABC):
    """One loaded model: prepared weights plus the config derived from them.

    `forward(tokens, state)` advances `state` in place and returns fp32 logits: `[V]` for the
    last token, or `[T, V]` with `full_output=True`. One token runs the RNN path; more tokens run
    the parallel sequence path in chunks of `chunk_len`. Callers snapshot with `state.clone()`.
    """

    state_class: ClassVar[type[State]]
    supports_int8: ClassVar[bool] = False  # versions that implement --dtype int8 set True
    supports_int4: ClassVar[bool] = False  # ... and --dtype int4
    config: ModelConfig

    def __init__(self, ckpt: Checkpoint, device: torch.device, dtype: str,
                 chunk_len: int = DEFAULT_CHUNK_LEN):
        if chunk_len < 1:
            raise ChatRWKVError(f"chunk length must be at least 1, got {chunk_len}")
        if (dtype == "int8" and not self.supports_int8) or \
                (dtype == "int4" and not self.supports_int4):
            raise ChatRWKVError(f"--dtype {dtype} is not implemented for {type(self).__name__} "
                                "(use fp32 or bf16)")
        self.path = ckpt.path
        self.device = device
        self.dtype_name = dtype
        self.dtype = DTYPES[dtype]
        self.chunk_len = chunk_len
        self.fingerprint = ckpt.fingerprint()
        self._c_step: CpuStep | None = None  # built at the first one-token step
        self._c_step_built = False

    @classmethod
    @abstractmethod
    def detect(cls, ckpt: Checkpoint) -> str | None:
        """The exact version string if the keys and shapes are this version's layout, else None."""

    @abstractmethod
    def zero_state(self) -> State:
        """The initial state (all zeros, or v4's -1e30 maxima), on the model's device."""

    @abstractmethod
    def forward(self, tokens: Sequence[int], state: State, full_output: bool = False) -> torch.Tensor:
        """Run `tokens` (at least one), advancing `state` in place; return fp32 logits."""

    def _c_step_for(self, state: State) -> CpuStep | None:
        """The C one-token step if it can run on `state` now, else None (torch runs): built at
        the first one-token step; skipped while autograd wants gradients of the weights."""
        if torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad
                                           for t in self._weight_tensors()):
            return None
        if not self._c_step_built:
            self._c_step_built = True
            self._c_step = self._build_c_step()
        step = self._c_step
        return step if step is not None and step.accepts(state) else None

    def _build_c_step(self) -> CpuStep | None:
        """Versions with a C one-token step build it here (None: it cannot run this model)."""
        return None

    def _c_step_missing(self) -> str:
        """Why `_build_c_step` gave None (versions with a C step say more)."""
        return f"no C step for RWKV v{self.config.version}"

    @property
    def has_c_step(self) -> bool:
        """Whether one-token steps run in C here (the C step is built if no step has run yet)."""
        if self.device.type != "cpu":
            return False
        if not self._c_step_built:
            self._c_step_built = True
            self._c_step = self._build_c_step()
        return self._c_step is not None

    @property
    def engine_path(self) -> str:
        """Which code runs a one-token step, for the banner, `+show` and the bench: e.g.
        "C step (AVX2 kernels, 2 threads)" or "torch fallback (C extension not built: ...)".
        Builds the C step if no step has run yet (it would be built at the first one)."""
        if self.device.type != "cpu":
            return f"torch on {self.device.type}"
        if not self._c_step_built:
            self._c_step_built = True
            self._c_step = self._build_c_step()
        if self._c_step is not None:
            return f"C step ({self._c_step.kernels} kernels, {self._c_step.n_threads} threads)"
        return f"torch fallback ({self._c_step_missing()})"

    def embedding_tables(self) -> list[torch.Tensor]:
        """The weight tables a token reads one row of, not the whole (the embedding; DeepEmbed's
        per-layer `s_emb`): the bench counts one row of each as read per token, and `info` tells
        their parameters apart from the matrices every token reads."""
        emb = getattr(self, "emb", None)
        return [emb] if isinstance(emb, torch.Tensor) and emb.dim() == 2 else []

    def paged_tables(self) -> list[torch.Tensor]:
        """Tables left in the checkpoint's file pages and handed back as their rows are read
        (DeepEmbed's `s_emb`): weights the model uses but does not hold in memory."""
        return []

    def _weight_tensors(self) -> list[object]:
        """Every prepared weight (for the gradient check of `_c_step_for`)."""
        return []

    def identity(self) -> dict[str, str]:
        """What a state file must match to be loaded into this model."""
        c = self.config
        return {"version": c.version, "n_layer": str(c.n_layer), "n_embd": str(c.n_embd),
                "n_head": str(c.n_head), "head_size": str(c.head_size),
                "vocab_size": str(c.vocab_size), "fingerprint": self.fingerprint}

    def describe(self) -> str:
        c = self.config
        return (f"RWKV v{c.version} L{c.n_layer} D{c.n_embd} H{c.n_head}x{c.head_size} "
                f"vocab {c.vocab_size} ({self.device.type} {self.dtype_name})")
