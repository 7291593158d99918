"""The official `rwkv` package as a benchmark engine; used only inside a bench worker process.

Nothing in chatrwkv imports `rwkv` at module level: `import_reference` does it on demand, after
setting the switches the package reads at import time (its v7 class exists only with
RWKV_V7_ON=1). Its loader appends '.pth' to the name it is given, so it reads only `.pth` files.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

import torch


def import_reference(deep_embed: bool = False) -> ModuleType:
    """`rwkv.model` with v7 on, TorchScript on (the package's fast CPU mode) and, unless the
    caller's environment asks for them, no custom CUDA kernels (they need a compiler).
    `deep_embed`: its v7 class runs DeepEmbed (rwkv7a) files instead (RWKV_DE_VERSION=1)."""
    os.environ["RWKV_V7_ON"] = "1"
    if deep_embed:
        os.environ["RWKV_DE_VERSION"] = "1"
    os.environ.setdefault("RWKV_JIT_ON", "1")
    os.environ.setdefault("RWKV_CUDA_ON", "0")
    import rwkv.model

    return rwkv.model


def default_strategy(device: str, dtype: str | None) -> str:
    """What chatrwkv is compared with: `cpu fp32` on CPU (its fastest CPU mode: its bf16 is
    10x slower there), the same 16-bit dtype on CUDA."""
    if device == "cpu":
        return "cpu fp32"
    return f"cuda {dtype if dtype in ('fp16', 'bf16', 'fp32') else 'fp16'}"


class ReferenceEngine:
    """The bench engine interface (`reset`, `prefill`, `step`) over the official model."""

    name = "official"

    def __init__(self, path: Path | str, version: str, strategy: str):
        ref = import_reference(deep_embed=version == "7.0a")
        path = Path(path)
        if path.suffix != ".pth":
            raise ValueError(f"{path}: the official package reads only .pth files")
        stem = str(path)[: -len(".pth")]
        if version.startswith("7"):
            self.model = ref.RWKV_x070(stem, strategy)
            self.weights: dict[str, torch.Tensor] = self.model.z
        else:
            # With RWKV_V7_ON=1 the module rebinds `RWKV` to the v7 class; the v4-v6 class is
            # still there as the ScriptModule subclass named RWKV (as in tests/reference.py).
            cls = next(c for c in ref.MyModule.__subclasses__()
                       if c.__module__ == ref.__name__ and c.__name__ == "RWKV")
            self.model = cls(stem, strategy, verbose=False)
            self.weights = self.model.w
        self.strategy = strategy
        self.device = strategy.split()[0]
        self.label = f"official {strategy}"
        self.state: list[torch.Tensor] | None = None

    def reset(self) -> None:
        self.state = None  # the package builds its zero state on the next call

    def prefill(self, tokens: list[int]) -> torch.Tensor:
        logits, self.state = self.model.forward(list(tokens), self.state)
        return logits

    def step(self, token: int) -> torch.Tensor:
        logits, self.state = self.model.forward([token], self.state)
        return logits

    def state_bytes(self) -> int:
        self.reset()
        _, state = self.model.forward([0], None)
        return sum(t.numel() * t.element_size() for t in state)

    def weight_bytes(self) -> int:
        from .bench_worker import tensor_bytes

        return tensor_bytes(self.weights)

    def describe(self) -> str:
        return f"rwkv {_package_version()} ({self.strategy})"

    def engine_path(self) -> str:
        return f"official rwkv package, strategy {self.strategy}"


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rwkv")
    except PackageNotFoundError:
        return "?"
