"""`python chat.py [options]`: the same as the `chatrwkv` command, from a source checkout."""

import sys

from chatrwkv.cli import main

if __name__ == "__main__":
    sys.exit(main())
