"""Which engine path runs, and the threads around it: the model names its path, the bench worker
runs the parent's package (not the current directory's), the bench can run a competing process,
the chat's entry point quiets OpenMP before torch loads, and the C pool's stall fallback (the
caller alone after waiting on a descheduled worker) gives the same logits. Mechanisms only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from chatrwkv import bench, cli
from chatrwkv.models import load_model, v7_cpu
from chatrwkv.synth import write_checkpoint

TINY_V7 = {"n_layer": 2, "n_embd": 64, "vocab_size": 300, "head_size": 16}
needs_c = pytest.mark.skipif(not v7_cpu.available(), reason="C extension not built")


@pytest.fixture(scope="module")
def v7_path(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("path") / "tiny7.pth", "7.0", seed=5,
                            **TINY_V7)


@needs_c
def test_engine_path_names_the_c_step(v7_path):
    model = load_model(v7_path, device="cpu", dtype="fp32")
    path = model.engine_path
    assert path.startswith("C step (") and "kernels" in path
    assert f"{model._c_step.n_threads} threads" in path


@needs_c
def test_engine_path_names_the_kernels_that_run_not_a_guess(v7_path):
    model = load_model(v7_path, device="cpu", dtype="fp32")
    names = {0: "scalar", 1: "AVX2", 2: "AVX-512", 3: "AVX-512 VNNI"}
    try:
        for level in (0, 1, 2, 3):
            runs = v7_cpu.use_simd(level)  # at most `level`: what this CPU has of it
            assert f"C step ({names[runs]} kernels," in model.engine_path
    finally:
        v7_cpu.use_simd(True)


def test_engine_path_says_why_torch_runs(v7_path, monkeypatch):
    monkeypatch.setattr(v7_cpu.C_STEP, "module", None)
    monkeypatch.setattr(v7_cpu.C_STEP, "error", "No module named 'chatrwkv.models._v7cpu'")
    model = load_model(v7_path, device="cpu", dtype="fp32")
    assert model.engine_path == ("torch fallback (C extension not built: No module named "
                                 "'chatrwkv.models._v7cpu')")


def test_bench_worker_runs_the_parents_package_not_the_cwds(v7_path, tmp_path, monkeypatch):
    # A source tree in the current directory (say a clone without its C extension built):
    # `python -m chatrwkv.bench_worker` would import it and measure it instead.
    impostor = tmp_path / "clone" / "chatrwkv"
    impostor.mkdir(parents=True)
    (impostor / "__init__.py").write_text("")
    (impostor / "bench_worker.py").write_text(
        "import json, sys\n"
        "json.dump({'package': __file__, 'engine_path': 'impostor', 'label': 'x'},"
        " open(sys.argv[2], 'w'))\n")
    monkeypatch.chdir(impostor.parent)
    spec = {"model": str(v7_path), "version": "7.0", "prompt": [1, 2, 3], "decode_tokens": 2,
            "runs": 1, "threads": 1, "engine": "chatrwkv", "device": "cpu", "dtype": "fp32",
            "chunk_len": None, "label": "chatrwkv fp32"}
    result = bench._run_worker(spec)
    assert "error" not in result, result.get("error")
    assert result["package"] == bench.package_dir()
    assert result["engine_path"] != "impostor"


def test_bench_refuses_a_result_from_another_package(monkeypatch, tmp_path):
    fake = tmp_path / "elsewhere"
    monkeypatch.setattr(bench, "package_dir", lambda: str(fake))
    spec = {"engine": "chatrwkv", "label": "chatrwkv fp32", "model": str(tmp_path / "none.pth"),
            "version": "7.0", "prompt": [1], "decode_tokens": 1, "runs": 1, "threads": 1,
            "device": "cpu", "dtype": "fp32", "chunk_len": None}
    write_checkpoint(Path(spec["model"]), "7.0", seed=1, **TINY_V7)
    result = bench._run_worker(spec)
    assert "not from" in result["error"] and str(fake) in result["error"]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_busy_flag_runs_competing_processes_for_the_block():
    with bench.competing(2) as procs:
        assert len(procs) == 2
        deadline = 0
        while deadline < 200 and not all(_cpu_seconds(p.pid) > 0 for p in procs):
            subprocess.run([sys.executable, "-c", "import time; time.sleep(0.05)"], check=True)
            deadline += 1
        assert all(p.poll() is None for p in procs)
        assert all(_cpu_seconds(p.pid) > 0 for p in procs)   # they burn CPU
    assert all(p.returncode is not None for p in procs)      # and are gone after it
    args = bench.build_parser().parse_args(["m.pth", "--busy", "1"])
    assert args.busy == 1
    with pytest.raises(SystemExit):
        bench.build_parser().parse_args(["m.pth", "--busy", "-1"])


def test_chat_entry_point_quiets_openmp_before_torch_loads():
    env: dict[str, str] = {}
    cli.quiet_openmp(env)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}
    mine = {"OMP_WAIT_POLICY": "ACTIVE"}
    cli.quiet_openmp(mine)
    assert mine == {"OMP_WAIT_POLICY": "ACTIVE"}              # the user's choice stands
    # OpenMP reads the variable once, when torch loads it: the entry point must set it before
    # anything it runs imports torch (the argument parser's defaults do).
    code = ("import sys, chatrwkv.cli as cli\n"
            "real = cli.quiet_openmp\n"
            "def spy(env):\n"
            "    print('torch loaded first:', 'torch' in sys.modules)\n"
            "    real(env)\n"
            "cli.quiet_openmp = spy\n"
            "cli.main(['--model', 'no-such-model.pth', '--no-autosave'])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=False, env={k: v for k, v in os.environ.items()
                                           if k != "OMP_WAIT_POLICY"}).stdout
    assert out.strip() == "torch loaded first: False"


def test_threads_option_reaches_torch_and_the_c_pool(monkeypatch, tmp_path):
    from chatrwkv.defaults import DEMO_MODEL, DEMO_PROMPT

    monkeypatch.setenv("CHATRWKV_HOME", str(tmp_path / "home"))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        args = cli.build_parser().parse_args(["--threads", "1", "--prompt", DEMO_PROMPT])
        session = cli.build_session(args, DEMO_MODEL)
        assert torch.get_num_threads() == 1
        if v7_cpu.available():
            assert session.model.engine_path.endswith(", 1 threads)")
    finally:
        torch.set_num_threads(before)
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["--threads", "0"])


@needs_c
def test_stalled_pool_runs_phases_alone_with_the_same_logits(v7_path):
    model = load_model(v7_path, device="cpu", dtype="fp32")
    pooled, alone = v7_cpu.build(model, n_threads=2), v7_cpu.build(model, n_threads=1)
    assert pooled.n_threads == 2 and alone.n_threads == 1
    a, b = model.zero_state(), model.zero_state()
    for token in (1, 2, 3):   # each row is computed by one thread: the same bits either way
        assert torch.equal(pooled.step(token, a), alone.step(token, b))
    counts = pooled.pool()
    assert counts.threads == 2 and counts.stalls == 0 and counts.solo_phases == 0
    phases_per_step = counts.phases // 3

    # Every phase now counts as a stall (a wait of >= 0 ns): the first runs in parallel, then
    # the caller runs the rest alone for the solo time.
    pooled.pool(stall_ns=0, solo_ns=10**12, solo_first_ns=10**12)
    assert torch.equal(pooled.step(4, a), alone.step(4, b))
    after = pooled.pool()
    assert after.phases - counts.phases == phases_per_step
    assert after.stalls - counts.stalls == 1
    assert after.solo_phases - counts.solo_phases == phases_per_step - 1

    # A solo time of 0 ends at once: back to the pool at every phase (each one stalls again).
    pooled.pool(stall_ns=0, solo_ns=0)
    assert torch.equal(pooled.step(5, a), alone.step(5, b))
    last = pooled.pool()
    assert last.stalls - after.stalls == phases_per_step
    assert last.solo_phases == after.solo_phases

    # Stalls in a row double the solo time from its first length (1 ns): after ~40 stalls it
    # outlasts any test run, and every later phase runs alone; without the doubling each solo
    # time would end at once and every phase stall. Steps take far less than the 50 ms window.
    pooled.pool(stall_ns=0, solo_ns=10**12, solo_first_ns=1)
    for token in range(6, 26):
        assert torch.equal(pooled.step(token, a), alone.step(token, b))
    ramp = pooled.pool()
    phases = ramp.phases - last.phases
    assert phases == 20 * phases_per_step
    assert ramp.stalls - last.stalls <= 45 < phases // 2
    assert ramp.solo_phases - last.solo_phases == phases - (ramp.stalls - last.stalls)


def test_banner_names_the_engine_path():
    import io

    from chat_fakes import FakeModel, FakeTokenizer
    from rich.console import Console

    from chatrwkv.prompts import Prompt
    from chatrwkv.session import Session
    from chatrwkv.ui import Terminal

    model = FakeModel()
    model.engine_path = "torch fallback (C extension not built: test)"
    prompt = Prompt(name="t", user="User", bot="Bot", init="\nUser: hi\n\nBot: hello\n\n")
    out = io.StringIO()
    Terminal(Session(model, FakeTokenizer(), prompt), Console(file=out, width=200)).banner()
    assert "engine: torch fallback (C extension not built: test)" in out.getvalue()


def test_a_small_model_decodes_on_one_thread_unless_told(tmp_path):
    from chatrwkv.defaults import DEMO_MODEL

    big = tmp_path / "big.pth"
    with open(big, "wb") as f:
        f.truncate(cli.SMALL_MODEL_BYTES)  # sparse: the size is what counts
    assert cli.default_threads(DEMO_MODEL) == 1
    assert cli.default_threads(big) is None
    assert cli.default_threads(tmp_path / "missing.pth") is None
