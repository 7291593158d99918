"""What the C one-token steps (`_v4cpu.c`, `_v5cpu.c`, `_v6cpu.c`, `_v7cpu.c`) share on the
Python side.

A version's glue (`v4_cpu.py`, `v5_cpu.py`, `v6_cpu.py`, `v7_cpu.py`) describes its prepared weights to its extension by
address (`fp32_address`, `matrix`: no copy) and subclasses `CpuStep`, which keeps the described
tensors alive, checks states before the C side writes into them, and runs one token.
`weight_arena` sizes the huge-page memory (arena.py) that the big matrices are loaded into.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, NamedTuple

import torch

from .arena import Arena
from .base import ModelConfig
from .quant import Int4Linear, Int8Linear, int4_row_bytes

CK_DTYPES = {torch.float32: 0, torch.bfloat16: 1}  # _cpukern.h's CK_F32, CK_BF16
CK_INT8 = 2


def missing_reason(built: bool, import_error: str, device: torch.device, dtype: str) -> str:
    """Why a version's C step does not run a model (for `RWKVModel.engine_path`)."""
    if not built:
        return f"C extension not built: {import_error}"
    if device.type != "cpu":
        return f"the C step runs on the CPU, not {device.type}"
    return f"the C step cannot read these weights ({dtype})"


class StepModule:
    """A version's C step module (`_vNcpu`), where it was built: `module` is None without it
    (built without a C compiler: the torch path runs) and `error` says why. Each glue module
    (v4_cpu ... v7_cpu) keeps one and takes its available / missing / use_simd; tests set
    `module` to None to see the torch path."""

    def __init__(self, name: str):
        try:
            self.module: ModuleType | None = importlib.import_module(f"{__package__}.{name}")
            self.error = ""
        except ImportError as e:
            self.module, self.error = None, str(e)

    def available(self) -> bool:
        return self.module is not None

    def missing(self, model: Any) -> str:
        """Why the version's `build` gives None for `model`."""
        return missing_reason(self.module is not None, self.error, model.device, model.dtype_name)

    def use_simd(self, level: bool | int) -> int:
        """The best kernels the CPU has (True), the scalar twins (False), or at most `level`
        (1: AVX2, 2: AVX-512, 3: AVX-512 with VNNI; for tests); returns the level that runs (0 without the module)."""
        return int(self.module.set_simd(level)) if self.module is not None else 0


def simd_name() -> str:
    """The kernels the C step picks on this CPU (as `_cpukern.h`'s `ck_init`: AVX2 with FMA,
    else the scalar twins); an extension that exports `kernels()` is asked instead."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return "scalar"
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), [])
    except OSError:
        return "SIMD"
    return "AVX2" if "avx2" in flags and "fma" in flags else "scalar"


class Unsupported(Exception):
    """A weight the C step cannot read: the model keeps the torch path."""


def fp32_address(t: torch.Tensor | None) -> int:
    """The address of a contiguous fp32 CPU tensor (0 for an absent one)."""
    if t is None:
        return 0
    if t.dtype != torch.float32 or not t.is_contiguous() or t.device.type != "cpu":
        raise Unsupported
    return t.data_ptr()


def matrix(w: torch.Tensor | Int8Linear | Int4Linear | None) -> tuple[int, ...] | None:
    """(address, scale address, dtype code, out, in[, group]) of a [out, in] weight, or None."""
    if w is None:
        return None
    if isinstance(w, Int4Linear):
        try:
            return w.describe()
        except ValueError:
            raise Unsupported from None
    if isinstance(w, Int8Linear):
        q = w.q
        if q is None or not q.is_contiguous():
            raise Unsupported
        return (q.data_ptr(), fp32_address(w.scale), CK_INT8, *w.shape)
    if w.dim() != 2 or w.dtype not in CK_DTYPES or not w.is_contiguous() or \
            w.device.type != "cpu":
        raise Unsupported
    return (w.data_ptr(), 0, CK_DTYPES[w.dtype], w.shape[0], w.shape[1])


def weight_arena(cfg: ModelConfig, dtype: str, weight_dtype: torch.dtype, device: torch.device,
                 layer_shapes: list[tuple[int, int]], available: bool) -> Arena | None:
    """Huge-page memory for every layer's `layer_shapes` and the head, when the C step will
    stream them (CPU, extension built, fp32/bf16/int8/int4). Each int4 matrix is its packed
    rows (uint8, `weight_shape`); its small scales live outside."""
    if device.type != "cpu" or not available or dtype not in ("fp32", "bf16", "int8", "int4"):
        return None
    item = torch.int8 if dtype == "int8" else torch.uint8 if dtype == "int4" else weight_dtype
    shapes = [weight_shape(s, dtype) for s in layer_shapes]
    total = cfg.n_layer * sum(Arena.nbytes(s, item) for s in shapes)
    head = weight_shape((cfg.vocab_size, cfg.n_embd), dtype)
    return Arena(total + Arena.nbytes(head, item))


def weight_shape(shape: tuple[int, int], dtype: str) -> tuple[int, int]:
    """The shape a [out, in] weight takes in memory: int4 packs two weights a byte, by rows."""
    return (shape[0], int4_row_bytes(shape[1])) if dtype == "int4" else shape


class PoolCounts(NamedTuple):
    threads: int
    phases: int
    solo_phases: int  # run by the caller alone, after a stall
    stalls: int       # waits for a descheduled worker


class CpuStep:
    """One model's C step: `step(token, state)` advances the state in place, returns logits."""

    def __init__(self, module: ModuleType, handle: Any, weights: tuple[Any, ...],
                 vocab_size: int, state_shapes: dict[str, tuple[int, ...]]):
        self._module = module
        self.handle = handle
        self._weights = weights  # the C side points into these: hold them (not the model)
        self.vocab_size = vocab_size
        self.state_shapes = state_shapes

    @property
    def kernels(self) -> str:
        """The name of the kernels this step runs, e.g. "AVX2"."""
        query = getattr(self._module, "kernels", None)
        return str(query()) if callable(query) else simd_name()

    @property
    def n_threads(self) -> int:
        return self._module.threads(self.handle)

    def pool(self, stall_ns: int | None = None, solo_ns: int | None = None,
             solo_first_ns: int | None = None) -> PoolCounts:
        """The pool's counts; with arguments, first set how long a wait for a worker counts
        as a stall, and the longest and the first time the caller then runs phases alone
        (`_cpukern.h`; None: unchanged)."""
        given = (stall_ns, solo_ns, solo_first_ns)
        args = () if given == (None, None, None) else tuple(-1 if v is None else v for v in given)
        return PoolCounts(*self._module.pool(self.handle, *args))

    def accepts(self, state: Any) -> bool:
        """Whether `state` is what the C side writes into: contiguous fp32 CPU, right shapes."""
        for name, shape in self.state_shapes.items():
            t = getattr(state, name)
            if t.dtype != torch.float32 or t.device.type != "cpu" or not t.is_contiguous() \
                    or tuple(t.shape) != shape or t.requires_grad:
                return False
        return True

    def step(self, token: int, state: Any) -> torch.Tensor:
        if not self.accepts(state):
            raise ValueError("the C step needs a contiguous fp32 CPU state of the model's shape")
        logits = torch.empty(self.vocab_size)
        self._module.step(self.handle, token,
                          *(getattr(state, name).data_ptr() for name in self.state_shapes),
                          logits.data_ptr())
        return logits
