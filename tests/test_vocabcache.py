"""The parsed World vocabulary cached between runs: a hit equals a parse without parsing; a
changed text misses; a damaged file is parsed again and rewritten."""

from __future__ import annotations

from importlib import resources

from chatrwkv.tokenizer import WORLD_VOCAB
from chatrwkv.tokenizer.vocabcache import cached_vocab, read
from chatrwkv.tokenizer.world_vocab import parse_world_vocab

TEXT = ("1 '\\x00' 1\n2 'a' 1\n3 b'\\xff' 1\n4 ' the' 4\n5 '你好' 6\n"
        "6 '\\n\\n' 2\n")


class CountingParse:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, text: str, source: str) -> dict[int, bytes]:
        self.calls += 1
        return parse_world_vocab(text, source)


def test_hit_equals_parse_without_parsing(tmp_path):
    parse = CountingParse()
    first = cached_vocab(TEXT, "v.txt", parse, tmp_path)
    second = cached_vocab(TEXT, "v.txt", parse, tmp_path)
    assert parse.calls == 1
    assert first == second == parse_world_vocab(TEXT, "v.txt")
    assert cached_vocab(TEXT.replace("' the'", "' tha'"), "v.txt", parse, tmp_path) != first
    assert parse.calls == 2                                # another text: another entry


def test_damaged_file_is_parsed_again_and_rewritten(tmp_path):
    parse = CountingParse()
    cached_vocab(TEXT, "v.txt", parse, tmp_path)
    (entry,) = tmp_path.glob("world-*.bin")
    good = entry.read_bytes()
    for bad in (good[:-1], good[:30], b"junk" + good[4:], good + b"x"):
        entry.write_bytes(bad)
        assert read(entry) is None
        assert cached_vocab(TEXT, "v.txt", parse, tmp_path) == parse_world_vocab(TEXT, "v.txt")
        assert entry.read_bytes() == good
    # A file that repeats a token is refused although its lengths add up.
    entry.write_bytes(good.replace(b"a\xff", b"aa"))
    assert read(entry) is None


def test_shipped_vocabulary_round_trips(tmp_path):
    text = resources.files("chatrwkv").joinpath("data", WORLD_VOCAB).read_text(encoding="utf-8")
    parsed = cached_vocab(text, WORLD_VOCAB, parse_world_vocab, tmp_path)
    assert cached_vocab(text, WORLD_VOCAB, lambda t, s: {}, tmp_path) == parsed
    assert len(parsed) == 65529
