"""Checks of configuration values, shared by core and every domain: each raises ValueError naming
the field, what is wrong and the fix (``Who.knob=value is invalid: rule; fix``)."""

from __future__ import annotations

import math
from collections.abc import Collection


def check(ok: bool, who: str, knob: str, value: object, rule: str, fix: str) -> None:
    """Raise ValueError for ``who.knob=value`` unless ``ok``."""
    if not ok:
        raise ValueError(f"{who}.{knob}={value!r} is invalid: {rule}; {fix}")


def check_int(who: str, knob: str, value: object, minimum: int, fix: str) -> None:
    """``value`` is an int (not a bool) of at least ``minimum``."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    check(ok, who, knob, value, f"must be an int >= {minimum}", fix)


def check_real(who: str, knob: str, value: object, minimum: float, fix: str) -> None:
    """``value`` is a finite number (not a bool) of at least ``minimum``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    check(ok and float(value) >= minimum, who, knob, value, f"must be a finite number >= {minimum}", fix)


def check_fraction(who: str, knob: str, value: object, fix: str) -> None:
    """``value`` is a number in [0, 1]."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0
    check(ok, who, knob, value, "must be a number in [0, 1]", fix)


def check_bool(who: str, knob: str, value: object, fix: str) -> None:
    """``value`` is True or False."""
    check(type(value) is bool, who, knob, value, "must be True or False", fix)


def check_choice(who: str, knob: str, value: object, choices: Collection, fix: str = "") -> None:
    """``value`` is one of ``choices``."""
    check(value in choices, who, knob, value, f"must be one of {tuple(choices)}", fix or f"use one of {tuple(choices)}")
