"""A fresh install has only the declared dependencies: loading a model must not need numpy, and
README's two commands are the ones CI runs (`.ci/run` reads them from README, so they cannot drift)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

NO_NUMPY = """
import sys
sys.modules["numpy"] = None  # as in a fresh venv: `import numpy` fails
from chatrwkv.models import load_model
from chatrwkv.checkpoint import Checkpoint
from chatrwkv.defaults import DEMO_MODEL
model = load_model(DEMO_MODEL, device="cpu", dtype="fp32")
print(Checkpoint.open(DEMO_MODEL).fingerprint())
"""


def test_demo_model_loads_and_fingerprints_without_numpy():
    out = subprocess.run([sys.executable, "-c", NO_NUMPY], check=False, capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.strip()) == 16


def test_numpy_is_declared_for_safetensors_save():
    # safetensors.torch.save (session files, state files) imports numpy but does not declare it:
    # a fresh venv crashed at the exit autosave until numpy was a dependency of ours.
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert any(d.startswith("numpy") for d in meta["dependencies"])


def readme_commands() -> list[str]:
    lines = (ROOT / "README.md").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.startswith("    python3 -m pip install torch==")]


def test_ci_runs_readme_commands_in_a_fresh_venv():
    install_chat, install_test = readme_commands()[:2]
    assert install_chat.endswith("&& chatrwkv") and install_test.endswith("python3 -m pytest")
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python3 -m venv" in ci and "--system-site-packages" not in ci
    # .ci/run takes the commands from README by the same prefix, rather than a copy of them
    assert "python3 -m pip install torch==" in ci and "README.md" in ci
