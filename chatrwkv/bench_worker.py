"""The bench worker: one engine on one model, in a process of its own.

    python -m chatrwkv.bench_worker SPEC.json RESULT.json

The protocol (the same for every engine): load the checkpoint (timed); one untimed warm-up (the
whole prompt, then two tokens); then `runs` times: from the zero state, prefill the prompt
(timed), then `decode_tokens` greedy steps feeding back the argmax (timed). Speeds are the median
of the runs with their min-max. Peak memory is this process's VmHWM: the `getrusage` maximum
survives `exec` and would report the size of the parent that started the worker.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from .errors import ChatRWKVError


class Engine(Protocol):
    """What the protocol drives: chatrwkv's model or the official package."""

    label: str
    device: str

    def reset(self) -> None: ...                               # back to the zero state
    def prefill(self, tokens: list[int]) -> torch.Tensor: ...  # last logits
    def step(self, token: int) -> torch.Tensor: ...            # logits after one more token
    def state_bytes(self) -> int: ...
    def weight_bytes(self) -> int: ...
    def describe(self) -> str: ...
    def engine_path(self) -> str: ...                          # which code runs the steps


class ChatEngine:
    """chatrwkv's model behind the engine interface; the state lives here between calls."""

    def __init__(self, path: str, device: str, dtype: str | None, chunk_len: int | None):
        from .models import load_model

        extra = {} if chunk_len is None else {"chunk_len": chunk_len}
        self.model = load_model(path, device=device, dtype=dtype, **extra)
        self.label = f"chatrwkv {self.model.dtype_name}"
        self.device = self.model.device.type
        self.state = self.model.zero_state()

    def reset(self) -> None:
        self.state = self.model.zero_state()

    def prefill(self, tokens: list[int]) -> torch.Tensor:
        return self.model.forward(tokens, self.state)

    def step(self, token: int) -> torch.Tensor:
        return self.model.forward([token], self.state)

    def state_bytes(self) -> int:
        return self.model.zero_state().nbytes

    def weight_bytes(self) -> int:
        """Bytes of the weights the model holds: not the tables it leaves in the file's pages
        and hands back as it reads them (DeepEmbed's s_emb, `paged_bytes`), which would make
        peak RSS / weights look several times better than it is."""
        return tensor_bytes(self.model) - self.paged_bytes()

    def paged_bytes(self) -> int:
        return tensor_bytes(self.model.paged_tables())

    def decode_bytes(self) -> int:
        """Bytes one decode step reads: every weight tensor but the embedding tables (the
        embedding, DeepEmbed's per-layer s_emb), and one row of each. fbgemm's packed int8
        copies count only where no C step runs (the extension not built): a C step reads the
        plain rows, and only the sequence path the packed copy."""
        total = tensor_bytes(self.model, opaque=not self.model.has_c_step)
        for table in self.model.embedding_tables():
            total += table[0].numel() * table.element_size() - tensor_bytes(table)
        return total

    def describe(self) -> str:
        return self.model.describe()

    def engine_path(self) -> str:
        return self.model.engine_path


def tensor_bytes(root: object, opaque: bool = True) -> int:
    """Bytes of the tensors reachable from `root` through containers, dataclasses and chatrwkv
    objects: what a loaded model holds, in whatever dtype. Overlapping tensors (views of one
    storage, matrices carved from one arena) count once, and only the bytes they cover."""
    spans: list[tuple[int, int]] = []
    seen: set[int] = set()
    total, todo = 0, [root]
    while todo:
        obj = todo.pop()
        if isinstance(obj, torch.Tensor):
            if obj.numel():
                start = obj.data_ptr()
                spans.append((start, start + obj.numel() * obj.element_size()))
            continue
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, dict):
            todo.extend(obj.values())
        elif isinstance(obj, (list, tuple)):
            todo.extend(obj)
        elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            todo.extend(getattr(obj, f.name) for f in dataclasses.fields(obj))
        elif type(obj).__module__.startswith("chatrwkv") and hasattr(obj, "__dict__"):
            todo.extend(vars(obj).values())
            # Weights held outside tensors (fbgemm's packed int8 matrices) report their size.
            total += getattr(obj, "opaque_nbytes", 0) if opaque else 0
    end = 0
    for lo, hi in sorted(spans):  # the union of the byte ranges
        total += max(0, hi - max(lo, end))
        end = max(end, hi)
    return total


def sync(device: str) -> None:
    """Wait for queued GPU work, so that a clock read after it measures it."""
    if device == "cuda":
        torch.cuda.synchronize()


def _argmax(logits: torch.Tensor) -> int:
    return int(torch.argmax(logits))


def measure(engine: Engine, prompt: list[int], decode_tokens: int, runs: int) -> dict[str, Any]:
    """The protocol of the module docstring; speeds in tokens per second."""
    engine.reset()
    token = _argmax(engine.prefill(prompt))
    for _ in range(2):
        token = _argmax(engine.step(token))
    prefill, decode, ids = [], [], []
    for _ in range(runs):
        engine.reset()
        sync(engine.device)
        t0 = time.perf_counter()
        logits = engine.prefill(prompt)
        sync(engine.device)
        t1 = time.perf_counter()
        token, ids = _argmax(logits), []
        for _ in range(decode_tokens):
            ids.append(token)
            token = _argmax(engine.step(token))
        t2 = time.perf_counter()  # argmax reads the logits: the GPU has finished
        prefill.append(len(prompt) / (t1 - t0))
        decode.append(decode_tokens / (t2 - t1))
    return {"prefill_tok_s": _stats(prefill), "decode_tok_s": _stats(decode), "decode_ids": ids}


def _stats(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": values}


def _memory(field: str) -> int:
    """VmHWM (peak) or VmRSS (now) of this process in bytes; on systems without /proc, the
    getrusage peak (kB on Linux and BSD, bytes on macOS)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _open_engine(spec: dict[str, Any]) -> Callable[[], Engine]:
    """A zero-argument loader for the spec's engine; imports happen here, before the clock."""
    if spec["engine"] == "official":
        from .bench_reference import ReferenceEngine, import_reference

        import_reference(deep_embed=spec["version"] == "7.0a")
        return lambda: ReferenceEngine(spec["model"], spec["version"], spec["strategy"])
    from . import models  # noqa: F401  (imported here, outside the load time)

    return lambda: ChatEngine(spec["model"], spec["device"], spec["dtype"], spec["chunk_len"])


def worker_main(spec_path: Path, out_path: Path) -> int:
    """Run the protocol for one spec and write the result as JSON to `out_path`."""
    spec = json.loads(spec_path.read_text())
    torch.set_num_threads(spec["threads"])
    load = _open_engine(spec)
    baseline = _memory("VmRSS")
    t0 = time.perf_counter()
    try:
        engine = load()
    except ChatRWKVError as e:
        out_path.write_text(json.dumps({"error": str(e)}))
        return 1
    sync(engine.device)
    load_s = time.perf_counter() - t0
    load_peak = _memory("VmHWM")
    with torch.inference_mode():
        result = measure(engine, spec["prompt"], spec["decode_tokens"], spec["runs"])
        state_bytes = engine.state_bytes()
    out = {"engine": spec["engine"], "label": engine.label, "describe": engine.describe(),
           "engine_path": engine.engine_path(), "package": str(Path(__file__).resolve().parent),
           "load_s": load_s, "weight_bytes": engine.weight_bytes(), "state_bytes": state_bytes,
           "rss_baseline_bytes": baseline, "rss_load_peak_bytes": load_peak,
           "rss_peak_bytes": _memory("VmHWM"), **result}
    if hasattr(engine, "decode_bytes"):
        out["decode_bytes"] = engine.decode_bytes()
    if hasattr(engine, "paged_bytes") and (paged := engine.paged_bytes()):
        out["paged_bytes"] = paged
    if engine.device == "cuda":
        out["gpu_peak_bytes"] = torch.cuda.max_memory_allocated()
    out_path.write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(Path(sys.argv[1]), Path(sys.argv[2])))
