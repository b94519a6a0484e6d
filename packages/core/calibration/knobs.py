"""The strength knob of each preset: the one number a threshold search moves.

Every knob grows with caching: a larger threshold (TeaCache, MagCache, EasyCache, FBCache, DBCache,
SpeCa), a larger ``gamma`` (Foresight) or a longer interval (FORA, DeepCache, Δ-DiT, ToCa,
TaylorSeer, HiCache, AB-Cache, FoCa, FreqCa) skips more. Each has a value that never skips (0 for
thresholds and gamma, 1 for intervals), which is where a search starts from.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

#: preset name -> its knob
KNOB_NAMES: dict[str, str] = {
    **{m: "threshold" for m in ("teacache", "magcache", "easycache", "fbcache", "dbcache", "speca")},
    "foresight": "gamma",
    **{m: "interval" for m in ("fora", "deepcache", "delta_dit", "toca", "taylorseer", "hicache",
                               "abcache", "foca", "freqca")},
}


@dataclass(frozen=True)
class Knob:
    """One preset's strength knob: ``name``, whether it is an ``integer``, the value that
    ``never_skip``s, the preset's ``default`` (the search's first probe) and the ``limit`` past
    which the search stops growing it."""

    method: str
    name: str
    integer: bool
    never_skip: float
    default: float
    limit: float

    def clamp(self, value: float) -> float | int:
        value = min(max(value, self.never_skip), self.limit)
        return round(value) if self.integer else float(value)


def knob_for(method: str) -> Knob:
    """The knob of preset ``method``; ValueError naming the searchable presets otherwise."""
    from ..presets import PRESETS

    if method not in PRESETS:
        raise ValueError(f"unknown preset {method!r}; choose one of {sorted(PRESETS)}")
    if method not in KNOB_NAMES:
        raise ValueError(
            f"{method} has no single strength knob to search (its ranges are tuned together); pass its "
            f"arguments by hand, or calibrate one of {sorted(KNOB_NAMES)}"
        )
    name = KNOB_NAMES[method]
    default = inspect.signature(PRESETS[method]).parameters[name].default
    if name == "interval":
        return Knob(method, name, True, 1, int(default), 64)
    return Knob(method, name, False, 0.0, float(default), float(default) * 2.0**10)
