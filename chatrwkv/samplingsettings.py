"""What a reply is sampled with, and the one range check for every place a setting enters
(options, per-line overrides, `+set`, session files). No torch here: the command line and the
terminal UI use it before the model (and torch) are loaded."""

from __future__ import annotations

import dataclasses
import math

from .commands import TEMP_MAX


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """What a reply is sampled with (ChatRWKV v2's chat defaults)."""

    temperature: float = 1.2
    top_p: float = 0.5
    top_k: int = 0           # 0: off
    presence: float = 0.4    # subtracted once a token has appeared
    frequency: float = 0.4   # subtracted per (decayed) occurrence
    decay: float = 0.996     # occurrences shrink by this factor per generated token

    def with_overrides(self, temperature: float | None, top_p: float | None) -> SamplingSettings:
        changes = {k: v for k, v in (("temperature", temperature), ("top_p", top_p))
                   if v is not None}
        return dataclasses.replace(self, **changes)


PENALTY_MAX = 100.0  # a penalty past the logits' whole range bans the token; more overflows fp32
# field -> (lowest, highest) allowed; every value must also be a finite number of its field's type
SETTING_RANGES: dict[str, tuple[float, float]] = {
    "temperature": (0.0, TEMP_MAX), "top_p": (0.0, 1.0), "top_k": (0, 2**31 - 1),
    "presence": (0.0, PENALTY_MAX), "frequency": (0.0, PENALTY_MAX), "decay": (0.0, 1.0)}


def setting_problem(name: str, value: object, kind: str = "float") -> str | None:
    """None when `value` is usable for setting `name` (of type `kind`), else the complaint: the
    one check for command-line options, per-line overrides and loaded session files."""
    if kind in ("float", "int"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or (kind == "int" and not isinstance(value, int)):
            return f"{name} must be a {'whole ' if kind == 'int' else ''}number"
        if not math.isfinite(value):
            return f"{name} must be a finite number"
        low, high = SETTING_RANGES.get(name, (-math.inf, math.inf))
        if not low <= value <= high:
            return f"{name} must be from {low:g} to {high:g}"
        return None
    expected = {"str": str, "bool": bool}.get(kind)
    if expected is not None and not isinstance(value, expected):
        return f"{name} must be a {kind}"
    return None


def settings_from_dict(data: object) -> SamplingSettings:
    """SamplingSettings from stored data (a session file), every field checked; ValueError
    names the first bad one."""
    if not isinstance(data, dict):
        raise TypeError("settings must be a table")
    fields = {f.name: str(f.type) for f in dataclasses.fields(SamplingSettings)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown setting {unknown[0]!r}")
    for name, value in data.items():
        problem = setting_problem(name, value, fields[name])
        if problem:
            raise ValueError(problem)
    return SamplingSettings(**data)
