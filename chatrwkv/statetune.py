"""State-tuning files: a trained initial WKV state, mounted as the conversation's start.

A file holds `blocks.N.att.time_state` of shape [H, N, N] for every layer, as a `.pth` (read
with `weights_only=True`) or a safetensors file (the `.state` form). The token-shift vectors
are not tuned and start at zero.

Orientation. RWKV-LM / RWKV-PEFT state tuning trains `time_state` in the CUDA kernel's layout,
[H, N_v, N_k] (the kernel's state row is indexed by the value channel).
- v5 / v6: the official `rwkv` package keeps the WKV state as [H, N_k, N_v], and ChatRWKV v2
  (`chat.py`, `state_raw[f'blocks.{i}.att.time_state'].transpose(1, 2)`) and the RWKV-PEFT demos
  mount it transposed; so do we.
- v7: the package (and BlinkDL's v7 demo, `state @ ab + v @ k^T`) keeps [H, N_v, N_k], the
  kernel's own layout, so the tensor is used as it is (no transpose).
Our WKVState keeps each version's reference orientation, so the same rule applies here.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from .errors import StateFileError, first_line
from .safeio import FileRefused, check_regular
from .state import State

KEY = re.compile(r"blocks\.(\d{1,6})\.att\.time_state")
TRANSPOSED_VERSIONS = ("5", "6")  # version prefixes whose reference state is [H, N_k, N_v]


def read_time_states(path: Path | str) -> dict[int, torch.Tensor]:
    """Layer -> time_state tensor, from a .pth or safetensors file."""
    try:
        path = check_regular(path, "state file")
    except FileRefused as e:
        raise StateFileError(str(e)) from None
    raw: object
    try:
        with open(path, "rb") as f:
            magic = f.read(8)
        if magic[:2] == b"PK" or magic[:1] == b"\x80":  # zip (torch.save) or legacy pickle
            raw = torch.load(path, map_location="cpu", weights_only=True)
        else:
            from safetensors.torch import load_file
            raw = load_file(str(path))
    except pickle.UnpicklingError:
        raise StateFileError(f"{path}: not a readable state-tuning file: it holds Python "
                             "objects or code, not only tensors") from None
    except Exception as e:  # noqa: BLE001 - untrusted bytes: a flipped byte surfaces as any
        # of KeyError, IndexError, TypeError, AttributeError, AssertionError, ...
        raise StateFileError(f"{path}: not a readable state-tuning file "
                             f"({type(e).__name__}: {first_line(e, 100)})") from None
    if not isinstance(raw, dict):
        raise StateFileError(f"{path}: not a state-tuning file (no tensor dict)")
    out: dict[int, torch.Tensor] = {}
    for key, value in raw.items():
        m = KEY.fullmatch(str(key))
        if m and isinstance(value, torch.Tensor):
            out[int(m.group(1))] = value
    if not out:
        raise StateFileError(f"{path}: has no blocks.N.att.time_state tensors")
    return out


def mount_state(path: Path | str, model) -> State:
    """The model's zero state with each layer's WKV matrix set from a state-tuning file."""
    config = model.config
    version = str(config.version)
    state = model.zero_state()
    if not hasattr(state, "wkv") or version.startswith("4"):
        raise StateFileError(f"state-tuning files need an RWKV v5, v6 or v7 model "
                             f"(this one is v{version})")
    layers = read_time_states(path)
    name = Path(path).name
    expected = list(range(config.n_layer))
    if sorted(layers) != expected:
        raise StateFileError(f"{name}: has time_state for {len(layers)} layers "
                             f"(max index {max(layers)}), the model has {config.n_layer}")
    want = (config.n_head, config.head_size, config.head_size)
    for i in expected:
        t = layers[i].squeeze(0) if layers[i].dim() == 4 else layers[i]
        if tuple(t.shape) != want:
            raise StateFileError(f"{name}: layer {i} time_state is {list(t.shape)}, the model "
                                 f"needs [heads {want[0]}, head size {want[1]}, {want[2]}]")
        if not t.is_floating_point() or not bool(torch.isfinite(t).all()):
            raise StateFileError(f"{name}: layer {i} time_state holds NaN, infinite or "
                                 "non-float values")
        if version.startswith(TRANSPOSED_VERSIONS):
            t = t.transpose(1, 2)
        state.wkv[i].copy_(t.float())
    return state
