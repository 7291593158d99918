"""Short model names (`g1-0.4b`, `world-1.5b`, `v6-1.6b`, `pile-169m`) and official file names.

Pure functions, no I/O: `hub.py` matches a short name against the files it lists in the official
repositories, and `modelstore.py` against the files already in the models directory, so the name
that pulled a model also finds it again for `--model`.

An official file name is a release line's prefix followed by `-`-separated tokens, for example
`rwkv7-g1a-0.4b-20250905-ctx4096.pth` or `RWKV-x060-World-1B6-v2.1-20240328-ctx4096.pth`. Exactly
one token is the size and one the date; every other token must look like a training version,
context length or run number. A file with any other word in it (`Instruct`, `CHNtuned`, `preview`)
is a variant: it is never picked by a short name, only by its explicit path.

Architecture variants are lines of their own, named by a suffix: the DeepEmbed G models
(`rwkv7a-g1d-0.1b-20260212-ctx8192.pth`) are `g1d-0.1b-de` (or `g1-0.1b-de`, `v7-0.1b-de`);
`g1-0.1b` never picks one, nor `g1-0.1b-de` a plain file.
"""

from __future__ import annotations

import dataclasses
import re

_SIZE = re.compile(r"(\d+(?:\.\d+)?)([bm])(\d*)", re.IGNORECASE)   # 0.4b, 1B6, 169M, 7.2b
_DATE = re.compile(r"20\d{6}")
_OTHER_TOKEN = re.compile(r"v\d+(?:\.\d+)*|ctx\d+k?|fixed|test\d+|\d+", re.IGNORECASE)
_SUFFIXES = (".pth", ".safetensors")


@dataclasses.dataclass(frozen=True)
class Line:
    """A line of official releases: one file-name prefix, published in known repositories."""

    family: str        # what a short name says: "g" (G1/G0 chat models), "world", "pile"
    version: str       # RWKV architecture: "7", "6", "5", "4"
    repos: tuple[str, ...]   # "{size}" is filled with the size as the repo names spell it
    prefix: str        # regex for the leading tokens; group `gen` is the G-generation
    variant: str = ""  # the short-name suffix of an architecture variant: "de" (DeepEmbed)


LINES: tuple[Line, ...] = (
    Line("g", "7", ("BlinkDL/rwkv7-g1",), r"rwkv7-(?P<gen>g\d[a-z]?\d*)"),
    # rwkv7a = RWKV-7 DeepEmbed (RWKV-LM `RWKV-v7/rwkv_v7a_demo.py`), published next to the G1s
    Line("g", "7", ("BlinkDL/rwkv7-g1",), r"rwkv7a-(?P<gen>g\d[a-z]?\d*)", variant="de"),
    Line("world", "7", ("BlinkDL/rwkv-7-world",), r"RWKV-x070-World"),
    Line("world", "6", ("BlinkDL/rwkv-6-world",), r"RWKV-x060-World"),
    Line("world", "5", ("BlinkDL/rwkv-5-world",), r"RWKV-5-World"),
    Line("world", "4", ("BlinkDL/rwkv-4-world",), r"RWKV-4-World"),
    Line("pile", "4", ("BlinkDL/rwkv-4-pile-{size}",), r"RWKV-4-Pile"),
)

SHORT_NAME_HELP = ("g1-SIZE (also g1a-, g0-, ...), world-SIZE, v7-SIZE, v6-SIZE, v5-SIZE, "
                   "v4-SIZE, pile-SIZE; SIZE like 0.4b, 1.5b, 169m; a -de suffix (g1d-0.1b-de) "
                   "for the DeepEmbed models")


def version_label(version: str) -> str:
    """How `list` and `info` name a detected version: 'v7.0', 'v7.0a DeepEmbed'."""
    return f"v{version}" + (" DeepEmbed" if version == "7.0a" else "")


def parse_size(text: str) -> float | None:
    """Parameters in millions: '0.4b' -> 400, '1B6' -> 1600, '169M' -> 169; None if not a size."""
    m = _SIZE.fullmatch(text)
    if m is None or (m.group(3) and "." in m.group(1)):
        return None
    value = float(m.group(1) + ("." + m.group(3) if m.group(3) else ""))
    return round(value * (1000 if m.group(2).lower() == "b" else 1), 1)


def format_size(millions: float) -> str:
    """The short-name spelling: 400 -> '0.4b', 1600 -> '1.6b', 169 -> '169m'."""
    if millions >= 1000 or millions % 100 == 0:
        return f"{millions / 1000:g}b"
    return f"{millions:g}m"


def repo_size_token(millions: float) -> str:
    """How BlinkDL's per-size repositories spell a size: 169m, 430m, 1b5, 3b, 14b."""
    if millions < 1000:
        return f"{millions:g}m"
    whole, frac = divmod(round(millions), 1000)
    return f"{whole}b{str(frac).rstrip('0')}" if frac else f"{whole}b"


@dataclasses.dataclass(frozen=True)
class Release:
    """An official checkpoint file, understood from its name."""

    filename: str
    line: Line
    gen: str           # "g1a" for G models, "" otherwise
    size: float        # millions of parameters
    date: str          # YYYYMMDD

    def sort_key(self) -> tuple[str, str, str]:
        return (self.date, self.gen, self.filename)


def parse_release(filename: str) -> Release | None:
    """The release a base-model file name describes, or None for variants and other files."""
    name = filename.rsplit("/", 1)[-1]
    stem = next((name[: -len(s)] for s in _SUFFIXES if name.endswith(s)), None)
    if stem is None:
        return None
    for line in LINES:
        head = re.match(line.prefix + "-", stem, re.IGNORECASE)
        if head is None:
            continue
        sizes, dates = [], []
        for token in stem[head.end():].split("-"):
            if (size := parse_size(token)) is not None:
                sizes.append(size)
            elif _DATE.fullmatch(token):
                dates.append(token)
            elif not _OTHER_TOKEN.fullmatch(token):
                return None
        if len(sizes) != 1 or len(dates) != 1:
            return None
        gen = (head.groupdict().get("gen") or "").lower()
        return Release(name, line, gen, sizes[0], dates[0])
    return None


@dataclasses.dataclass(frozen=True)
class ShortName:
    """`family-size`, where family is a G generation (`g1`, `g1a`), `world`, `pile` or `vN`."""

    text: str
    family: str
    size: float
    variant: str = ""  # "de": the DeepEmbed line

    def lines(self) -> tuple[Line, ...]:
        if self.family.startswith("v"):
            return tuple(line for line in LINES if line.version == self.family[1:]
                         and line.variant == self.variant)
        kind = "g" if re.fullmatch(r"g\d.*", self.family) else self.family
        return tuple(line for line in LINES if line.family == kind and line.variant == self.variant)

    def repos(self) -> list[str]:
        token = repo_size_token(self.size)
        return list(dict.fromkeys(r.format(size=token) for line in self.lines()
                                  for r in line.repos))

    def matches_family(self, release: Release) -> bool:
        if release.line not in self.lines():
            return False
        if self.family.startswith("g"):
            return _generation_matches(release.gen, self.family)
        return True

    def matches(self, release: Release) -> bool:
        return self.matches_family(release) and release.size == self.size


def _generation_matches(file_gen: str, wanted: str) -> bool:
    """'g1' takes g1, g1a, g1d, g1a3 (not g10); 'g1a' takes g1a, g1a2, g1a3."""
    if not file_gen.startswith(wanted):
        return False
    rest = file_gen[len(wanted):]
    return not rest or rest[0].isdigit() != wanted[-1].isdigit()


def parse_short_name(text: str) -> ShortName | None:
    m = re.fullmatch(r"(g\d[a-z]?\d*|world|pile|v[4-7])-([0-9.]+[bm]\d*)(-de)?", text.strip(),
                     re.IGNORECASE)
    if m is None or (size := parse_size(m.group(2))) is None:
        return None
    short = ShortName(text.strip(), m.group(1).lower(), size, "de" if m.group(3) else "")
    return short if short.lines() else None  # world-0.1b-de: no such line


def newest(releases: list[Release]) -> Release | None:
    """The latest release: by date, then generation letter, then name (deterministic)."""
    return max(releases, key=Release.sort_key, default=None)
