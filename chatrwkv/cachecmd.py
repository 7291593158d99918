"""`chatrwkv cache [list]` and `chatrwkv cache clear [MODEL]`: the converted-weight caches.

A cache is only ever a faster start: removing one costs one slower load, which writes it again.
"""

from __future__ import annotations

import argparse
import sys

from .models.weightcache import cache_dir, cache_files, clear, describe


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def cache_rows() -> list[tuple[str, str, str, str]]:
    """(file, dtype, size, source) for each cache file; `list` prints them too."""
    rows = []
    for p in cache_files():
        meta = describe(p)
        source = meta.get("source", "(unreadable: removed or rebuilt at its next load)")
        rows.append((p.name, meta.get("dtype", "?"), _size(p.stat().st_size), source))
    return rows


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="chatrwkv cache",
                                 description="Converted weights (int8, ...) kept for fast starts.")
    sub = ap.add_subparsers(dest="command")
    sub.add_parser("list", help="the cache files (the default)")
    p = sub.add_parser("clear", help="remove the cache files")
    p.add_argument("model", nargs="?",
                   help="only this model's (its file name without the suffix, or a path)")
    try:
        args = ap.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    if args.command == "clear":
        stem = None
        if args.model:
            from pathlib import Path

            stem = Path(args.model).name.removesuffix(".pth").removesuffix(".safetensors")
        removed = clear(stem)
        total = sum(1 for _ in removed)
        print(f"removed {total} cache file{'s' * (total != 1)} from {cache_dir()}")
        return 0
    rows = cache_rows()
    if not rows:
        print(f"no converted-weight caches in {cache_dir()}")
        return 0
    print(f"converted-weight caches in {cache_dir()}:")
    for name, dtype, size, source in rows:
        print(f"  {name}  {dtype}  {size}  from {source}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
