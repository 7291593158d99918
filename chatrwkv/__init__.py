"""chatrwkv: a terminal chat for RWKV language models."""

import os as _os
import sys as _sys

__version__ = "0.1.0"

# torch's OpenMP threads (libgomp) spin after each parallel operation before they sleep:
# 300,000 pauses by default, ~15 ms where a pause takes ~140 cycles (Intel since Skylake).
# Our C kernels run on threads of their own (the one-token step's pool, the sequence path's
# products), and on a 2-core machine a spinning OpenMP thread holds the core they need: the
# prefill's int8 products ran at ~60% of their speed. 10,000 still covers the gaps between
# consecutive torch operations. libgomp reads this once, when torch loads it, so it is set here,
# before anything imports torch; a value (or a wait policy) the user set wins.
if ("torch" not in _sys.modules and "GOMP_SPINCOUNT" not in _os.environ
        and "OMP_WAIT_POLICY" not in _os.environ):
    _os.environ["GOMP_SPINCOUNT"] = "10000"
