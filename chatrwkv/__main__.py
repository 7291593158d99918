"""`python -m chatrwkv`: the same as the `chatrwkv` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
