"""`chatrwkv bench`: the protocol on a fake engine, and whole runs (fresh worker processes) on
tiny checkpoints, next to the official package. Fields are checked for sense, never for speed."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from chatrwkv import bench, bench_worker
from chatrwkv.models import load_model
from chatrwkv.synth import write_checkpoint

TINY_V7 = {"n_layer": 2, "n_embd": 64, "vocab_size": 300, "head_size": 16}
TINY_V4 = {"n_layer": 2, "n_embd": 64, "vocab_size": 300}
FAST = ["--prompt-len", "16", "--decode-tokens", "4", "--runs", "2", "--threads", "1"]


class FakeEngine:
    """Logits that point at (7 * last token + 1) mod V, so the greedy chain is known."""

    label, device, vocab = "fake", "cpu", 50

    def __init__(self) -> None:
        self.resets, self.prefills, self.steps = 0, [], []

    def _logits(self, token: int) -> torch.Tensor:
        return torch.nn.functional.one_hot(torch.tensor((7 * token + 1) % self.vocab),
                                           self.vocab).float()

    def reset(self) -> None:
        self.resets += 1

    def prefill(self, tokens: list[int]) -> torch.Tensor:
        self.prefills.append(list(tokens))
        return self._logits(tokens[-1])

    def step(self, token: int) -> torch.Tensor:
        self.steps.append(token)
        return self._logits(token)


def test_measure_runs_the_protocol_and_feeds_back_the_argmax():
    engine, prompt = FakeEngine(), [3, 9, 4]
    out = bench_worker.measure(engine, prompt, decode_tokens=5, runs=3)
    chain = [(7 * 4 + 1) % 50]
    for _ in range(4):
        chain.append((7 * chain[-1] + 1) % 50)
    assert out["decode_ids"] == chain
    assert engine.resets == 1 + 3                       # warm-up, then every run from zero
    assert engine.prefills == [prompt] * 4
    assert len(engine.steps) == 2 + 3 * 5
    for key in ("prefill_tok_s", "decode_tok_s"):
        s = out[key]
        assert len(s["runs"]) == 3 and all(v > 0 for v in s["runs"])
        assert s["min"] <= s["median"] <= s["max"]


def test_tensor_bytes_counts_each_storage_once():
    @dataclasses.dataclass
    class Holder:
        a: torch.Tensor
        b: tuple

    big = torch.zeros(100, 10)                          # 4000 bytes
    held = Holder(a=big, b=(big[3], big.t(), {"x": torch.zeros(5, dtype=torch.bfloat16)}))
    assert bench_worker.tensor_bytes([held, held]) == 4000 + 10


@pytest.fixture(scope="module")
def v7_path(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("bench") / "tiny7.pth", "7.0", seed=3,
                            **TINY_V7)


def _check_result(r: dict, runs: int = 2, decode_tokens: int = 4) -> None:
    assert "error" not in r, r.get("error")
    assert r["load_s"] > 0
    for key in ("prefill_tok_s", "decode_tok_s"):
        s = r[key]
        assert len(s["runs"]) == runs and s["min"] > 0
        assert s["min"] <= s["median"] <= s["max"]
    assert len(r["decode_ids"]) == decode_tokens
    # A peak is never below what the process held at any earlier moment.
    assert 0 < r["rss_baseline_bytes"] <= r["rss_load_peak_bytes"] <= r["rss_peak_bytes"]


def test_bench_json_next_to_the_official_package(v7_path, capsys):
    rc = bench.main([str(v7_path), "--json", "--reference", "--dtype", "fp32", *FAST])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert report["protocol"]["prompt_len"] == 16 and report["protocol"]["threads"] == 1
    (model,) = report["models"]
    assert model["version"] == "7.0" and model["vocab_size"] == TINY_V7["vocab_size"]
    ours, ref = model["results"]
    assert (ours["label"], ref["label"]) == ("chatrwkv fp32", "official cpu fp32")
    _check_result(ours)
    _check_result(ref)

    state_bytes = load_model(v7_path, device="cpu", dtype="fp32").zero_state().nbytes
    assert ours["state_bytes"] == ref["state_bytes"] == state_bytes
    # fp32 weights: 4 bytes a parameter, less the unused layer-0 value LoRA; the embedding
    # stays as the file holds it (bf16), where the official package converts it to fp32.
    emb = TINY_V7["vocab_size"] * TINY_V7["n_embd"]
    expected = 4 * (model["params"] - emb) + 2 * emb
    assert 0.9 < ours["weight_bytes"] / expected <= 1.0
    assert abs((ours["weight_bytes"] + 2 * emb) / ref["weight_bytes"] - 1) < 0.05

    vs = ours["vs_reference"]
    assert vs["decode_x"] == pytest.approx(ours["decode_tok_s"]["median"]
                                           / ref["decode_tok_s"]["median"])
    assert vs["prefill_x"] == pytest.approx(ours["prefill_tok_s"]["median"]
                                            / ref["prefill_tok_s"]["median"])
    # Same weights, same fp32 arithmetic up to rounding: the same greedy continuation.
    assert vs["greedy_tokens_agree"] == 4
    assert ours["decode_ids"] == ref["decode_ids"]


def test_bench_table_and_a_failing_dtype(tmp_path, capsys):
    path = write_checkpoint(tmp_path / "tiny4.safetensors", "4", seed=1, **TINY_V4)
    rc = bench.main([str(path), "--dtype", "bf16,fp99", "--reference", *FAST])
    out = capsys.readouterr().out
    assert rc == 1                                      # a row failed
    assert "decode tok/s" in out and "chatrwkv bf16" in out
    assert "unknown dtype 'fp99'" in out
    assert "the official package reads only .pth files" in out


def test_missing_model_is_one_line(tmp_path, capsys):
    assert bench.main([str(tmp_path / "nope.pth"), *FAST]) == 1
    assert "no such file" in capsys.readouterr().err


def _benchmark(name: str):
    """benchmarks/NAME.py as a module (the folder is not a package)."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_checkpoints_lists_the_official_sizes(capsys):
    module = _benchmark("make_checkpoints")
    assert module.main(["--list"]) == 0
    listed = capsys.readouterr().out
    assert "v7-0.1b" in listed and "L12 D768" in listed
    with pytest.raises(SystemExit):
        module.main(["v7-9000b"])


def test_decode_bandwidth_ratio_uses_the_bandwidth_measured_around_each_run(v7_path, monkeypatch,
                                                                           capsys):
    # A shared machine's bandwidth drifts within minutes: each run's decode/bw divides by the
    # mean of the measurements just before and just after it, the one after being the next
    # run's before; the first also stands for the machine.
    from chatrwkv import membw

    readings = iter([10e9, 20e9, 40e9, 99e9])
    monkeypatch.setattr(membw, "read_bandwidth", lambda: next(readings))

    def fake_worker(spec, busy=0):
        return {"engine": spec["engine"], "label": spec["label"], "load_s": 0.1,
                "weight_bytes": 1000, "state_bytes": 4096, "rss_baseline_bytes": 10,
                "rss_peak_bytes": 2000, "prefill_tok_s": {"median": 50.0, "min": 50.0,
                "max": 50.0}, "decode_tok_s": {"median": 3.0, "min": 3.0, "max": 3.0},
                "decode_ids": [1], "decode_bytes": 3e9}

    monkeypatch.setattr(bench, "_run_worker", fake_worker)
    report = bench.run_bench(bench.build_parser().parse_args(
        [str(v7_path), "--dtype", "fp32,int8", *FAST]))
    assert report["machine"]["read_bytes_s"] == 10e9
    a, b = report["models"][0]["results"]
    assert (a["read_bytes_s"], b["read_bytes_s"]) == (15e9, 30e9)
    bench.render(report)
    out = " ".join(capsys.readouterr().out.split())
    # 3 tok/s x 3 GB a token over 15 GB/s, then over 30 GB/s
    assert "0.60" in out and "0.30" in out
    assert "memory read 15.0-30.0 GB/s, measured before and after each run" in out


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="no C compiler")
def test_ceiling_program_builds_reads_and_checks_its_int8_activation_sketch(tmp_path):
    """benchmarks/ceiling.c (bench_ceiling.py's kernel-speed probe) compiles against today's
    _cpukern.h, and each kind runs and prints a positive rate; int4q8 first checks its sketch
    kernel against a double-precision sum and fails on a wrong one. Exit 3: no AVX-512 here."""
    ceiling = _benchmark("bench_ceiling")
    exe = tmp_path / "ceiling"
    assert ceiling.build(exe)
    bad = subprocess.run([str(exe), "int4", "1", "1", "1", "100"], capture_output=True, text=True,
                         check=False)
    assert bad.returncode == 2 and "COLS" in bad.stderr
    for kind in ceiling.KINDS:
        run = subprocess.run([str(exe), kind, "1", "2", "2", "256"], capture_output=True,
                             text=True, check=False)
        if run.returncode == 3:
            continue
        assert run.returncode == 0, (kind, run.stderr)
        assert float(run.stdout) > 0, kind
        if kind == "int4q8":
            assert "int4q8 check" in run.stderr
