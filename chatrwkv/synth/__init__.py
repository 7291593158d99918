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
    # RWKV-5 World 0.1B / 0.4B (x052: ffn 3.5 C, as RWKV-LM's x052 trainer); v6 World was
    # published from 1.6B up, so its small sizes here take the same L12 D768 / L24 D1024 shapes
    # (synth.v6's official ffn 3.5 C and D_mix / D_decay 32 / 64).
    "v5-0.1b": ("5.2", {"n_layer": 12, "n_embd": 768, "vocab_size": 65536, "ffn_dim": 2688}),
    "v5-0.4b": ("5.2", {"n_layer": 24, "n_embd": 1024, "vocab_size": 65536, "ffn_dim": 3584}),
    "v6-0.1b": ("6.0", {"n_layer": 12, "n_embd": 768, "vocab_size": 65536}),
    "v6-0.4b": ("6.0", {"n_layer": 24, "n_embd": 1024, "vocab_size": 65536}),
    "v6-1.6b": ("6.0", {"n_layer": 24, "n_embd": 2048, "vocab_size": 65536}),
    "v7-0.1b": ("7.0", {"n_layer": 12, "n_embd": 768, "vocab_size": 65536}),
    "v7a-0.1b": ("7.0a", {"n_layer": 12, "n_embd": 768, "vocab_size": 65536}),  # DeepEmbed
    "v7-0.4b": ("7.0", {"n_layer": 24, "n_embd": 1024, "vocab_size": 65536}),
    "v7-1.5b": ("7.0", {"n_layer": 24, "n_embd": 2048, "vocab_size": 65536}),
    "v7-2.9b": ("7.0", {"n_layer": 32, "n_embd": 2560, "vocab_size": 65536}),
    # The G1 7.2B and 13.3B shapes (L32 / L61, D4096): 6.4B / 12.3B in the blocks plus the
    # 0.54B of embedding and head, as the published parameter counts.
    "v7-7.2b": ("7.0", {"n_layer": 32, "n_embd": 4096, "vocab_size": 65536}),
    "v7-13.3b": ("7.0", {"n_layer": 61, "n_embd": 4096, "vocab_size": 65536}),
}
STREAMED_VERSIONS = ("7.0",)  # versions whose make_weights takes a sink (stream_checkpoint)

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


class _Converting(dict):
    """A sink that keeps each tensor already in the file's dtype (never the fp32 model)."""

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype

    def __setitem__(self, key: str, value: torch.Tensor) -> None:
        super().__setitem__(key, value.to(self.dtype).contiguous())


class _Streaming:
    """A sink that writes each tensor to a safetensors file as it comes (stwriter.py)."""

    def __init__(self, writer, dtype: torch.dtype):
        self.writer, self.dtype = writer, dtype

    def __setitem__(self, key: str, value: torch.Tensor) -> None:
        self.writer.add(key, value.to(self.dtype))


def stream_checkpoint(path: Path | str, version: str, *, dtype: torch.dtype = torch.bfloat16,
                      seed: int = 0, **dims) -> Path:
    """`write_checkpoint` for models too big to hold: tensor by tensor, each made in fp32,
    cast and written (.safetensors) or kept cast (.pth, which torch.save writes whole: up to
    the bf16 model in memory). Same values as `make_weights(version, seed=seed, ...)`."""
    from ..stwriter import SafetensorsWriter, header_room

    if version not in STREAMED_VERSIONS:
        raise ValueError(f"streamed checkpoints are v7 only, not {version!r}")
    path = Path(path)
    module = importlib.import_module(f"{__name__}.{_MODULE_OF[version]}")
    gen = torch.Generator().manual_seed(seed)
    dims = {"head_size": 64, **dims}
    if path.suffix != ".safetensors":
        sink = _Converting(dtype)
        module.make_weights(generator=gen, dtype=dtype, sink=sink, **dims)
        torch.save(dict(sink), path)
        return path
    tmp = path.with_name(path.name + ".partial")
    writer = SafetensorsWriter(tmp, reserve=header_room(64 * (dims["n_layer"] + 1)),
                               align=1)
    try:
        module.make_weights(generator=gen, dtype=dtype, sink=_Streaming(writer, dtype), **dims)
        writer.close({"format": "pt"})
    except BaseException:
        writer.abort()
        raise
    tmp.replace(path)
    return path
