"""Shakespeare's plays as chat text: each speech becomes "NAME: text\\n\\n".

The Gutenberg (Globe) texts put the speaker on a line of its own ending in a full stop ("HAMLET.",
"Ber.", "FIRST WITCH."), then the speech, then a blank line. Stage directions in brackets and the
non-dramatic poems are dropped. The data is needed to train the demo model, never at run time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# Plays held out of training, for evaluation (a comedy, a tragedy, a history, a romance).
HELD_OUT = ("twelfth_night", "macbeth", "henry_v", "tempest")

_SPEAKER = re.compile(r"^([A-Z][A-Za-z'\- ]{0,28}[A-Za-z])\.$")
_STAGE = re.compile(r"\[[^\]]*\]")
_NOT_A_SPEAKER = {"ACT", "SCENE", "EPILOGUE", "PROLOGUE", "THE END", "FINIS", "EXEUNT", "EXIT"}


@dataclass(frozen=True)
class Speech:
    speaker: str
    text: str


def _speaker_name(line: str) -> str | None:
    m = _SPEAKER.match(line.strip())
    if not m:
        return None
    name = m.group(1)
    if name.upper().split(" ")[0] in _NOT_A_SPEAKER or name.upper() in _NOT_A_SPEAKER:
        return None
    return " ".join(w.capitalize() for w in name.split())


def parse_play(text: str) -> list[Speech]:
    """The speeches of one play, in order; text lines keep their verse line breaks."""
    speeches: list[Speech] = []
    for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n")):
        lines = [ln.rstrip() for ln in block.strip("\n").split("\n")]
        if len(lines) < 2:
            continue
        name = _speaker_name(lines[0])
        if name is None:
            continue
        body = _STAGE.sub("", "\n".join(ln.strip() for ln in lines[1:]))
        body = "\n".join(ln for ln in (x.strip() for x in body.split("\n")) if ln)
        if body and not body.startswith("["):
            speeches.append(Speech(name, body))
    return speeches


def chat_text(speeches: list[Speech]) -> str:
    """The chat format the CLI uses: "NAME: text\\n\\n" for each speech."""
    return "".join(f"{s.speaker}: {s.text}\n\n" for s in speeches)


def load_corpus(folder: Path | str) -> dict[str, str]:
    """Play name -> chat text, for every play in `folder` that has speeches."""
    corpus = {}
    for path in sorted(Path(folder).glob("*_gut.txt")):
        name = path.stem.removesuffix("_gut")
        speeches = parse_play(path.read_text(encoding="utf-8", errors="replace"))
        if len(speeches) >= 50:  # the poems and sonnets have no speakers
            corpus[name] = chat_text(speeches)
    return corpus


def split_corpus(corpus: dict[str, str],
                 held_out: tuple[str, ...] = HELD_OUT) -> tuple[str, str]:
    """(training text, held-out text); held-out plays are those named in `held_out`."""
    train = "".join(t for n, t in corpus.items() if n not in held_out)
    test = "".join(t for n, t in corpus.items() if n in held_out)
    return train, test
