"""The strength knob of each preset: the one number a threshold search moves.

Every knob grows with caching: a larger threshold (TeaCache, MagCache, EasyCache, FBCache, DBCache,
SpeCa), a larger ``gamma`` (Foresight) or a longer interval (FORA, DeepCache, Δ-DiT, ToCa,
TaylorSeer, HiCache, AB-Cache, FoCa, FreqCa) skips more. Each has a value that never skips (0 for
thresholds and gamma, 1 for intervals), which is where a search starts from.

A preset names its knob where it registers (``@preset(knob="threshold")``, see
:mod:`forecache.core.presets.registry`), so a domain's preset with a knob is searchable too
(science's ``ab_forecast``: its interval).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

from ..presets.registry import preset_info, preset_infos


def knob_names() -> dict[str, str]:
    """Preset name -> its knob, for every registered preset (of any domain) that has one."""
    return {name: info.knob for name, info in preset_infos().items() if info.knob is not None}


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
    """The knob of preset ``method`` (any registered domain's); ValueError naming the searchable
    presets otherwise."""
    info = preset_info(method)  # raises for an unknown name, naming the known presets
    if info.knob is None:
        raise ValueError(
            f"{method} has no single strength knob to search (its ranges are tuned together); pass its "
            f"arguments by hand, or calibrate one of {sorted(knob_names())}"
        )
    if not info.core_policy:  # the search measures compute ratios through forecache.core.apply
        raise ValueError(
            f"{method} builds a {info.returns.__name__}, not a forecache.core Policy, so a knob search cannot "
            f"run it through forecache.core.apply; calibrate one of {sorted(knob_names())}"
        )
    name = info.knob
    default = inspect.signature(info.function).parameters[name].default
    if name == "interval":
        return Knob(method, name, True, 1, int(default), 64)
    return Knob(method, name, False, 0.0, float(default), float(default) * 2.0**10)
