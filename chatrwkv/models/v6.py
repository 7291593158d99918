"""RWKV v6 (placeholder until implemented)."""

from __future__ import annotations

from ..checkpoint import Checkpoint
from .base import RWKVModel


class RWKV6(RWKVModel):
    @classmethod
    def detect(cls, ckpt: Checkpoint) -> str | None:
        return None
