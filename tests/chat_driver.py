"""Runs the real UI (interactive in a pty, or piped) over the fake model and tokenizer.

    python tests/chat_driver.py [--slow] [--short] [--escapes] | --g1 [--show-thinking]
--slow makes every forward call take 20 ms and the model babble "abab..." forever, so a test
can press Ctrl-C in the middle of a long reply; with --short a chat reply ends by itself after
100 tokens (2 s). --escapes makes the reply " ESC[31mR CR !": a model trying to recolour the
terminal and overwrite its line. --g1 chats with the G1 prompt in think mode, and every reply
is the scripted THOUGHT (thinking, then an answer), 30 ms a token. --gate FILE builds the session
on the background load the terminal uses at start-up, finishing only once FILE exists (it fails
with one ChatRWKVError if FILE holds "fail").
"""

import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from chat_fakes import BigramModel, FakeTokenizer, ScriptModel

from chatrwkv import ui
from chatrwkv.backgroundload import BackgroundLoad
from chatrwkv.chatsettings import G1_SAMPLING, ChatOptions
from chatrwkv.errors import ChatRWKVError
from chatrwkv.prompts import load_prompt
from chatrwkv.session import Session

# Greedy paths: after "Assistant:" the reply " Yes!\n\n"; after "+gen ... n" the text " Yes!\n\n\n..."
YES = {":": " ", " ": "Y", "Y": "e", "e": "s", "s": "!", "!": "\n", "\n": "\n", "n": " "}
ESCAPES = {":": " ", " ": "\x1b", "\x1b": "[", "[": "3", "3": "1", "1": "m", "m": "R", "R": "\r",
           "\r": "!", "!": "\n", "\n": "\n"}


THOUGHT = ">\nThe user says hello. I should greet them back.\n</think>\nHello there!\n\n"


class SlowScript(ScriptModel):
    def forward(self, tokens, state, full_output=False):
        time.sleep(0.03)
        return super().forward(tokens, state, full_output)


class Slow(BigramModel):
    def forward(self, tokens, state, full_output=False):
        time.sleep(0.02)
        return super().forward(tokens, state, full_output)


def main() -> int:
    if "--g1" in sys.argv:
        tok = FakeTokenizer()
        prompt = load_prompt("g1")
        session = Session(SlowScript(tok.encode(THOUGHT)), tok, prompt, seed=0,
                          settings=G1_SAMPLING, options=ChatOptions(think="think"))
        session.start(prompt)
        return ui.run(session, interactive=sys.stdin.isatty(),
                      show_thinking="--show-thinking" in sys.argv)
    if "--gate" in sys.argv:
        gate = Path(sys.argv[sys.argv.index("--gate") + 1])
        prompt = load_prompt("english-world")

        def build() -> Session:
            while not gate.exists():
                time.sleep(0.02)
            if gate.read_text() == "fail":
                raise ChatRWKVError("model.pth: damaged checkpoint (test)")
            session = Session(BigramModel(YES), FakeTokenizer(), prompt, seed=0, max_tokens=12)
            session.start(prompt)
            return session

        return ui.run(None, interactive=True, loading=BackgroundLoad(build), prompt=prompt)
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
