"""What the tests of the C one-token steps (test_v4_cpu.py, test_v7_cpu.py) share."""

from __future__ import annotations

from types import ModuleType

import pytest
import torch

ISA_LEVELS = {"scalar": 0, "avx2": 1, "avx512": 2}  # _cpukern.h's CK_ISA_*


def simd_fixture(glue: ModuleType):
    """A fixture running a test with each instruction set's kernels of `glue` that this CPU
    can run (AVX-512, AVX2) and with the scalar twins."""

    @pytest.fixture(params=sorted(ISA_LEVELS.values()), ids=sorted(ISA_LEVELS, key=ISA_LEVELS.get))
    def simd(request):
        used = glue.use_simd(request.param)
        if used != request.param:
            pytest.skip(f"this CPU cannot run level {request.param} kernels")
        yield used
        glue.use_simd(True)

    return simd


def steps(fn, model, tokens):
    """Logits of every step and the final state, running `fn(token, state)` one by one."""
    state = model.zero_state()
    out = []
    with torch.inference_mode():
        for t in tokens:
            out.append(fn(t, state).clone())
    return torch.stack(out), state


def fast(model):
    """The public one-token path, which runs the C step where it can."""
    return lambda token, state: model.forward([token], state)


def dev(a, b) -> float:
    return (a - b).abs().max().item()


def compare(fast_fn, twin_fn, fast_model, twin_model, tokens, tol):
    """Logits and every state field of the two paths agree within `tol` (relative)."""
    logits_c, state_c = steps(fast_fn, fast_model, tokens)
    logits_t, state_t = steps(twin_fn, twin_model, tokens)
    assert dev(logits_c, logits_t) < tol * max(logits_t.abs().max().item(), 1.0)
    for name, t in state_t.tensors().items():
        assert dev(getattr(state_c, name), t) < tol * max(t.abs().max().item(), 1.0), name
