"""Builds the optional C core of the World tokenizer; all metadata lives in pyproject.toml.

`optional=True`: without a C compiler the install still succeeds and the tokenizer uses its
pure-Python path (same ids, slower).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("chatrwkv.tokenizer._worldtrie",
                             sources=["chatrwkv/tokenizer/_worldtrie.c"], optional=True)])
