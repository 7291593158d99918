"""Random-weight checkpoints in the official key layout, for tests, benchmarks and training.

One module per version (`v4.py`, `v5.py`, `v6.py`, `v7.py`) exposes
`make_weights(n_layer, n_embd, vocab_size, head_size, generator, dtype, **variant) -> dict`,
returning tensors with the official names, shapes and (by default) bf16 dtype, with values in the
ranges trained models have, so that logits stay finite and the recurrences stay stable.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

# Official sizes, for benchmarks: name -> (version, dims).
SIZES: dict[str, tuple[str, dict[str, int]]] = {
    "v4-169m": ("4", {"n_layer": 12, "n_embd": 768, "vocab_size": 50277}),
    "v4-430m": ("4", {"n_layer": 24, "n_embd": 1024, "vocab_size": 50277}),
    "v5-0.4b": ("5.2", {"n_layer": 24, "n_embd": 1024, "vocab_size": 65536}),
    "v6-1.6b": ("6.0", {"n_layer": 24, "n_embd": 2048, "vocab_size": 65536}),
    "v7-0.1b": ("7.0", {"n_layer": 12, "n_embd": 768, "vocab_size": 65536}),
    "v7a-0.1b": ("7.0a", {"n_layer": 12, "n_embd": 768, "vocab_size": 65536}),  # DeepEmbed
    "v7-0.4b": ("7.0", {"n_layer": 24, "n_embd": 1024, "vocab_size": 65536}),
    "v7-1.5b": ("7.0", {"n_layer": 24, "n_embd": 2048, "vocab_size": 65536}),
    "v7-2.9b": ("7.0", {"n_layer": 32, "n_embd": 2560, "vocab_size": 65536}),
}

_MODULE_OF = {"4": "v4", "5.0": "v5", "5.1": "v5", "5.2": "v5", "6.0": "v6", "7.0": "v7",
              "7.0a": "v7"}


def make_weights(version: str, *, n_layer: int, n_embd: int, vocab_size: int,
                 head_size: int = 64, seed: int = 0, dtype: torch.dtype = torch.bfloat16,
                 **variant) -> dict[str, torch.Tensor]:
    """A state dict of random weights in the official layout of `version`."""
    if version not in _MODULE_OF:
        raise ValueError(f"unknown version {version!r}; one of {sorted(_MODULE_OF)}")
    module = importlib.import_module(f"{__name__}.{_MODULE_OF[version]}")
    gen = torch.Generator().manual_seed(seed)
    if _MODULE_OF[version] == "v5":
        variant["subversion"] = version
    if version == "7.0a":  # rwkv7a: v7 with DeepEmbed
        variant["deep_embed"] = True
    return module.make_weights(n_layer=n_layer, n_embd=n_embd, vocab_size=vocab_size,
                               head_size=head_size, generator=gen, dtype=dtype, **variant)


def write_checkpoint(path: Path | str, version: str, **kwargs) -> Path:
    """Write `make_weights(version, **kwargs)` to `path` (.pth, or .safetensors by suffix)."""
    path = Path(path)
    weights = make_weights(version, **kwargs)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in weights.items()}, str(path))
    else:
        torch.save(weights, path)
    return path
