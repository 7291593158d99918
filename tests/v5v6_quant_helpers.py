"""What the int8 and int4 tests of RWKV v5 and v6 share: the tiny cases, the prompt, logits in
either path, and the dequantized twin (the same model with every quantized matrix replaced by
the fp32 matrix it stands for)."""

from __future__ import annotations

import copy
import dataclasses

import torch

PROMPT = torch.randint(0, 500, (24,), generator=torch.Generator().manual_seed(7)).tolist()
CASES = [
    ("5.2", {"n_layer": 2, "n_embd": 128, "vocab_size": 500, "head_size": 32}),
    ("5.1", {"n_layer": 2, "n_embd": 64, "vocab_size": 500, "head_size": 32}),
    ("5.0", {"n_layer": 2, "n_embd": 64, "vocab_size": 500, "head_size": 32}),
    ("6.0", {"n_layer": 2, "n_embd": 128, "vocab_size": 500, "head_size": 32}),
]


def logits(model, tokens, one_by_one):
    state = model.zero_state()
    with torch.inference_mode():
        if one_by_one:
            return torch.stack([model.forward([t], state) for t in tokens])
        return model.forward(tokens, state, full_output=True)


def dequantized_twin(model, kind: type):
    """The same model object with each `kind` matrix replaced by its fp32 dequantization."""
    def deq(x):
        return x.dequantize() if isinstance(x, kind) else x

    twin = copy.copy(model)
    if hasattr(model, "blocks"):  # v5: frozen dataclasses
        twin.blocks = tuple(dataclasses.replace(b, **{f.name: deq(getattr(b, f.name))
                                                      for f in dataclasses.fields(b)})
                            for b in model.blocks)
    else:  # v6: (att, ffn, halve_after) of NamedTuples
        twin.layers = [(att._replace(**{k: deq(v) for k, v in att._asdict().items()}),
                        ffn._replace(**{k: deq(v) for k, v in ffn._asdict().items()}), h)
                       for att, ffn, h in model.layers]
    twin.head = deq(model.head)
    # A shallow copy would share the model's C one-token step (built at its first token), which
    # points at the quantized weights: the twin runs torch on its dequantized ones instead.
    twin._c_step_built, twin._c_step = True, None
    return twin


def quantized_matrices(model, kind: type) -> list:
    found = [model.head]
    if hasattr(model, "blocks"):
        found += [getattr(b, f.name) for b in model.blocks for f in dataclasses.fields(b)]
    else:
        found += [v for att, ffn, _ in model.layers for v in (*att, *ffn)]
    return [m for m in found if isinstance(m, kind)]
