"""One bracket-and-bisect search over a scalar knob, shared by every calibration in forecache.

A caching knob (a threshold, an interval) makes a run more *aggressive* (fewer FLOPs, lower fidelity) as it
grows, and the outcome is a step function of the knob (a generation computes a whole number of steps). A
calibration looks for the boundary where the outcome turns aggressive (reaches a compute-ratio target, or loses
a fidelity target). :func:`bracket_and_bisect` finds it in a bounded number of probes:

1. bracket: probe ``start``. If it is not aggressive, grow the knob (``value * grow``; integers by at least 1)
   until a probe is, the knob's ``upper`` limit is reached, or ``no_higher`` says no larger value can give
   another outcome. If it is aggressive, either bisect straight down towards ``lower`` (``shrink=None``) or
   first divide by ``shrink`` until a probe is not aggressive (and stop, unbracketed, when ``no_lower`` says no
   smaller value can change the outcome);
2. bisect: geometrically for real values (thresholds span decades; halving while the lower side is 0), by
   halving the integer gap for integers, until the bracket is narrower than ``resolution`` (relative) or the
   two integers are adjacent.

A probe that ``close`` accepts (e.g. a compute ratio within tolerance of its target) ends the search at once,
and no search makes more than ``max_probes`` probes. The function only chooses where to probe: the caller keeps
every outcome and picks its answer among them (the least aggressive value that reaches a compute-ratio target,
the most aggressive that keeps a fidelity target, ...).

Used by :func:`forecache.core.calibration.search_knob` (a registered preset's knob; ``grow=2``, bisection down
from the never-skip value) and by :func:`forecache.dllm.drift_calibration.calibrate_drift` (dLLM-Cache's drift
threshold; ``grow=4``, ``shrink=4``, saturation tests from the measured drifts).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple, TypeVar

__all__ = ["Bracket", "bracket_and_bisect"]

Outcome = TypeVar("Outcome")


class Bracket(NamedTuple):
    """Where the search stopped: ``near``, the largest value known not to be aggressive (``lower`` when no probe
    was below the boundary), and ``far``, the smallest value known to be aggressive (None when none was found).
    When a probe ``close`` to the target ended the search, that probe is in neither."""

    near: float
    far: float | None


def bracket_and_bisect(
    probe: Callable[[float], Outcome],
    aggressive: Callable[[Outcome], bool],
    *,
    start: float,
    max_probes: int,
    lower: float = 0.0,
    upper: float = math.inf,
    integer: bool = False,
    grow: float = 2.0,
    shrink: float | None = None,
    resolution: float = 0.02,
    close: Callable[[Outcome], bool] | None = None,
    no_higher: Callable[[Outcome], bool] | None = None,
    no_lower: Callable[[Outcome], bool] | None = None,
    value_of: Callable[[Outcome], float] | None = None,
    used: Callable[[], int] | None = None,
) -> Bracket:
    """Probe a knob until the boundary where ``aggressive(probe(value))`` turns True is bracketed and bisected.

    Args:
        probe: runs (or recalls) the knob at a value and returns its outcome; any type the predicates read.
        aggressive: True when the outcome is past the target (e.g. compute ratio at or below it).
        start: the first value probed (a preset's default).
        max_probes: the most probes the search makes (>= 1).
        lower: the knob's never-skip side, known not aggressive and never probed (0.0 for a threshold, 1 for an
            interval). upper: the knob's limit; growth stops there (default: none).
        integer: an integer knob (intervals): grow by at least 1, bisect the integer gap.
        grow: the factor of each growth step (> 1; 2 by default).
        shrink: None (default): an aggressive ``start`` is bisected down from ``lower`` (halving while ``lower``
            is 0); a factor > 1: divide by it until a probe is not aggressive, and stop unbracketed when none is
            found (real-valued knobs only).
        resolution: the relative bracket width ``far / near - 1`` at which bisection of a real knob stops (> 0).
        close: True for an outcome good enough to stop at once (default: never).
        no_higher / no_lower: True when, after this outcome, no larger / smaller value can give another outcome
            (e.g. no step measured a change above the threshold); the bracket stops growing / shrinking there.
        value_of: the value a probe really ran (a probe may clamp it, e.g. an interval to the step count); growth
            stops when it does not exceed the last one. Default: the value asked for.
        used: probes spent so far, when the caller counts them itself (e.g. distinct values it ran); default:
            the calls to ``probe`` made here.

    Returns:
        The :class:`Bracket` at the stop.
    """
    if isinstance(max_probes, bool) or not isinstance(max_probes, int) or max_probes < 1:
        raise ValueError(f"bracket_and_bisect: max_probes={max_probes!r} must be an int >= 1, e.g. 16")
    if not grow > 1:
        raise ValueError(f"bracket_and_bisect: grow={grow!r} must be > 1, e.g. 2")
    if shrink is not None and (integer or not shrink > 1):
        raise ValueError(f"bracket_and_bisect: shrink={shrink!r} must be None or a factor > 1 of a real-valued knob")
    if not resolution > 0:
        raise ValueError(f"bracket_and_bisect: resolution={resolution!r} must be > 0, e.g. 0.02")
    if not math.isfinite(start):
        raise ValueError(f"bracket_and_bisect: start={start!r} must be a finite value of the knob")

    calls = 0

    def run(value: float) -> tuple[float, Outcome]:
        nonlocal calls
        calls += 1
        out = probe(value)
        return (value if value_of is None else value_of(out)), out

    def spent() -> int:
        return calls if used is None else used()

    def done(out: Outcome) -> bool:
        return close is not None and close(out)

    near, far = lower, None
    value, out = run(start)
    if done(out):
        return Bracket(near, far)
    if aggressive(out):
        far = value
        if shrink is not None:  # bracket downwards before bisecting
            while spent() < max_probes and not (no_lower is not None and no_lower(out)):
                t = far / shrink
                value, out = run(t)
                if done(out):
                    return Bracket(near, far)
                if not aggressive(out):
                    near = value
                    break
                far = value
            else:  # nothing smaller changes the outcome, or the budget is spent: out of reach
                return Bracket(near, far)
    else:  # grow the knob until the probes turn aggressive
        near = value
        while spent() < max_probes and near < upper and not (no_higher is not None and no_higher(out)):
            step = max(near * grow, near + 1) if integer else near * grow
            value, out = run(min(step, upper))
            if value <= near:  # the knob cannot grow further (its limit, or what the probe clamps it to)
                return Bracket(near, far)
            if done(out):
                return Bracket(near, far)
            if aggressive(out):
                far = value
                break
            near = value
        if far is None:  # out of reach within the knob's range (or the budget)
            return Bracket(near, far)
    while spent() < max_probes:
        if integer:
            if far - near <= 1:
                break
            mid = (near + far) // 2
        else:
            if near > 0 and far / near <= 1 + resolution:
                break
            mid = math.sqrt(near * far) if near > 0 else far / 2
        _, out = run(mid)
        if done(out):
            break
        if aggressive(out):
            far = mid
        else:
            near = mid
    return Bracket(near, far)
