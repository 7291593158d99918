"""Start-up cuts that must not change results: the model fingerprint (state files and caches
are keyed by it) is the same hash as before it was computed faster."""

from __future__ import annotations

import hashlib

from chatrwkv.checkpoint import Checkpoint
from chatrwkv.defaults import DEMO_MODEL
from chatrwkv.synth import write_checkpoint


def _fingerprint_as_before(ckpt: Checkpoint) -> str:
    h = hashlib.sha256()
    for key in sorted(ckpt.tensors):
        t = ckpt.tensors[key]
        h.update(f"{key}:{tuple(t.shape)}:{t.dtype};".encode())
    for key in ("emb.weight", "head.weight"):
        if key in ckpt.tensors:
            sample = ckpt.tensors[key].detach().flatten()[:4096].float().clone()
            h.update(bytes(sample.untyped_storage()))
    return h.hexdigest()[:16]


def test_fingerprint_unchanged(tmp_path):
    paths = [DEMO_MODEL, write_checkpoint(tmp_path / "t4.pth", "4", seed=2, n_layer=1,
                                          n_embd=32, vocab_size=50)]
    for path in paths:
        ckpt = Checkpoint.open(path)
        assert ckpt.fingerprint() == _fingerprint_as_before(ckpt)
