"""The official `rwkv` package run on a DeepEmbed (rwkv7a) checkpoint, in a process of its own.

The package reads RWKV_DE_VERSION when `rwkv.model` is imported (it picks the DeepEmbed
`forward_one`/`forward_seq`/`CMix` at class-definition time), and a test process has usually
imported it without DE already. So `run_reference_de` starts this file as a subprocess with
RWKV_DE_VERSION=1 (and RWKV_V7_ON=1 through tests/reference.py) set there only; it writes its
results as a tensors-only file, read back with weights_only=True.

    python -m tests.reference_de CKPT.pth STRATEGY OUT.pt PROMPT_IDS SPLIT N_GREEDY
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def run_reference_de(ckpt: Path, strategy: str, out: Path, prompt: list[int], split: int,
                     n_greedy: int) -> dict[str, torch.Tensor]:
    """Sequence / RNN / split logits and states, full-output logits and a greedy continuation."""
    env = {**os.environ, "RWKV_DE_VERSION": "1", "RWKV_V7_ON": "1"}
    proc = subprocess.run([sys.executable, "-m", "tests.reference_de", str(ckpt), strategy,
                           str(out), json.dumps(prompt), str(split), str(n_greedy)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"reference subprocess failed:\n{proc.stderr[-3000:]}")
    return torch.load(out, weights_only=True)


def _stack(state: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    L = len(state) // 3
    return {"att_x": torch.stack([state[3 * i] for i in range(L)]).float(),
            "wkv": torch.stack([state[3 * i + 1] for i in range(L)]).float(),
            "ffn_x": torch.stack([state[3 * i + 2] for i in range(L)]).float()}


def _main(ckpt: str, strategy: str, out: str, prompt_json: str, split: str, n: str) -> None:
    assert os.environ.get("RWKV_DE_VERSION") == "1"
    from tests.reference import load_reference

    ref = load_reference(ckpt, "7.0", strategy)
    prompt, split_at, n_greedy = json.loads(prompt_json), int(split), int(n)
    res: dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        logits, state = ref.forward(prompt, None)
        res["seq_logits"] = logits.float()
        res.update({f"seq_{k}": v for k, v in _stack(state).items()})
        res["full_logits"] = ref.forward(prompt, None, full_output=True)[0].float()
        logits, state = ref.forward(prompt[:split_at], None)
        logits, state = ref.forward(prompt[split_at:], state)
        res["split_logits"] = logits.float()
        state, rnn = None, []
        for t in prompt:
            logits, state = ref.forward([t], state)
            rnn.append(logits.float())
        res["rnn_logits"] = torch.stack(rnn)
        res.update({f"rnn_{k}": v for k, v in _stack(state).items()})
        greedy = []
        for _ in range(n_greedy):
            greedy.append(int(logits.argmax()))
            logits, state = ref.forward([greedy[-1]], state)
        res["greedy"] = torch.tensor(greedy)
    torch.save({k: v.contiguous() for k, v in res.items()}, out)


if __name__ == "__main__":
    _main(*sys.argv[1:])
