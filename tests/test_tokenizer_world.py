"""World tokenizer: the same ids as the official trie tokenizer for every input, by three routes
(the fast path, its slow twin, the oracle), and exact round trips."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatrwkv.tokenizer import load_tokenizer
from chatrwkv.tokenizer.world import WorldTokenizer

VOCAB = Path(__file__).resolve().parents[1] / "chatrwkv" / "data" / "rwkv_vocab_v20230424.txt"

CORPUS = [
    "",
    " ",
    "Hello, world! This is a test of the RWKV World tokenizer.\n\nIt's 2024; isn't it?",
    "中文测试：你好，世界！今天天气很好。我们一起去公园散步吧。\n第二行，有数字123和English混合。",
    "日本語のテキストです。カタカナとひらがな、漢字を含みます。東京タワー",
    "한국어 텍스트입니다. 안녕하세요, 세계!",
    "مرحبا بالعالم، هذا نص عربي للاختبار.",
    "Emoji: 😀👍🏽 family 👨‍👩‍👧‍👦 flag 🇫🇷 heart ❤️ keycap 1️⃣ rainbow 🏳️‍🌈",
    "def f(x):\n\treturn {'a': [1, 2, 3]}  # comment\n\nclass A:\n    pass\r\n",
    "   leading spaces, trailing spaces   \n  \n\t\t\n\n\n\n   \r\n\r\n  \t ",
    "control: \x00\x01\x02\x1b[31mred\x1b[0m \x7f \x0b\x0c \x1c\x1d\x85\u2028\u2029",
    " " * 300 + "x" + "\n" * 50 + "y" + "\t" * 40 + "=" * 200 + "-" * 90,
    "a" * 500 + " " + "ab" * 300,
    "combining: e\u0301 a\u0308 n\u0303 \u0915\u094d\u0937 \ufeffBOM \u200bzero\u200dwidth",
    "Ελληνικά κείμενο, русский текст, עברית, ไทย, हिन्दी",
    "mixed中English文\n中\n\n文 中 文  中\t文…“quotes”—dash·dot",
    "https://example.com/path?query=1&b=2#frag user@example.org C:\\Windows\\path",
    "\n" + "中" * 100 + "，" + "a" * 70 + "。" + "😀" * 30,
]


@pytest.fixture(scope="module")
def world() -> WorldTokenizer:
    return load_tokenizer(65536)


@pytest.fixture(scope="module")
def official():
    from tests.reference import reference_world_tokenizer

    return reference_world_tokenizer(VOCAB)


def check(world: WorldTokenizer, official, text: str) -> None:
    expected = official.encode(text)
    assert world.encode(text) == expected, text[:80]
    assert world.encode(text) == expected, "second (cached) encoding differs"
    assert world.encode_reference(text) == expected
    assert world.decode(expected) == text


@pytest.mark.parametrize("index", range(len(CORPUS)))
def test_corpus_matches_official(world, official, index):
    check(world, official, CORPUS[index])


def test_corpus_joined_matches_official(world, official):
    rng = random.Random(0)
    parts = CORPUS * 3
    rng.shuffle(parts)
    check(world, official, "".join(p + rng.choice(["", " ", "\n", "  ", "\n\n", " \n"])
                                   for p in parts))


def test_large_text_matches_official(world, official):
    shakespeare = Path(__file__).resolve().parents[2] / "shared" / "data" / "shakespeare"
    files = sorted(shakespeare.glob("*.txt"))[:1]
    text = files[0].read_text(encoding="utf-8")[:200_000] if files else " ".join(CORPUS) * 40
    assert world.encode(text) == official.encode(text)


# Text drawn mostly from the characters where token boundaries are decided.
BOUNDARY_CHARS = list(" \n\t\r  .,;:'\"!?-_()[]{}<>/\\=#*0123456789aeiouxyzTHE中文字，。、！？"
                      "…“”😀‍️🏽éßλжא\x00\x7f\x85")
boundary_text = st.text(st.sampled_from(BOUNDARY_CHARS) | st.characters(), max_size=120)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=boundary_text)
def test_random_text_matches_official(world, official, text):
    check(world, official, text)


@settings(max_examples=150, deadline=None)
@given(text=st.text(max_size=60))
def test_random_unicode_matches_official(world, official, text):
    check(world, official, text)


# Long pieces without spaces take the isolated-character (CJK) and cut paths.
long_piece = st.lists(st.sampled_from(list("中文字词，。！\n\t1a. ’é😀") + ["ab", "  ", "中文"]),
                      min_size=40, max_size=200).map("".join)


@settings(max_examples=100, deadline=None)
@given(text=long_piece)
def test_long_pieces_match_official(world, official, text):
    check(world, official, text)


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=100))
def test_arbitrary_bytes_match_official(world, official, data):
    # Bytes that are not UTF-8 (0xFE/0xFF among them) take the regex twin of the fast split.
    assert world.encode_bytes(data) == official.encodeBytes(data)
    assert world.decode_bytes(world.encode_bytes(data)) == data


def test_special_ids(world):
    assert world.name == "world" and world.vocab_size == 65536
    assert (world.newline_id, world.double_newline_id, world.end_of_text_id) == (11, 261, 0)
    assert world.encode("\n") == [11] and world.encode("\n\n") == [261]


def test_decode_unknown_and_invalid(world):
    assert world.decode([0, 65530, 65535, 10**9, -1]) == ""
    assert world.decode_bytes([0]) == b""
    assert world.decode([world.id_of(b"\xe4")]) == "\ufffd"  # the first byte of 中
    assert world.decode(world.encode("a") + [0] + world.encode("b")) == "ab"


def test_caches_do_not_change_results(world, official):
    text = CORPUS[2] + CORPUS[3] + CORPUS[9]
    world.clear_caches()
    cold = world.encode(text)
    assert world.encode(text) == cold == official.encode(text)


def test_lone_surrogate_does_not_crash(world):
    ids = world.encode("a\ud800b")
    assert world.decode(ids) == "a\ufffd\ufffd\ufffdb"
