"""What the tests of the C one-token steps (test_v4_cpu.py, test_v7_cpu.py) share."""

from __future__ import annotations

from types import ModuleType

import pytest
import torch

ISA_LEVELS = {"scalar": 0, "avx2": 1, "avx512": 2, "vnni": 3}  # _cpukern.h's CK_ISA_*


def simd_fixture(glue: ModuleType):
    """A fixture running a test with each instruction set's kernels of `glue` that this CPU
    can run (AVX-512 VNNI, AVX-512, AVX2) and with the scalar twins."""

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


def check_bf16_loras(path, dtype: str, loras, upcast, tol: float) -> None:
    """A model's LoRA matrices (`loras(model)`: the tensors) stay bf16 on the CPU next to
    `dtype` weights, and every path widens them: the logits and states equal those of a twin
    whose LoRAs `upcast(twin)` replaced by fp32 copies, through the sequence path, one token at
    a time (the C step, or torch without it) and the torch one-token step. Rounding the
    activations to bf16 instead would move the logits by ~1e-3."""
    from chatrwkv.models import load_model

    model = load_model(path, device="cpu", dtype=dtype)
    twin = load_model(path, device="cpu", dtype=dtype)
    assert all(t.dtype == torch.bfloat16 for t in loras(model))
    upcast(twin)
    assert all(t.dtype == torch.float32 for t in loras(twin))
    tokens = [5, 17, 201, 42, 0, 299, 7, 8]
    with torch.inference_mode():
        for one_by_one in (False, True):
            runs = []
            for m in (model, twin):
                state = m.zero_state()
                if one_by_one:
                    for t in tokens:
                        logits = m.forward([t], state)
                else:
                    logits = m.forward(tokens, state)
                runs.append((logits, state))
            (a, sa), (b, sb) = runs
            assert dev(a, b) < tol
            assert max(dev(x, y) for x, y in zip(sa.tensors().values(),
                                                 sb.tensors().values())) < tol
        a = model._forward_one_torch(tokens[0], model.zero_state())
        b = twin._forward_one_torch(tokens[0], twin.zero_state())
    assert dev(a, b) < tol
