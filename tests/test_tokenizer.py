"""Pile tokenizer, the choice of tokenizer from the model, custom files, and streaming decode."""

from __future__ import annotations

import json
import random
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatrwkv.errors import TokenizerError
from chatrwkv.tokenizer import StreamDecoder, load_tokenizer
from chatrwkv.tokenizer.pile import HFTokenizer
from chatrwkv.tokenizer.world import WorldTokenizer

TEXTS = ["hello\n\nworld", "Hello, world! 你好，世界 😀👨‍👩‍👧", "  indented\n\tcode()\r\n",
         "Émile's café — naïve façade", "\x00control\x7f", ""]


@pytest.fixture(scope="module")
def pile() -> HFTokenizer:
    return load_tokenizer(50277)


@pytest.fixture(scope="module")
def world() -> WorldTokenizer:
    return load_tokenizer(65536)


# -- Pile ---------------------------------------------------------------------------------------

def test_pile_known_ids(pile):
    assert pile.name == "pile" and pile.vocab_size == 50277
    assert pile.encode("hello\n\n")[-1] == 535
    ids = pile.encode("hello\n\nworld")
    assert ids[1:3] == [187, 187] and 535 not in ids
    assert (pile.newline_id, pile.double_newline_id, pile.end_of_text_id) == (187, 535, 0)


@pytest.mark.parametrize("text", TEXTS)
def test_pile_round_trip(pile, text):
    ids = pile.encode(text)
    assert pile.decode(ids) == text
    assert pile.decode(ids) == pile._backend.decode(ids)  # the byte table agrees with the library


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=80))
def test_pile_random_round_trip(pile, text):
    text = unicodedata.normalize("NFC", text)  # the tokenizer normalizes to NFC first
    assert pile.decode(pile.encode(text)) == text


def test_pile_special_and_unknown_ids(pile):
    assert pile.decode([0, 1]) == ""  # <|endoftext|>, <|padding|>
    assert pile.decode([50277, 10**6, -5]) == ""
    assert pile.decode(pile.encode("  x")) == "  x"  # added whitespace tokens decode as text


# -- choosing a tokenizer -----------------------------------------------------------------------

def test_choice_from_vocab_size(world, pile):
    assert load_tokenizer(65536) is world and isinstance(world, WorldTokenizer)
    assert load_tokenizer(50277) is pile


def test_unknown_size_is_an_error():
    with pytest.raises(TokenizerError, match="no built-in tokenizer.*--tokenizer"):
        load_tokenizer(32000)


def world_vocab_lines(extra: dict[int, str]) -> str:
    lines = [f"{b + 1} {bytes([b])!r} 1" for b in range(256)]
    lines += [f"{i} {s!r} {len(s.encode())}" for i, s in extra.items()]
    return "\n".join(lines) + "\n"


def test_custom_world_vocab(tmp_path):
    path = tmp_path / "tiny_vocab.txt"
    path.write_text(world_vocab_lines({257: "\n\n", 258: "ab", 259: "abc", 260: "中"}),
                    encoding="utf-8")
    tok = load_tokenizer(512, path)
    assert tok.name == "tiny_vocab.txt" and tok.vocab_size == 512
    assert tok.encode("abcab\n\n中") == [259, 258, 257, 260]
    assert tok.encode("abcab\n\n中") == tok.encode_reference("abcab\n\n中")
    assert tok.double_newline_id == 257 and tok.newline_id == 11
    with pytest.raises(TokenizerError, match="ids up to 260.*only 200"):
        load_tokenizer(200, path)


def test_pile_json_does_not_fit_a_smaller_model(tmp_path):
    from importlib import resources

    path = tmp_path / "neox.json"
    path.write_text(resources.files("chatrwkv").joinpath("data", "20B_tokenizer.json")
                    .read_text(encoding="utf-8"), encoding="utf-8")
    assert load_tokenizer(65536, path).encode("hello\n\n")[-1] == 535
    with pytest.raises(TokenizerError, match="wrong tokenizer"):
        load_tokenizer(50000, path)


def test_vocab_is_data_not_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.txt"
    path.write_text(world_vocab_lines({}) + f"257 __import__('pathlib').Path({str(marker)!r})"
                    ".touch() 2\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match="evil.txt:257"):
        load_tokenizer(1000, path)
    assert not marker.exists()


@pytest.mark.parametrize("content, message", [
    ("1 'a' 2\n", "has 1 bytes"),
    ("1 'a' 1\n2 'a' 1\n", "repeats id 1"),
    ("1 'a' 1\n", "lacks single-byte tokens"),
    ("garbage\n", "not a vocabulary line"),
    ("1 123 3\n", "not a str or bytes"),
])
def test_bad_world_vocab(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(TokenizerError, match=message):
        load_tokenizer(1000, path)


def test_bad_files(tmp_path):
    with pytest.raises(TokenizerError, match="cannot read"):
        load_tokenizer(65536, tmp_path / "missing.json")
    (tmp_path / "x.json").write_text(json.dumps({"not": "a tokenizer"}))
    with pytest.raises(TokenizerError, match="not a tokenizers JSON"):
        load_tokenizer(65536, tmp_path / "x.json")
    (tmp_path / "x.model").write_text("whatever")
    with pytest.raises(TokenizerError, match="tokenizers .json or a World-format"):
        load_tokenizer(65536, tmp_path / "x.model")


# -- streaming ----------------------------------------------------------------------------------

def stream_all(chunks: list[bytes]) -> list[str]:
    decoder = StreamDecoder(chunks.__getitem__)
    return [decoder.feed(i) for i in range(len(chunks))] + [decoder.flush()]


def random_split(data: bytes, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), rng.randint(0, len(data) - 1))) if data else []
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=40), seed=st.integers(0, 2**32 - 1))
def test_stream_any_split_of_valid_bytes(text, seed):
    outputs = stream_all(random_split(text.encode("utf-8"), random.Random(seed)))
    assert "".join(outputs) == text
    # each character appears once, whole: no piece is a broken character
    assert all("\ufffd" not in out or "\ufffd" in text for out in outputs)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=40), seed=st.integers(0, 2**32 - 1))
def test_stream_any_bytes_equals_one_shot_decode(data, seed):
    outputs = stream_all(random_split(data, random.Random(seed)))
    assert "".join(outputs) == data.decode("utf-8", errors="replace")


def test_stream_holds_a_split_character_until_complete(world):
    zhong = [world.id_of(b"\xe4"), world.id_of(b"\xb8"), world.id_of(b"\xad")]
    decoder = world.stream()
    assert [decoder.feed(i) for i in zhong] == ["", "", "中"]
    emoji = "👨‍👩‍👧".encode()
    assert "".join(decoder.feed(world.id_of(bytes([b]))) for b in emoji) == "👨‍👩‍👧"
    assert decoder.flush() == ""


def test_stream_invalid_tail_and_unknown_ids(world):
    decoder = world.stream()
    assert decoder.feed(world.encode("a")[0]) == "a"
    assert decoder.feed(0) == "" and decoder.feed(10**6) == ""  # unknown ids: nothing, no crash
    assert decoder.feed(world.id_of(b"\xe4")) == ""
    assert decoder.pending == b"\xe4"
    assert decoder.flush() == "\ufffd"
    assert decoder.feed(world.id_of(b"\xff")) == "\ufffd"  # never valid: replaced at once
    assert decoder.flush() == ""


@pytest.mark.parametrize("name", ["world", "pile"])
def test_stream_of_encoded_text_is_the_text(world, pile, name):
    tok = world if name == "world" else pile
    text = "混合 text 😀👍🏽 — done\n\n" * 3
    decoder = tok.stream()
    pieces = [decoder.feed(i) for i in tok.encode(text)] + [decoder.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
