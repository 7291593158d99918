"""The official `rwkv` package as a test oracle (imported only from tests and benchmarks).

Its v7 class exists only when RWKV_V7_ON=1 is set before the import, and its loader appends
'.pth' to the name it is given, so checkpoints for it must be `.pth` files.
"""

from __future__ import annotations

import gc
import os
from pathlib import Path

os.environ["RWKV_V7_ON"] = "1"
os.environ.setdefault("RWKV_JIT_ON", "1")
os.environ["RWKV_CUDA_ON"] = "0"

# With RWKV_V7_ON=1 the module rebinds the name `RWKV` to RWKV_x070; after that only reference
# cycles keep the v4-v6 class alive and the next gc.collect() frees it (then __subclasses__()
# no longer lists it). Hold it here, with the collector paused across the import.
_gc_was_on = gc.isenabled()
gc.disable()
try:
    import rwkv.model as _ref

    _RWKV_V4_TO_V6 = next(c for c in _ref.MyModule.__subclasses__()
                          if c.__module__ == _ref.__name__ and c.__name__ == "RWKV")
finally:
    if _gc_was_on:
        gc.enable()


def load_reference(path: Path | str, version: str, strategy: str = "cpu fp32"):
    """The reference model for a `.pth` checkpoint of the given version string."""
    path = Path(path)
    assert path.suffix == ".pth", "the reference loader only reads .pth files"
    stem = str(path)[: -len(".pth")]
    if version.startswith("7"):
        return _ref.RWKV_x070(stem, strategy)
    return _RWKV_V4_TO_V6(stem, strategy, verbose=False)


def reference_world_tokenizer(vocab_path: Path | str):
    """The official trie tokenizer (`rwkv.rwkv_tokenizer.TRIE_TOKENIZER`) for a World vocab file."""
    from rwkv.rwkv_tokenizer import TRIE_TOKENIZER

    return TRIE_TOKENIZER(str(vocab_path))


def greedy_both(model, ref, prompt: list[int], n: int = 32) -> tuple[list[int], list[int]]:
    """Greedy continuations of `prompt`, token by token, by our model and by the reference."""
    import torch

    ours: list[int] = []
    theirs: list[int] = []
    with torch.inference_mode():
        state = model.zero_state()
        logits = model.forward(prompt, state)
        ref_logits, ref_state = ref.forward(prompt, None)
        for _ in range(n):
            ours.append(int(logits.argmax()))
            theirs.append(int(ref_logits.argmax()))
            logits = model.forward([ours[-1]], state)
            ref_logits, ref_state = ref.forward([theirs[-1]], ref_state)
    return ours, theirs
