"""What every tokenizer shares: decoding through a table of token bytes, and streaming."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence

from .stream import StreamDecoder


class Tokenizer(ABC):
    """A tokenizer that knows the bytes of each of its tokens.

    Subclasses set `name`, `vocab_size`, the special ids and `_token_bytes` (index = id; b"" for an
    id with no token, such as World id 0), `_ids_by_bytes` (its inverse), and implement `encode`.
    """

    name: str
    vocab_size: int  # embedding rows of the model this tokenizer is used with
    newline_id: int
    double_newline_id: int
    end_of_text_id: int = 0
    _token_bytes: Sequence[bytes]
    _ids_by_bytes: dict[bytes, int]

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`."""

    @property
    def max_id(self) -> int:
        """The largest id this tokenizer can produce or decode."""
        return len(self._token_bytes) - 1

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one token; b"" for an id outside the vocabulary."""
        if 0 <= token_id < len(self._token_bytes):
            return self._token_bytes[token_id]
        return b""

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        table, n = self._token_bytes, len(self._token_bytes)
        return b"".join([table[i] if 0 <= i < n else b"" for i in map(int, ids)])

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; invalid UTF-8 becomes U+FFFD and unknown ids decode to nothing."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def stream(self) -> StreamDecoder:
        return StreamDecoder(self.token_bytes)

    def id_of(self, piece: bytes) -> int | None:
        """The id of the token that is exactly `piece`, if there is one."""
        return self._ids_by_bytes.get(piece)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} ids<={self.max_id} rows={self.vocab_size}>"
