"""chatrwkv: a terminal chat for RWKV language models."""

__version__ = "0.1.0"
