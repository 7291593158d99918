"""What the bench and `info` count for tables a token reads one row of (the embedding, and
DeepEmbed's per-layer `s_emb`, [V, D*D] each: several times the rest of a small model).

A DeepEmbed model and a plain v7 model of the same sizes differ, per layer, by one s_emb table,
s_emb_x, s1, s2 and s0. A decode step reads one row of the table and all of the rest; the model
holds the rest in memory and leaves the table in the file's pages (v7_de.DeepEmbedPages), so
the bench's weights (what peak RSS is divided by) differ by the rest only."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from chatrwkv import bench, hub
from chatrwkv.bench_worker import ChatEngine, tensor_bytes
from chatrwkv.modelstore import check_model
from chatrwkv.synth import write_checkpoint

DIMS = {"n_layer": 2, "n_embd": 64, "vocab_size": 3000, "head_size": 16}
RANK = 8  # D: s_emb rows are 64 wide
FAST = ["--prompt-len", "16", "--decode-tokens", "4", "--runs", "2", "--threads", "1"]


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    d = tmp_path_factory.mktemp("tables")
    return (write_checkpoint(d / "de.pth", "7.0a", seed=1, deep_embed_rank=RANK, **DIMS),
            write_checkpoint(d / "plain.pth", "7.0", seed=1, **DIMS))


@pytest.mark.parametrize("dtype", ["fp32", "int4"])
def test_decode_reads_one_row_of_each_deep_embed_table(paths, dtype):
    de, plain = (ChatEngine(str(p), "cpu", dtype, None) for p in paths)
    layers = de.model.layers
    per_layer_rest = sum(tensor_bytes([p.s_emb_x, p.s1, p.s2, p.s0]) for p in layers)
    row_bytes = sum(p.s_emb[0].numel() * p.s_emb.element_size() for p in layers)
    table_bytes = sum(p.s_emb.numel() * p.s_emb.element_size() for p in layers)
    assert table_bytes == DIMS["n_layer"] * DIMS["vocab_size"] * RANK**2 * 2  # bf16 as stored
    assert de.decode_bytes() - plain.decode_bytes() == per_layer_rest + row_bytes
    assert de.weight_bytes() - plain.weight_bytes() == per_layer_rest
    assert de.paged_bytes() == table_bytes and plain.paged_bytes() == 0


def test_info_counts_the_embedding_tables_apart(paths, capsys):
    de, plain = paths
    V, C, L = DIMS["vocab_size"], DIMS["n_embd"], DIMS["n_layer"]
    info = check_model(de)
    assert info["table_params"] == V * C + L * V * RANK**2 and info["n_tables"] == 1 + L
    assert check_model(plain)["table_params"] == V * C
    assert hub.main(["info", str(de)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"embedding tables {V * C + L * V * RANK**2:,}" in out
    assert f"the embedding and {L} per-layer DeepEmbed tables" in out


def test_bench_rows_of_a_deep_embed_model(paths, capsys):
    de, _ = paths
    assert bench.main([str(de), "--json", "--dtype", "fp32,int4", *FAST]) == 0
    (model,) = json.loads(capsys.readouterr().out)["models"]
    assert model["version"] == "7.0a"
    fp32, int4 = model["results"]
    table = DIMS["n_layer"] * DIMS["vocab_size"] * RANK**2 * 2
    for r in (fp32, int4):
        assert "error" not in r, r.get("error")
        assert r["paged_bytes"] == table
        assert 0 < r["decode_bytes"] < r["weight_bytes"] + r["paged_bytes"]
    assert int4["weight_bytes"] < fp32["weight_bytes"]
    assert bench.main([str(de), "--dtype", "int4", *FAST]) == 0
    out = capsys.readouterr().out
    assert "paged" in out and "chatrwkv int4" in out


def test_plain_models_are_counted_as_before(paths):
    _, plain = paths
    engine = ChatEngine(str(plain), "cpu", "fp32", None)
    emb = engine.model.emb
    assert engine.weight_bytes() == tensor_bytes(engine.model)
    assert engine.decode_bytes() == tensor_bytes(engine.model, opaque=False) \
        - emb.numel() * emb.element_size() + emb[0].numel() * emb.element_size()
    assert torch.equal(engine.model.embedding_tables()[0], emb)


@pytest.mark.parametrize("version", ["5.2", "6.0"])
def test_int8_decode_without_a_c_step_reads_the_packed_matrices(tmp_path, version):
    """Where no C step runs (the extension not built: as if here), a one-token product reads
    fbgemm's packed int8 copy (or, without fbgemm, the plain rows), so decode reads at least every
    int8 weight once."""
    from chatrwkv.models.quant import Int8Linear

    path = write_checkpoint(tmp_path / "m.pth", version, seed=2, n_layer=2, n_embd=64,
                            vocab_size=3000, head_size=16)
    engine = ChatEngine(str(path), "cpu", "int8", None)
    model = engine.model
    model._c_step_built, model._c_step = True, None  # what a build without the extension has
    assert not model.has_c_step
    mats = [model.head]
    if hasattr(model, "blocks"):  # v5: dataclasses
        mats += [getattr(b, f.name) for b in model.blocks for f in dataclasses.fields(b)]
    else:  # v6: NamedTuples
        mats += [v for att, ffn, _ in model.layers for v in (*att, *ffn)]
    int8_bytes = sum(m.shape[0] * m.shape[1] for m in mats if isinstance(m, Int8Linear))
    assert int8_bytes > 0
    assert int8_bytes <= engine.decode_bytes() <= engine.weight_bytes()
