"""The demo model shipped inside the package, used when no `--model` is given."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

DEMO_MODEL = Path(str(resources.files("chatrwkv") / "data" / "models" / "rwkv7-shakespeare-tiny.pth"))
DEMO_PROMPT = "shakespeare"
DEMO_BANNER = ("This is chatrwkv's tiny demo model (RWKV-7, 6 layers, trained on Shakespeare on a "
               "2-core CPU): expect Elizabethan babble, not answers. For a real model: "
               "`chatrwkv pull g1-0.4b`, then `chatrwkv --model g1-0.4b`.")
