"""Builds the optional C parts; all metadata lives in pyproject.toml.

`optional=True`: without a C compiler the install still succeeds, the tokenizer uses its
pure-Python path (same ids, slower) and one-token steps run through torch (same logits, slower).
"""

from setuptools import Extension, setup

# POSIX threads for the decode pool; -O3 lets the scalar twins vectorize where no AVX2 exists.
C_FLAGS = ["-O3", "-pthread"]
CPU_DEPENDS = ["chatrwkv/models/_cpukern.h", "chatrwkv/models/_cpubind.h"]

setup(ext_modules=[
    Extension("chatrwkv.tokenizer._worldtrie", sources=["chatrwkv/tokenizer/_worldtrie.c"],
              optional=True),
    Extension("chatrwkv.models._v7cpu", sources=["chatrwkv/models/_v7cpu.c"],
              depends=CPU_DEPENDS + ["chatrwkv/models/_v7wkv.h"], extra_compile_args=C_FLAGS,
              extra_link_args=["-pthread"], optional=True),
    Extension("chatrwkv.models._v5cpu", sources=["chatrwkv/models/_v5cpu.c"],
              depends=CPU_DEPENDS + ["chatrwkv/models/_v56head.h"], extra_compile_args=C_FLAGS,
              extra_link_args=["-pthread"], optional=True),
    Extension("chatrwkv.models._v6cpu", sources=["chatrwkv/models/_v6cpu.c"],
              depends=CPU_DEPENDS + ["chatrwkv/models/_v56head.h"], extra_compile_args=C_FLAGS,
              extra_link_args=["-pthread"], optional=True),
    Extension("chatrwkv.models._v4cpu", sources=["chatrwkv/models/_v4cpu.c"],
              depends=CPU_DEPENDS, extra_compile_args=C_FLAGS,
              extra_link_args=["-pthread"], optional=True),
    Extension("chatrwkv.models._quantcpu", sources=["chatrwkv/models/_quantcpu.c"],
              depends=CPU_DEPENDS + ["chatrwkv/models/_qgemm.h", "chatrwkv/models/_quantprep.h",
                                      "chatrwkv/models/_bgemm.h"],
              extra_compile_args=C_FLAGS + ["-Wno-unused-function"],
              extra_link_args=["-pthread"], optional=True),
])
