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
    # With RWKV_V7_ON=1 the module rebinds the name `RWKV` to RWKV_x070; the v4-v6 class is
    # still there as a ScriptModule subclass named RWKV.
    v4_to_v6 = next(c for c in _ref.MyModule.__subclasses__()
                    if c.__module__ == _ref.__name__ and c.__name__ == "RWKV")
    return v4_to_v6(stem, strategy, verbose=False)
