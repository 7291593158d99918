"""The official `rwkv` package as a test oracle (imported only from tests and benchmarks).

Its v7 class exists only when RWKV_V7_ON=1 is set before the import, and its loader appends
'.pth' to the name it is given, so checkpoints for it must be `.pth` files.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ["RWKV_V7_ON"] = "1"
os.environ.setdefault("RWKV_JIT_ON", "1")
os.environ["RWKV_CUDA_ON"] = "0"

import rwkv.model as _ref  # noqa: E402


def load_reference(path: Path | str, version: str, strategy: str = "cpu fp32"):
    """The reference model for a `.pth` checkpoint of the given version string."""
    path = Path(path)
    assert path.suffix == ".pth", "the reference loader only reads .pth files"
    stem = str(path)[: -len(".pth")]
    if version.startswith("7"):
        return _ref.RWKV_x070(stem, strategy)
    return _ref.RWKV(stem, strategy, verbose=False)
