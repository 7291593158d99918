"""`chatrwkv bench MODEL...`: load time, peak memory, prefill and decode speed, state size.

This module plans the runs and prints the report. Every measurement runs in a fresh worker
process (`chatrwkv.bench_worker`), one per model, dtype and engine, so that the memory peak and
the warm caches of one cannot leak into the next; the worker documents the protocol, which is
the same for chatrwkv and for the official `rwkv` package (`--reference`).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from .bench_table import render
from .cli import quiet_openmp
from .errors import ChatRWKVError

_PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def _default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be at least 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="chatrwkv bench", description="Speed and memory of chatrwkv on RWKV checkpoints "
        "(each measured in a fresh process), optionally next to the official rwkv package.")
    ap.add_argument("models", nargs="+", metavar="MODEL", help="checkpoint file(s)")
    ap.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--dtype", default=None, metavar="D[,D...]",
                    help="weight precision(s), comma-separated, e.g. fp32,bf16 (default: the "
                    "loader's default for the device)")
    ap.add_argument("--chunk-len", type=_positive, metavar="N",
                    help="prefill chunk length (default: the loader's)")
    ap.add_argument("--prompt-len", type=_positive, default=512, metavar="N",
                    help="random prompt tokens for the prefill (default 512)")
    ap.add_argument("--decode-tokens", type=_positive, default=64, metavar="N",
                    help="greedy tokens decoded one at a time (default 64)")
    ap.add_argument("--runs", type=_positive, default=5, metavar="N",
                    help="timed runs after the warm-up; speeds are their median (default 5)")
    ap.add_argument("--threads", type=_positive, default=_default_threads(), metavar="N",
                    help="torch CPU threads (default: all usable cores)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random prompt")
    ap.add_argument("--busy", type=_non_negative, default=0, metavar="N",
                    help="run N CPU-bound busy loops (other processes) during each measurement: "
                    "a machine that is not quiet, like a laptop with a browser open (default 0)")
    ap.add_argument("--reference", action="store_true",
                    help="also run the official rwkv package on the same file (.pth only)")
    ap.add_argument("--reference-strategy", metavar="S",
                    help="its strategy (default: 'cpu fp32' on CPU, 'cuda fp16' on CUDA)")
    ap.add_argument("--json", action="store_true", help="print machine-readable JSON")
    return ap


# --- parent: plan, run workers, compare ---------------------------------------------------------

# `python -m chatrwkv.bench_worker` would put the current directory first on sys.path, so a
# source tree there (a clone whose C extension is not built, say) would shadow this package and
# be measured instead. The worker starts from a bootstrap that puts this package's root first
# and drops the current directory; it reports the package it ran, and the parent checks it.
_WORKER_BOOT = ("import os, runpy, sys; root = sys.argv.pop(1); "
                "sys.path[:] = [root] + [p for p in sys.path if p not in ('', os.getcwd())]; "
                "runpy.run_module('chatrwkv.bench_worker', run_name='__main__', alter_sys=True)")


def package_dir() -> str:
    """The directory of the chatrwkv package this process runs."""
    return str(Path(__file__).resolve().parent)


def worker_command(spec_path: Path, out_path: Path) -> list[str]:
    return [sys.executable, "-c", _WORKER_BOOT, str(_PACKAGE_ROOT), str(spec_path),
            str(out_path)]


BUSY_LOOP = "while True: pass"


@contextlib.contextmanager
def competing(n: int) -> Iterator[list[subprocess.Popen]]:
    """`n` CPU-bound processes running for the duration of the block."""
    procs = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP], stdin=subprocess.DEVNULL)
             for _ in range(n)]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def _run_worker(spec: dict[str, Any], busy: int = 0) -> dict[str, Any]:
    """Run one engine on one model in a fresh process; an error becomes {"error": line}."""
    with tempfile.TemporaryDirectory(prefix="chatrwkv-bench-") as tmp, competing(busy):
        spec_path, out_path = Path(tmp, "spec.json"), Path(tmp, "result.json")
        spec_path.write_text(json.dumps(spec))
        env = dict(os.environ)
        quiet_openmp(env)  # as the chat runs
        proc = subprocess.run(worker_command(spec_path, out_path), check=False,
                              capture_output=True, text=True, env=env)
        if out_path.exists():
            result = json.loads(out_path.read_text())
        else:
            lines = proc.stderr.strip().splitlines()
            result = {"error": lines[-1] if lines else f"worker exit status {proc.returncode}"}
    if "error" not in result and result.get("package") != package_dir():
        result = {"error": f"the worker ran chatrwkv from {result.get('package')}, not from "
                  f"{package_dir()}: its figures are not this install's"}
    result.setdefault("engine", spec["engine"])
    result.setdefault("label", spec["label"])
    return result


def _ratio(ours: float, theirs: float) -> float | None:
    return ours / theirs if theirs else None


def _compare(ours: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    """chatrwkv / official for each measure (> 1 is faster for speeds, bigger for the rest)."""
    agree = 0
    for a, b in zip(ours["decode_ids"], ref["decode_ids"]):
        if a != b:
            break
        agree += 1
    return {
        "prefill_x": _ratio(ours["prefill_tok_s"]["median"], ref["prefill_tok_s"]["median"]),
        "decode_x": _ratio(ours["decode_tok_s"]["median"], ref["decode_tok_s"]["median"]),
        "load_time_x": _ratio(ours["load_s"], ref["load_s"]),
        "rss_peak_x": _ratio(ours["rss_peak_bytes"], ref["rss_peak_bytes"]),
        "greedy_tokens_agree": agree,
    }


def _model_facts(path: Path) -> dict[str, Any]:
    """Version and vocabulary from the checkpoint (memory-mapped, so cheap)."""
    from .checkpoint import Checkpoint
    from .models import detect_version

    ckpt = Checkpoint.open(path)
    _, version = detect_version(ckpt)
    return {"path": str(path), "version": version, "file_bytes": path.stat().st_size,
            "vocab_size": ckpt.shape("emb.weight")[0],
            "params": sum(t.numel() for t in ckpt.tensors.values())}


def _resolve(spec: str) -> Path:
    path = Path(spec).expanduser()
    if path.exists():
        return path
    from .modelstore import resolve_model

    return resolve_model(spec)


def _machine(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                       cpu)
    except OSError:
        pass
    info = {"cpu": cpu, "cores": _default_threads(), "torch": torch.__version__,
            "python": platform.python_version()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


MEASURES = ("engine speed: forward passes with a greedy argmax, no sampling or detokenizing; "
            "the chat's stats line is end to end (time to first token, and decode over wall "
            "time with sampling, detokenizing and printing)")


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Measure every (model, dtype), plus the official package per model; return the report."""
    from .models.base import resolve_device

    device = resolve_device(args.device)
    dtypes = [d.strip() for d in args.dtype.split(",") if d.strip()] if args.dtype else [None]
    strategy = args.reference_strategy
    if strategy is None:
        from .bench_reference import default_strategy

        strategy = default_strategy(device.type, dtypes[0])
    protocol = {"prompt_len": args.prompt_len, "decode_tokens": args.decode_tokens,
                "runs": args.runs, "threads": args.threads, "seed": args.seed,
                "busy_processes": args.busy,
                "warmup": "one untimed prefill of the prompt and two decode steps",
                "measures": MEASURES}
    report: dict[str, Any] = {"machine": _machine(device), "protocol": protocol, "models": []}
    bandwidth = _Bandwidth(args.threads) if device.type == "cpu" else None
    if bandwidth:
        report["machine"]["read_bytes_s"] = bandwidth.now()
    for spec in args.models:
        facts = _model_facts(_resolve(spec))
        gen = torch.Generator().manual_seed(args.seed)
        prompt = torch.randint(0, facts["vocab_size"], (args.prompt_len,), generator=gen).tolist()
        base = {"model": facts["path"], "version": facts["version"], "prompt": prompt,
                "decode_tokens": args.decode_tokens, "runs": args.runs, "threads": args.threads}
        results = []
        for dtype in dtypes:
            _progress(f"chatrwkv {dtype or '(default dtype)'} on {facts['path']}")
            spec = {**base, "engine": "chatrwkv", "device": str(device), "dtype": dtype,
                    "chunk_len": args.chunk_len, "label": f"chatrwkv {dtype or 'default'}"}
            run = functools.partial(_run_worker, spec, args.busy)
            results.append(bandwidth.around(run) if bandwidth else run())
        if args.reference:
            _progress(f"official {strategy} on {facts['path']}")
            ref_spec = {**base, "engine": "official", "strategy": strategy,
                        "label": f"official {strategy}"}
            if Path(facts["path"]).suffix == ".pth":
                ref = _run_worker(ref_spec, args.busy)
            else:  # its loader appends '.pth' to the name
                ref = {"engine": "official", "label": ref_spec["label"],
                       "error": "the official package reads only .pth files"}
            results.append(ref)
            for r in results[:-1]:
                if "error" not in r and "error" not in ref:
                    r["vs_reference"] = _compare(r, ref)
        report["models"].append({**facts, "results": results})
    return report


class _Bandwidth:
    """The machine's read bandwidth, measured before and after each engine's run: a shared
    machine's speed drifts by tens of percent within minutes, so one figure taken at the start
    made the decode/bw ratio of later runs as noisy as the drift. A run's ratio uses the mean
    of the two measurements around it (the one after a run is the next run's before)."""

    def __init__(self, threads: int):
        self.threads = threads
        self.last: float | None = None

    def now(self) -> float:
        from .membw import read_bandwidth

        _progress("memory read bandwidth")
        torch.set_num_threads(self.threads)
        self.last = read_bandwidth()
        return self.last

    def around(self, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        before = self.last if self.last is not None else self.now()
        result = run()
        result["read_bytes_s"] = (before + self.now()) / 2
        return result


def _progress(text: str) -> None:
    print(f"bench: {text} ...", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        report = run_bench(args)
    except ChatRWKVError as e:
        print(f"chatrwkv: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        render(report)
    failed = any("error" in r for m in report["models"] for r in m["results"])
    return 1 if failed else 0

if __name__ == "__main__":
    sys.exit(main())
