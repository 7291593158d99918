"""Fakes for the chat layers: a byte-level tokenizer and a tiny deterministic RNN "model".

They implement the interfaces the session uses (tokenizer: encode/decode/decode_bytes/stream/ids;
model: zero_state/forward/chunk_len/config), so the session and the UI can be tested without the
engine. The model is a real recurrence: its logits depend on every token fed, in order.
"""

from __future__ import annotations

import codecs
import dataclasses

import torch

from chatrwkv.state import State

EOT, DOUBLE_NEWLINE = 0, 257
VOCAB = 260


class FakeStream:
    def __init__(self, tok: FakeTokenizer):
        self.tok = tok
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token: int) -> str:
        return self.decoder.decode(self.tok.decode_bytes([token]))

    def flush(self) -> str:
        return self.decoder.decode(b"", final=True)


class FakeTokenizer:
    """Ids: 0 end-of-text, 1 + b for byte b, 257 "\\n\\n" (like World's 261 / Pile's 535)."""

    vocab_size = VOCAB
    end_of_text_id = EOT
    newline_id = 1 + 10
    double_newline_id = DOUBLE_NEWLINE

    def __init__(self, name: str = "world"):
        self.name = name

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for i, part in enumerate(text.split("\n\n")):
            if i:
                ids.append(DOUBLE_NEWLINE)
            ids.extend(1 + b for b in part.encode("utf-8"))
        return ids

    def decode_bytes(self, ids) -> bytes:
        out = bytearray()
        for t in ids:
            if t == DOUBLE_NEWLINE:
                out += b"\n\n"
            elif 1 <= t <= 256:
                out.append(t - 1)
        return bytes(out)

    def decode(self, ids) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def stream(self) -> FakeStream:
        return FakeStream(self)


@dataclasses.dataclass
class FakeState(State):
    h: torch.Tensor  # [1, D]


@dataclasses.dataclass(frozen=True)
class FakeConfig:
    vocab_size: int = VOCAB
    version: str = "fake"


class FakeModel:
    """h <- tanh(A h + E[token]); logits = U h + bias. Text-like bias: letters and newlines
    are likely, so replies are short and end on their own."""

    chunk_len = 4
    config = FakeConfig()
    dim = 32

    def __init__(self, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        d = self.dim
        self.A = torch.randn(d, d, generator=g) / d ** 0.5
        self.E = torch.randn(VOCAB, d, generator=g)
        self.U = torch.randn(VOCAB, d, generator=g) * 1.5
        self.bias = torch.full((VOCAB,), -9.0)
        for ch in "abcdefghijklmnopqrstuvwxyz ":
            self.bias[1 + ord(ch)] = 0.0
        self.bias[1 + 10] = -1.0
        self.bias[DOUBLE_NEWLINE] = -1.5
        self.calls: list[list[int]] = []

    def zero_state(self) -> FakeState:
        return FakeState(h=torch.zeros(1, self.dim))

    def describe(self) -> str:
        return "fake RNN (tests)"

    def identity(self) -> dict[str, str]:
        return {"version": "fake", "model": "FakeModel", "fingerprint": self.fingerprint}

    @property
    def fingerprint(self) -> str:
        return f"{float(self.A.sum()):.6f}"

    def _advance(self, tokens, state: FakeState) -> torch.Tensor:
        """Feeds `tokens` through the recurrence (recorded in `calls`); the new hidden vector."""
        assert tokens, "forward needs tokens"
        self.calls.append(list(tokens))
        h = state.h[0]
        for t in tokens:
            h = torch.tanh(self.A @ h + self.E[t])
        state.h[0] = h
        return h

    def forward(self, tokens, state: FakeState, full_output: bool = False) -> torch.Tensor:
        return self.U @ self._advance(tokens, state) + self.bias


@dataclasses.dataclass
class LastTokenState(State):
    last: torch.Tensor  # [1] the last token fed (-1: none)


class BigramModel:
    """Greedy-friendly: after token t the logits strongly favour `follow[t]` (by characters)."""

    chunk_len = 8
    config = FakeConfig()

    def __init__(self, follow: dict[str, str], default: str = "a"):
        tok = FakeTokenizer()
        self.table = torch.zeros(VOCAB, VOCAB)
        self.table[:, tok.encode(default)[0]] = 100.0
        for a, b in follow.items():
            self.table[tok.encode(a)[0]] = 0.0
            self.table[tok.encode(a)[0], tok.encode(b)[0]] = 100.0

    def zero_state(self) -> LastTokenState:
        return LastTokenState(last=torch.tensor([-1]))

    def describe(self) -> str:
        return "bigram (tests)"

    def identity(self) -> dict[str, str]:
        return {"version": "fake", "model": "BigramModel",
                "fingerprint": f"{float(self.table.sum()):.1f}"}

    def forward(self, tokens, state: LastTokenState, full_output: bool = False) -> torch.Tensor:
        state.last[0] = tokens[-1]
        return self.table[tokens[-1]].clone()


@dataclasses.dataclass
class ScriptState(State):
    h: torch.Tensor    # [1, D] the FakeModel recurrence: depends on every token fed, in order
    pos: torch.Tensor  # [1] how far into the script the tokens fed so far follow it


class ScriptModel(FakeModel):
    """Says `script` (token ids) after any prefill: the logits favour the script's next token
    by a wide margin while the tokens fed follow it, and fall back to the script's start after
    anything else. Its state is FakeModel's real recurrence plus that position."""

    chunk_len = 64

    def __init__(self, script: list[int], vocab: int = VOCAB, after: int = DOUBLE_NEWLINE):
        super().__init__()
        self.script, self.vocab, self.after = script, vocab, after
        g = torch.Generator().manual_seed(1)
        self.E = torch.randn(vocab, self.dim, generator=g)

    def zero_state(self) -> ScriptState:
        return ScriptState(h=torch.zeros(1, self.dim), pos=torch.zeros(1, dtype=torch.long))

    def forward(self, tokens, state: ScriptState, full_output: bool = False) -> torch.Tensor:
        self._advance(tokens, state)
        pos = int(state.pos[0])
        follows = len(tokens) == 1 and pos < len(self.script) and tokens[0] == self.script[pos]
        state.pos[0] = pos + 1 if follows else 0
        logits = torch.zeros(self.vocab)
        nxt = int(state.pos[0])
        logits[self.script[nxt] if nxt < len(self.script) else self.after] = 100.0
        return logits


def read_session_file(path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """A saved session file's metadata and tensors, for tests that damage or rewrite one."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
