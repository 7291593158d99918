"""Tokenizers in Hugging Face `tokenizers` JSON: the GPT-NeoX-20B ("Pile") tokenizer of RWKV-4
Pile / Raven models, or a custom file given with --tokenizer."""

from __future__ import annotations

import json

from ..errors import TokenizerError
from .base import Tokenizer

PILE_ROWS = 50277
END_OF_TEXT_NAMES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>")


def _byte_level_alphabet() -> dict[str, int]:
    """The GPT-2 map from the printable characters of byte-level BPE tokens back to bytes."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    chars = dict(zip(printable, printable))
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = 256 + extra
            extra += 1
    return {chr(c): b for b, c in chars.items()}


class HFTokenizer(Tokenizer):
    """A `tokenizers.Tokenizer` with a byte table for decoding and streaming.

    Byte-level BPE tokens (GPT-NeoX, GPT-2 style) map back to exact bytes, so a character split
    over two tokens streams correctly; for other kinds of models each token's bytes are what the
    library decodes it to on its own. Special tokens (<|endoftext|>, <|padding|>) decode to
    nothing, as the library's own decode does by default.
    """

    def __init__(self, json_text: str, *, name: str, vocab_size: int | None = None,
                 source: str = "tokenizer") -> None:
        from tokenizers import Tokenizer as HFBackend  # imported on use: keeps import cheap

        try:
            spec = json.loads(json_text)
            self._backend = HFBackend.from_str(json_text)
        except Exception as e:  # noqa: BLE001 - the library raises bare Exception on bad input
            raise TokenizerError(f"{source}: not a tokenizers JSON file ({e})") from None
        self.name = name
        self._token_bytes = self._bytes_table(spec)
        self._ids_by_bytes = {}
        for token_id, token in enumerate(self._token_bytes):
            if token:
                self._ids_by_bytes.setdefault(token, token_id)
        self.vocab_size = vocab_size if vocab_size is not None else len(self._token_bytes)
        newline = self._ids_by_bytes.get(b"\n")
        if newline is None:
            raise TokenizerError(f"{source}: the tokenizer has no single token for a newline")
        self.newline_id = newline
        self.double_newline_id = self._ids_by_bytes.get(b"\n\n", newline)
        self.end_of_text_id = next((i for i in map(self._backend.token_to_id, END_OF_TEXT_NAMES)
                                    if i is not None), 0)

    def _bytes_table(self, spec: dict) -> list[bytes]:
        backend = self._backend
        size = backend.get_vocab_size(with_added_tokens=True)
        added = {t["id"]: t for t in spec.get("added_tokens") or []}
        size = max([size, *(i + 1 for i in added)])
        byte_level = "ByteLevel" in json.dumps(spec.get("decoder"))
        alphabet = _byte_level_alphabet()
        table = [b""] * size
        for token_id in range(size):
            if token_id in added:
                token = added[token_id]
                table[token_id] = b"" if token.get("special") else token["content"].encode()
                continue
            piece = backend.id_to_token(token_id)
            if piece is None:
                continue
            if byte_level and all(c in alphabet for c in piece):
                table[token_id] = bytes(alphabet[c] for c in piece)
            else:
                table[token_id] = backend.decode([token_id]).encode("utf-8")
        return table

    def encode(self, text: str) -> list[int]:
        return self._backend.encode(text, add_special_tokens=False).ids
