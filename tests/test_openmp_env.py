"""chatrwkv shortens torch's OpenMP spin-wait before torch loads (chatrwkv/__init__.py), and
leaves alone a setting the user made or a torch that is already loaded."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = ("import os, sys; {first}; import torch; "
         "print(os.environ.get('GOMP_SPINCOUNT', '-'))")


def _run(first: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", PROBE.format(first=first)],
                         env={**clean, **env}, capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.mark.parametrize("first, env, expected", [
    ("import chatrwkv", {}, "10000"),                                   # set before torch
    ("import chatrwkv", {"GOMP_SPINCOUNT": "77"}, "77"),                # the user's value wins
    ("import chatrwkv", {"OMP_WAIT_POLICY": "passive"}, "-"),           # so does a policy
    ("import torch; import chatrwkv", {}, "-"),                        # too late: untouched
])
def test_spin_count(first, env, expected):
    assert _run(first, **env) == expected
