"""Reading a World-format vocabulary (`rwkv_vocab_v20230424.txt`) as data, and the facts about
it that make fast exact encoding possible."""

from __future__ import annotations

import ast
from dataclasses import dataclass

from ..errors import TokenizerError


def parse_world_vocab(text: str, source: str) -> dict[int, bytes]:
    """id -> token bytes, from lines `ID LITERAL BYTE_LENGTH` (LITERAL a Python str/bytes literal).

    Literals are read with `ast.literal_eval`, never `eval`. One literal_eval over all of them is
    ~5x faster than one per line; a line that spoils the batch is found by reading line by line.
    """
    entries = []  # (line number, id, literal, declared length)
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        try:
            first, last = line.index(" "), line.rindex(" ")
            entries.append((number, int(line[:first]), line[first + 1:last], int(line[last + 1:])))
        except ValueError:
            raise TokenizerError(f"{source}:{number}: not a vocabulary line: {line[:60]!r}") from None
    if not entries:
        raise TokenizerError(f"{source}: the vocabulary is empty")
    try:
        values = ast.literal_eval("[" + ",".join(e[2] for e in entries) + "]")
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        values = None
    if not isinstance(values, list) or len(values) != len(entries):
        values = [_literal(source, number, literal) for number, _, literal, _ in entries]

    vocab: dict[int, bytes] = {}
    seen: dict[bytes, int] = {}
    for (number, token_id, _, length), value in zip(entries, values):
        if isinstance(value, str):
            value = value.encode("utf-8")
        if not isinstance(value, bytes):
            raise TokenizerError(f"{source}:{number}: the token is not a str or bytes literal")
        if len(value) != length or not value:
            raise TokenizerError(f"{source}:{number}: the token has {len(value)} bytes, "
                                 f"the line says {length}")
        if token_id < 0 or token_id in vocab:
            raise TokenizerError(f"{source}:{number}: id {token_id} is negative or repeated")
        if value in seen:
            raise TokenizerError(f"{source}:{number}: token {value!r} repeats id {seen[value]}")
        vocab[token_id] = value
        seen[value] = token_id
    return vocab


def _literal(source: str, number: int, literal: str) -> object:
    try:
        return ast.literal_eval(literal.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise TokenizerError(f"{source}:{number}: not a Python literal: {literal[:60]}") from None


@dataclass(frozen=True)
class VocabFacts:
    """What greedy longest-match needs to know about a vocabulary, besides the tokens.

    A byte pair (a, b) that occurs inside no token can never be covered by one token, so every
    tokenization, the greedy one included, has a boundary between such a and b; greedy matching
    of the whole text then equals greedy matching of the two sides separately. Encoding splits
    the text only at such places.
    """

    ids: dict[bytes, int]
    pairs: frozenset[bytes]  # every two adjacent bytes inside some token
    # bytes a for which (a, " ") occurs inside a token: a space after them may continue a token
    before_space: bytes
    # bytes that start every token containing them: a boundary always falls before them
    always_start: bytes
    # first two bytes -> lengths (>= 2, longest first) of the tokens that start with them
    lengths: dict[bytes, tuple[int, ...]]
    max_len: int


def token_ids(vocab: dict[int, bytes], source: str) -> dict[bytes, int]:
    """token bytes -> id; refuses a vocabulary that cannot encode every text."""
    ids = {token: token_id for token_id, token in vocab.items()}
    missing = [b for b in range(256) if bytes([b]) not in ids]
    if missing:
        # Greedy matching must always be able to take one byte; the official tokenizer asserts.
        raise TokenizerError(f"{source}: the vocabulary lacks single-byte tokens "
                             f"(e.g. {bytes(missing[:4])!r}), so it cannot encode every text")
    return ids


def vocab_facts(vocab: dict[int, bytes], source: str) -> VocabFacts:
    return facts_from_ids(token_ids(vocab, source))


def facts_from_ids(ids: dict[bytes, int]) -> VocabFacts:
    pairs = {t[i:i + 2] for t in ids for i in range(len(t) - 1)}
    seconds = {p[1] for p in pairs}
    by_prefix: dict[bytes, set[int]] = {}
    for t in ids:
        if len(t) >= 2:
            by_prefix.setdefault(t[:2], set()).add(len(t))
    return VocabFacts(
        ids=ids,
        pairs=frozenset(pairs),
        before_space=bytes(sorted({p[0] for p in pairs if p[1] == 0x20})),
        always_start=bytes(b for b in range(256) if b not in seconds),
        lengths={k: tuple(sorted(v, reverse=True)) for k, v in by_prefix.items()},
        max_len=max(map(len, ids)),
    )


def isolated_chars(facts: VocabFacts) -> dict[int, str]:
    """Characters whose tokens never depend on their neighbours, with those tokens as a string
    of chr(id) (for ids < 65536), for `str.translate`.

    A character is isolated when its first byte always starts a token (so no token reaches into
    it from the left) and no token that greedy matching starts inside it could reach past its end. Most CJK ideographs
    are isolated in the World vocabulary. Only characters of 2 and 3 UTF-8 bytes are looked at.
    """
    starts = set(facts.always_start)
    # Proper prefixes of tokens starting with a non-ASCII byte: "a token continues past here".
    continued = {t[:k] for t in facts.ids if t[0] >= 0x80 for k in range(1, len(t))}
    table: dict[int, str] = {}
    for lead in sorted(starts):
        if 0xC2 <= lead <= 0xDF:
            first, count = ((lead & 0x1F) << 6), 64
        elif 0xE0 <= lead <= 0xEF:
            first, count = ((lead & 0x0F) << 12), 4096
        else:
            continue
        for code in range(first, first + count):
            if 0xD800 <= code <= 0xDFFF or code < 0x80:
                continue
            encoded = chr(code).encode("utf-8")
            if encoded[0] != lead:
                continue
            ids, starts_at = _greedy_ids(encoded, facts.ids)
            # Greedy starts a token at each of starts_at; none of them may reach past the end.
            if max(ids) < 0x10000 and not any(encoded[k:] in continued for k in starts_at):
                table[code] = "".join(map(chr, ids))
    return table


def _greedy_ids(data: bytes, ids: dict[bytes, int]) -> tuple[list[int], list[int]]:
    out, starts, i = [], [], 0
    while i < len(data):
        length = next(n for n in range(len(data) - i, 0, -1) if data[i:i + n] in ids)
        out.append(ids[data[i:i + length]])
        starts.append(i)
        i += length
    return out, starts
