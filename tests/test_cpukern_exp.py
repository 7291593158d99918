"""_cpukern.h's AVX-512 exp and sigmoid (v7's one-token step computes its per-channel decay
and gates with them) against libm, compiled here as a small C program: within 2 ulp over the
whole finite range, 0 / inf past it, NaN through. Skips without a C compiler or AVX-512."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

HEADER = Path(__file__).resolve().parent.parent / "chatrwkv" / "models" / "_cpukern.h"

PROGRAM = r"""
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "HEADER"
CK_AVX512 static void run(const float *x, float *e, float *s) {
    _mm512_storeu_ps(e, ck_exp_avx512(_mm512_loadu_ps(x)));
    _mm512_storeu_ps(s, ck_sigmoid_avx512(_mm512_loadu_ps(x)));
}
int main(void) {
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512f")) return 77;
    float x[16], e[16], s[16];
    for (int i = 0; i < 16 * 11000; i += 16) {  /* -88 .. 88: every lane a different x */
        for (int k = 0; k < 16; k++) x[k] = -88.0f + (float)(i + k) * (176.0f / (16 * 11000));
        run(x, e, s);
        for (int k = 0; k < 16; k++) printf("%.9g %.9g %.9g\n", x[k], e[k], s[k]);
    }
    float edge[16] = {-1e30f, -200, -104, -103, -87.5f, 88.7f, 89, 1e30f, NAN, -NAN, INFINITY,
                      -INFINITY, 0, -0.0f, 1e-30f, -1e-30f};
    run(edge, e, s);
    for (int k = 0; k < 16; k++) printf("%.9g %.9g %.9g\n", edge[k], e[k], s[k]);
    return 0;
}
"""


def test_avx512_exp_and_sigmoid_against_libm(tmp_path):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    src = tmp_path / "exp.c"
    src.write_text(PROGRAM.replace("HEADER", str(HEADER)))
    exe = tmp_path / "exp"
    subprocess.run([cc, "-O2", "-o", str(exe), str(src), "-lm", "-lpthread"], check=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=False)
    if out.returncode == 77:
        pytest.skip("this CPU has no AVX-512")
    assert out.returncode == 0
    rows = torch.tensor([[float(v) for v in line.split()] for line in out.stdout.splitlines()],
                        dtype=torch.float64)
    x, e, s = rows[:-16].unbind(1)
    want = torch.exp(x)
    assert ((e - want).abs() / want).max().item() < 2.5 * 2.0**-24 * 2  # 2 ulp (and change)
    want_s = torch.sigmoid(x)
    assert ((s - want_s).abs() / want_s).max().item() < 1e-6
    x, e, s = rows[-16:].unbind(1)
    libm = torch.exp(x.float()).double()  # what expf gives, in fp32: 0 and inf past the range
    for i in range(16):
        if torch.isnan(x[i]):
            assert torch.isnan(e[i]) and torch.isnan(s[i])
        elif libm[i] == 0 or torch.isinf(libm[i]):
            assert e[i] == libm[i] and s[i] == torch.sigmoid(x[i].float()).double()
        else:  # denormals near -103 included
            assert abs(e[i] - libm[i]) <= 2 * 2.0**-23 * libm[i] + 1.5e-45
