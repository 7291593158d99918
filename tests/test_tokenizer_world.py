"""World tokenizer: the same ids as the official trie tokenizer for every input, by four routes
(the C core, the pure-Python fast path, their slow twin, the oracle), and exact round trips.

Every test that takes the `world` fixture runs once with the C core (skipped when it was not
built) and once with the pure-Python path."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatrwkv.errors import TokenizerError
from chatrwkv.tokenizer import load_tokenizer
from chatrwkv.tokenizer.world import WorldTokenizer, native_available

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


needs_native = pytest.mark.skipif(not native_available(),
                                  reason="the C core chatrwkv.tokenizer._worldtrie is not built")


@pytest.fixture(scope="module", params=[pytest.param("c", marks=needs_native), "python"])
def world(request) -> WorldTokenizer:
    if request.param == "c":
        tok = load_tokenizer(65536)  # the default choice: the C core whenever it is built
        assert tok.native
        return tok
    tok = WorldTokenizer.from_file(VOCAB, name="world", vocab_size=65536, native=False)
    assert not tok.native
    return tok


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
# codec="utf-8": any character text can hold (lone surrogates cannot be encoded at all)
boundary_text = st.text(st.sampled_from(BOUNDARY_CHARS) | st.characters(codec="utf-8"),
                        max_size=120)


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


# -- the C core against the Python path, directly -------------------------------------------


@pytest.fixture(scope="module")
def both() -> tuple[WorldTokenizer, WorldTokenizer]:
    if not native_available():
        pytest.skip("the C core chatrwkv.tokenizer._worldtrie is not built")
    return load_tokenizer(65536), WorldTokenizer.from_file(VOCAB, native=False)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300) | st.text(max_size=200).map(str.encode))
def test_c_core_equals_python_path(both, data):
    native, python = both
    assert native.encode_bytes(data) == python.encode_bytes(data)


def test_c_core_on_long_input(both, official):
    # Long inputs are matched with the GIL released; every byte value and a long repeat
    native, python = both
    rng = random.Random(1)
    data = bytes(range(256)) * 8 + bytes(rng.randrange(256) for _ in range(40_000))
    data += ("中文 English " * 3000).encode() + b"\x00" * 5000
    assert native.encode_bytes(data) == python.encode_bytes(data) == official.encodeBytes(data)
    assert native.encode_bytes(bytearray(data)) == native.encode_bytes(memoryview(data))


def tiny_vocab(extra: list[bytes]) -> dict[int, bytes]:
    """Single bytes (ids 1-256) plus `extra` at sparse ids, some past 65535."""
    vocab = {b + 1: bytes([b]) for b in range(256)}
    vocab.update({1000 + 70_001 * k: token for k, token in enumerate(extra)})
    return vocab


ODD_TOKENS = [b"\x00\x00", b"\x00\x00\x00\x00", b"\xff\xfe", b"\xff\xfe\xfd\xfc", b"ab", b"abc",
              b"abcd" * 40, b"a\x00b", b"\xe4\xb8", b"\n\n", b" \n", b"x" * 300]


@pytest.fixture(scope="module")
def odd() -> tuple[dict[int, bytes], WorldTokenizer, WorldTokenizer]:
    if not native_available():
        pytest.skip("the C core chatrwkv.tokenizer._worldtrie is not built")
    vocab = tiny_vocab(ODD_TOKENS)
    return vocab, WorldTokenizer(vocab, native=True), WorldTokenizer(vocab, native=False)


@settings(max_examples=200, deadline=None)
@given(data=st.lists(st.sampled_from(ODD_TOKENS + [b"a", b"b", b"\x00", b"\xff", b"c"]),
                     max_size=40).map(b"".join) | st.binary(max_size=60))
def test_c_core_odd_vocabulary(odd, data):
    # NULs, invalid UTF-8, tokens longer than 256 bytes, ids beyond uint16: the same greedy match
    vocab, native, python = odd
    assert native.encode_bytes(data) == python.encode_bytes(data) == plain_greedy(vocab, data)


def plain_greedy(vocab: dict[int, bytes], data: bytes) -> list[int]:
    ids = {token: token_id for token_id, token in vocab.items()}
    out, i = [], 0
    while i < len(data):
        length = next(n for n in range(len(data) - i, 0, -1) if data[i:i + n] in ids)
        out.append(ids[data[i:i + length]])
        i += length
    return out


@needs_native
def test_c_trie_errors_and_edges():
    from chatrwkv.tokenizer._worldtrie import Trie

    trie = Trie([(b"a", 5), (b"ab", 10**30), (b"a", 7), (b"", 9)])  # a repeated token: last wins
    assert trie.encode(b"") == []
    assert trie.encode(b"aab") == [7, 10**30]
    with pytest.raises(ValueError, match="no token matches"):
        trie.encode(b"ac")
    with pytest.raises(TypeError):
        trie.encode("a str")
    with pytest.raises(TypeError, match="bytes, int"):
        Trie([("a", 1)])
    with pytest.raises(RuntimeError, match="already initialised"):
        trie.__init__([(b"a", 1)])
    assert Trie([]).encode(b"") == []


def test_native_true_requires_the_core(monkeypatch):
    import chatrwkv.tokenizer.world as world_module

    vocab = tiny_vocab([b"ab"])
    monkeypatch.setattr(world_module, "_worldtrie", None)
    with pytest.raises(TokenizerError, match="not built"):
        WorldTokenizer(vocab, native=True)
    assert not WorldTokenizer(vocab).native  # the default falls back on the Python path


@needs_native
def test_the_c_core_starts_without_the_python_paths_facts():
    """Start-up: the facts only the Python path needs are built on first use, and then agree."""
    tok = WorldTokenizer.from_file(VOCAB, name="world", vocab_size=65536, native=True)
    text = "Romeo: hello there, 你好 \n\n"
    ids = tok.encode(text)
    assert tok._facts_built is None
    assert tok.encode_reference(text) == ids and tok._facts_built is not None


def test_a_vocabulary_without_every_byte_is_still_refused():
    with pytest.raises(TokenizerError, match="lacks single-byte tokens"):
        WorldTokenizer({1: b"a", 2: b"b"}, native=False)
