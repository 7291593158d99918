"""`chatrwkv bench`'s report as rich tables (bench.py plans and runs the measurements)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TextIO


def _num(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def _speed(s: dict[str, Any]) -> str:
    return f"{_num(s['median'])} ({_num(s['min'])}-{_num(s['max'])})"


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f}" if n >= 2**20 else f"{n / 2**20:.2f}"


def render(report: dict[str, Any], file: TextIO | None = None) -> None:
    """The report as rich tables: the measures, then the ratios to the official package."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    file = file or sys.stdout
    console = Console(file=file, highlight=False, width=None if file.isatty() else 150)
    p, m = report["protocol"], report["machine"]
    table = Table(title="chatrwkv bench", caption=(
        f"prefill: {p['prompt_len']} random tokens; decode: {p['decode_tokens']} greedy tokens; "
        f"tok/s as median (min-max) of {p['runs']} run(s) after a warm-up; "
        f"{p['threads']} thread(s); {_busy(p)}{m.get('gpu') or m['cpu']}; torch {m['torch']}; "
        f"{p['measures']}; RSS/w: peak "
        "RSS / weight bytes; own/w: (peak RSS - RSS before loading) / weight bytes"
        + _bandwidth_caption(report)))
    versus = Table(title="chatrwkv / official (speed: higher is better; load, RSS: lower)")
    # RSS/w counts the interpreter and torch (~220 MiB here) too; own/w leaves out what the
    # process held before loading: the engine's own share.
    for name in ("model", "engine", "load s", "weights MiB", "peak RSS MiB", "RSS/w", "own/w",
                 "prefill tok/s", "decode tok/s", "decode/bw", "state KiB"):
        table.add_column(name, justify="left" if name in ("model", "engine") else "right")
    for name in ("model", "engine", "prefill", "decode", "load time", "peak RSS",
                 "greedy tokens agree"):
        versus.add_column(name, justify="left" if name in ("model", "engine") else "right")
    errors: list[str] = []
    paged_note = False
    for model in report["models"]:
        name = f"{Path(model['path']).name} (v{model['version']})"
        for r in model["results"]:
            if "error" in r:
                table.add_row(name, r["label"], Text("failed", style="red"))
                errors.append(f"{name} {r['label']}: {r['error']}")
                continue
            rss = _mib(r["rss_peak_bytes"])
            if r.get("gpu_peak_bytes") is not None:
                rss += f" (GPU {_mib(r['gpu_peak_bytes'])})"
            weights = max(r["weight_bytes"], 1)
            own = r["rss_peak_bytes"] - r["rss_baseline_bytes"]
            engine = Text(r["label"])
            if r.get("engine_path"):
                engine.append(f"\n{r['engine_path']}", style="dim")
            held = _mib(r["weight_bytes"])
            if r.get("paged_bytes"):
                held += f"\n+{_mib(r['paged_bytes'])} paged"
                paged_note = True
            table.add_row(name, engine, f"{r['load_s']:.2f}", held, rss,
                          f"{r['rss_peak_bytes'] / weights:.2f}", f"{own / weights:.2f}",
                          _speed(r["prefill_tok_s"]), _speed(r["decode_tok_s"]),
                          _bandwidth_ratio(r, m), f"{r['state_bytes'] / 1024:.0f}")
            if (vs := r.get("vs_reference")) is not None:
                versus.add_row(name, r["label"], *(_times(vs[k]) for k in (
                    "prefill_x", "decode_x", "load_time_x", "rss_peak_x")),
                    f"{vs['greedy_tokens_agree']}/{len(r['decode_ids'])}")
    if paged_note:
        table.caption += ("; +N paged: tables read a row per token and left in the file's pages "
                          "(DeepEmbed's s_emb), not in the weights RSS/w divides by")
    console.print(table)
    if versus.row_count:
        console.print(versus)
    for line in errors:
        console.print(Text(line, style="red"), soft_wrap=True)


def _busy(p: dict[str, Any]) -> str:
    n = p.get("busy_processes", 0)
    return f"{n} competing busy process(es); " if n else "no competing process; "


def _times(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _bandwidth_caption(report: dict[str, Any]) -> str:
    runs = [r["read_bytes_s"] for m in report["models"] for r in m["results"]
            if r.get("read_bytes_s")]
    if runs:  # measured around each run (bench._Bandwidth)
        lo, hi = min(runs) / 1e9, max(runs) / 1e9
        span = f"{lo:.1f}" if f"{lo:.1f}" == f"{hi:.1f}" else f"{lo:.1f}-{hi:.1f}"
        return (f"; decode/bw: decode tok/s / (memory read {span} GB/s, measured before and "
                "after each run / bytes a token reads)")
    bw = report["machine"].get("read_bytes_s")
    if not bw:
        return ""
    return (f"; decode/bw: decode tok/s / (memory read {bw / 1e9:.1f} GB/s / bytes a token "
            "reads)")


def _bandwidth_ratio(r: dict[str, Any], machine: dict[str, Any]) -> str:
    """Decode speed as a fraction of what the measured bandwidth allows for its bytes: the
    bandwidth measured around this run where there is one, else the machine's."""
    bw, nbytes = r.get("read_bytes_s") or machine.get("read_bytes_s"), r.get("decode_bytes")
    if not bw or not nbytes:
        return "-"
    return f"{r['decode_tok_s']['median'] / (bw / nbytes):.2f}"
