"""Write random-weight checkpoints of the official RWKV sizes, for `chatrwkv bench`.

    python benchmarks/make_checkpoints.py v7-0.1b v7-0.4b --out ~/rwkv-bench
    python benchmarks/make_checkpoints.py v7-7.2b v7-13.3b --out /tmp/big   # .safetensors
    python benchmarks/make_checkpoints.py --list

Files are `OUT/NAME.pth` in the official key layout and dtype (bf16), so the official `rwkv`
package reads them too (`chatrwkv bench --reference`). Decode and prefill speed do not depend on
the weight values; the values are in trained ranges so nothing overflows. An existing file is
kept unless --force.

The v7 sizes are made tensor by tensor (synth.stream_checkpoint): never the fp32 model in
memory. A .pth is written whole by torch.save, so it holds the bf16 model (5.8 GB for 2.9B);
sizes past that (7.2B: 14 GB, 13.3B: 27 GB) are written as .safetensors, streamed to disk with
one tensor in memory at a time (`--format` chooses; chatrwkv reads both).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _describe(version: str, dims: dict[str, int]) -> str:
    return f"v{version} L{dims['n_layer']} D{dims['n_embd']} vocab {dims['vocab_size']}"


def _suffix(fmt: str, dims: dict[str, int]) -> str:
    """.pth as published, unless the bf16 model would not fit in memory to torch.save it."""
    if fmt == "auto":
        fmt = "pth" if dims["n_layer"] * dims["n_embd"] ** 2 * 12 < 3e9 else "safetensors"
    return f".{fmt}"


def build_parser(sizes: dict) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="Write random-weight RWKV checkpoints of the "
                                 "official sizes (bf16 .pth).")
    ap.add_argument("names", nargs="*", metavar="NAME",
                    help=f"sizes to write ({', '.join(sizes)}), or 'all'")
    ap.add_argument("--out", type=Path, default=Path("bench-models"),
                    help="directory (default: ./bench-models)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="overwrite existing files")
    ap.add_argument("--list", action="store_true", help="list the sizes and exit")
    ap.add_argument("--format", choices=("auto", "pth", "safetensors"), default="auto",
                    help="auto: .pth up to 3B parameters, .safetensors beyond")
    return ap


def main(argv: list[str] | None = None) -> int:
    from chatrwkv.synth import SIZES, STREAMED_VERSIONS, stream_checkpoint, write_checkpoint

    ap = build_parser(SIZES)
    args = ap.parse_args(argv)
    if args.list:
        for name, (version, dims) in SIZES.items():
            print(f"{name:10} {_describe(version, dims)}")
        return 0
    names = list(SIZES) if args.names == ["all"] else args.names
    if not names:
        ap.error("name at least one size (or 'all'); --list shows them")
    unknown = [n for n in names if n not in SIZES]
    if unknown:
        ap.error(f"unknown size {unknown[0]!r}; one of: {', '.join(SIZES)}")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in names:
        version, dims = SIZES[name]
        path = args.out / f"{name}{_suffix(args.format, dims)}"
        if path.exists() and not args.force:
            print(f"{path}: exists, kept")
            continue
        print(f"{path}: writing {_describe(version, dims)} ...", flush=True)
        if version in STREAMED_VERSIONS:
            stream_checkpoint(path, version, seed=args.seed, **dims)
        elif path.suffix == ".safetensors":
            ap.error(f"{name}: only v7 sizes are written as .safetensors")
        else:
            write_checkpoint(path, version, seed=args.seed, **dims)
        print(f"{path}: {path.stat().st_size / 2**30:.2f} GiB")
    return 0


if __name__ == "__main__":
    # Run as a script from a checkout: make the repository's chatrwkv importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
