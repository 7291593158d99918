"""Tokenizers (World and Pile), chosen from the model's vocabulary size.

Interface every tokenizer implements (see `base.py`):
    name: str                      "world", "pile", or the custom file's name
    vocab_size: int                model embedding rows it fits (65536 World, 50277 Pile)
    encode(text: str) -> list[int]
    decode(ids) -> str             invalid UTF-8 becomes U+FFFD; unknown ids never crash
    decode_bytes(ids) -> bytes
    stream() -> StreamDecoder      feed(id) -> str (complete characters only), flush() -> str
    newline_id: int                "\n"
    double_newline_id: int         "\n\n" as one token (World 261, Pile 535)
    end_of_text_id: int            0 for both

`load_tokenizer(vocab_size, path=None)` picks World for 65536 rows and Pile for 50277; `path`
(a tokenizers JSON or a World-format vocab .txt) overrides. Both vocabularies ship in
`chatrwkv/data/` (see `chatrwkv/NOTICE`); nothing is downloaded.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

from ..errors import TokenizerError
from ..safeio import FileRefused, expand, read_regular
from .base import Tokenizer
from .stream import StreamDecoder

WORLD_ROWS = 65536
PILE_ROWS = 50277
WORLD_VOCAB = "rwkv_vocab_v20230424.txt"
PILE_JSON = "20B_tokenizer.json"
MAX_TOKENIZER_BYTES = 64 << 20  # the shipped ones are 1-2 MB

__all__ = ["StreamDecoder", "Tokenizer", "TokenizerError", "load_tokenizer"]


def load_tokenizer(vocab_size: int, path: str | Path | None = None) -> Tokenizer:
    """The tokenizer for a model with `vocab_size` embedding rows (or the one at `path`).

    Raises TokenizerError when there is no built-in tokenizer for that size or the tokenizer has
    ids the model has no rows for: the wrong tokenizer gives gibberish, so it is refused.
    """
    if path is not None:
        tokenizer = _load_file(str(expand(path).resolve()), vocab_size)
    elif vocab_size == WORLD_ROWS:
        tokenizer = _load_builtin("world", vocab_size)
    elif vocab_size == PILE_ROWS:
        tokenizer = _load_builtin("pile", vocab_size)
    else:
        raise TokenizerError(
            f"no built-in tokenizer for a model with {vocab_size} vocabulary rows (World models "
            f"have {WORLD_ROWS}, Pile models {PILE_ROWS}); give one with --tokenizer PATH")
    if tokenizer.max_id >= vocab_size:
        raise TokenizerError(
            f"tokenizer {tokenizer.name!r} has ids up to {tokenizer.max_id} but the model has only "
            f"{vocab_size} vocabulary rows: it is the wrong tokenizer for this model")
    return tokenizer


@lru_cache(maxsize=4)
def _load_builtin(kind: str, vocab_size: int) -> Tokenizer:
    data = resources.files("chatrwkv").joinpath("data")
    if kind == "world":
        from .vocabcache import cached_vocab
        from .world import WorldTokenizer
        from .world_vocab import parse_world_vocab

        text = data.joinpath(WORLD_VOCAB).read_text(encoding="utf-8")
        vocab = cached_vocab(text, WORLD_VOCAB, parse_world_vocab)
        return WorldTokenizer(vocab, source=WORLD_VOCAB, name="world", vocab_size=vocab_size)
    from .pile import HFTokenizer

    text = data.joinpath(PILE_JSON).read_text(encoding="utf-8")
    return HFTokenizer(text, name="pile", vocab_size=vocab_size, source=PILE_JSON)


@lru_cache(maxsize=4)
def _load_file(path: str, vocab_size: int) -> Tokenizer:
    file = Path(path)
    try:
        text = read_regular(file, MAX_TOKENIZER_BYTES, "tokenizer file").decode("utf-8")
    except FileRefused as e:
        raise TokenizerError(f"cannot read tokenizer: {e}") from None
    except UnicodeDecodeError as e:
        raise TokenizerError(f"cannot read tokenizer {path}: {e}") from None
    if file.suffix.lower() == ".json":
        from .pile import HFTokenizer

        return HFTokenizer(text, name=file.name, vocab_size=vocab_size, source=path)
    if file.suffix.lower() == ".txt":
        from .world import WorldTokenizer

        return WorldTokenizer.from_text(text, path, name=file.name, vocab_size=vocab_size)
    raise TokenizerError(f"{path}: a tokenizer is a tokenizers .json or a World-format vocab .txt")
