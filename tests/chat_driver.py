"""Runs the real UI (interactive in a pty, or piped) over the fake model and tokenizer.

    python tests/chat_driver.py [--slow] [--short] [--escapes]
--slow makes every forward call take 20 ms and the model babble "abab..." forever, so a test
can press Ctrl-C in the middle of a long reply; with --short a chat reply ends by itself after
100 tokens (2 s). --escapes makes the reply " ESC[31mR CR !": a model trying to recolour the
terminal and overwrite its line.
"""

import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from chat_fakes import BigramModel, FakeTokenizer

from chatrwkv import ui
from chatrwkv.prompts import load_prompt
from chatrwkv.session import Session

# Greedy paths: after "Assistant:" the reply " Yes!\n\n"; after "+gen ... n" the text " Yes!\n\n\n..."
YES = {":": " ", " ": "Y", "Y": "e", "e": "s", "s": "!", "!": "\n", "\n": "\n", "n": " "}
ESCAPES = {":": " ", " ": "\x1b", "\x1b": "[", "[": "3", "3": "1", "1": "m", "m": "R", "R": "\r",
           "\r": "!", "!": "\n", "\n": "\n"}


class Slow(BigramModel):
    def forward(self, tokens, state, full_output=False):
        time.sleep(0.02)
        return super().forward(tokens, state, full_output)


def main() -> int:
    slow = "--slow" in sys.argv
    model = Slow({"a": "b", "b": "a", " ": "a", ":": " "}) if slow else BigramModel(
        ESCAPES if "--escapes" in sys.argv else YES)
    prompt = load_prompt("english-world")
    reply_tokens = {"chat_max_tokens": 100} if "--short" in sys.argv else {}
    session = Session(model, FakeTokenizer(), prompt, seed=0, max_tokens=5000 if slow else 12,
                      **reply_tokens)
    session.start(prompt)
    return ui.run(session, interactive=sys.stdin.isatty())


if __name__ == "__main__":
    sys.exit(main())
