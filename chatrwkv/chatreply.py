"""Reading a chat reply as it streams: where it stops, what is thinking and what is the answer,
and how much of each can be shown yet. Pure text in, events out; the session feeds it.

A reply stops at the first blank line or at "\\n{user}:" (ChatRWKV's rule; the official G1
chat demo, ChatRWKV `API_DEMO_CHAT.py`, stops at "\\n\\n" too). With `think`, the reply is read
after the think prefix the session fed (" <think", " <think>\\n</think"), cut at the tags by
templates.split_reply, and the stops are looked for in each part after its leading blanks
(a thought opens with ">\\n"). Text that may be the start of a stop or of `</think>` is held back
until the next piece decides.
"""

from __future__ import annotations

from .events import Chunk, ThinkChunk
from .templates import THINK_CLOSE, Split, split_reply


def _lead(text: str) -> int:
    return len(text) - len(text.lstrip())


def safe_end(text: str, holds: tuple[str, ...]) -> int:
    """How much of `text` can be shown: hold back a tail that may be the start of a hold."""
    end = len(text)
    for hold in holds:
        for k in range(min(len(hold) - 1, len(text)), 0, -1):
            if text.endswith(hold[:k]):
                end = min(end, len(text) - k)
                break
    return end


class ReplyReader:
    def __init__(self, prefix: str, stops: tuple[str, ...], think: bool):
        self.prefix, self.stops, self.think = prefix, stops, think
        self.text = ""                 # the generated text, uncut
        self.cut: int | None = None    # where in `text` a stop begins
        self.shown_thinking = 0
        self.shown = 0

    def split(self, final: bool = False) -> Split:
        """The reply so far (or, `final`, as kept) cut into thinking and answer, with positions
        in the generated text (the thinking of a fast reply starts inside the prefix: < 0)."""
        kept = self.kept() if final else self.text
        if not self.think:
            return Split("", kept, True, None, 0)
        # a fast prefix ends "</think": its ">" is the model's to write, and closes it if it
        # does not (as if it had)
        pad = ">" if self.prefix.endswith(THINK_CLOSE[:-1]) and not kept.startswith(">") else ""
        sp = split_reply(self.prefix + pad + kept, final)
        if sp.think_at is None:  # no think block (or not yet sure): the text is the answer
            return Split("", kept if sp.closed else "", sp.closed, None, 0)
        shift = len(self.prefix) + len(pad)
        return Split(sp.thinking, sp.answer, sp.closed, sp.think_at - shift,
                     sp.answer_at - shift)

    def kept(self) -> str:
        """The reply without its stop (or its trailing newlines, if it did not stop)."""
        return self.text[:self.cut] if self.cut is not None else self.text.rstrip("\n")

    def _find_stop(self, sp: Split) -> int | None:
        """Where in `text` the first stop begins, if there is one."""
        parts = [(sp.answer, sp.answer_at)]
        if sp.think_at is not None:
            parts.insert(0, (sp.thinking, sp.think_at))
        for part, at in parts:
            skip = _lead(part) if self.think else 0
            found = [i for i in (part.find(s, skip) for s in self.stops) if i >= 0]
            if found:
                return max(0, at + min(found))
        return None

    def feed(self, piece: str) -> list[Chunk | ThinkChunk]:
        """Take the next decoded piece; the events to show now. Check `stopped` after."""
        self.text += piece
        stop = self._find_stop(self.split())
        if stop is not None:
            self.cut = stop
            return []
        return self._show(self.split(), final=False)

    @property
    def stopped(self) -> bool:
        return self.cut is not None

    def finish(self) -> list[Chunk | ThinkChunk]:
        """The end of the reply (a stop, the length bound, or Ctrl-C); the last events."""
        return self._show(self.split(final=True), final=True)

    def _show(self, sp: Split, final: bool) -> list[Chunk | ThinkChunk]:
        out: list[Chunk | ThinkChunk] = []
        t = sp.thinking
        if sp.think_at is not None:
            if sp.closed or final:
                end = len(t.rstrip())
            else:
                # blanks wait for the text after them: the ones before </think> are not shown
                end = len(t[:safe_end(t, (THINK_CLOSE, *self.stops))].rstrip())
            begin = max(self.shown_thinking, _lead(t))
            if end > begin:
                out.append(ThinkChunk(t[begin:end]))
                self.shown_thinking = end
        a = sp.answer
        begin = max(self.shown, _lead(a))
        end = len(a.rstrip()) if final else safe_end(a, self.stops)
        if end > begin:
            out.append(Chunk(a[begin:end]))
            self.shown = end
        return out
