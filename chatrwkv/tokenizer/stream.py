"""Incremental decoding of generated ids into text at complete UTF-8 characters."""

from __future__ import annotations

import codecs
from collections.abc import Callable


class StreamDecoder:
    """Turns ids into text one at a time; a character split over several tokens comes out once,
    whole, when its last byte arrives.

    The standard incremental UTF-8 decoder does the byte work: it holds back an incomplete tail,
    replaces bytes that can never become valid at once, and `flush()` replaces a tail that the end
    of the stream left incomplete. Joining every `feed()` and the `flush()` therefore gives exactly
    `bytes.decode("utf-8", "replace")` of all the token bytes.
    """

    def __init__(self, token_bytes: Callable[[int], bytes]) -> None:
        self._token_bytes = token_bytes
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_id: int) -> str:
        """The text that token completes (often "", never a partial character)."""
        return self._decoder.decode(self._token_bytes(token_id), final=False)

    def feed_bytes(self, data: bytes) -> str:
        """Like `feed`, for raw bytes."""
        return self._decoder.decode(data, final=False)

    def flush(self) -> str:
        """Whatever is held back, an incomplete tail as U+FFFD; the decoder can then be reused."""
        text = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        return text

    @property
    def pending(self) -> bytes:
        """Bytes held back waiting for the rest of a character."""
        return self._decoder.getstate()[0]
