"""Step weights relative to a calibration grid: how triggers fitted at one step count read another."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..validation import check


class StepScale:
    """The size of a step measured in units of a calibration grid's local step.

    ``time_grid`` is the sequence of time coordinates a calibration ran on (what the model received,
    in step order). For a step from ``t_prev`` to ``t`` the weight is

        ``w = |t - t_prev| / h((t + t_prev) / 2)``

    where ``h(u)`` is the calibration grid's own step size at ``u`` (each grid interval's size placed
    at its midpoint, interpolated linearly in between and held constant past the ends). On the
    calibration grid itself every weight is exactly 1; at twice the step count the weights are
    about 1/2; on a non-uniform schedule they follow its local step size.

    Triggers that accumulate a per-step change use the weight to read each step's change per unit of
    calibration step, so a threshold fitted at 28 steps keeps its cadence (the share of steps it
    skips) at 20 or 50 steps: see :class:`~forecache.core.triggers.rel_l1.RelativeL1` and
    :class:`~forecache.core.triggers.magnitude.MagnitudeRatio` (``time_grid=``).
    """

    def __init__(self, time_grid: Sequence[float]) -> None:
        fix = "pass the time coordinates the calibration ran on, in step order"
        xs = np.asarray([float(t) for t in time_grid], dtype=np.float64)
        check(xs.ndim == 1 and len(xs) >= 2, "StepScale", "time_grid", tuple(xs.tolist()),
              "needs at least 2 time coordinates", fix)
        check(bool(np.all(np.isfinite(xs))), "StepScale", "time_grid", tuple(xs.tolist()),
              "must be finite", fix)
        steps = np.diff(xs)
        check(bool(np.all(steps > 0) or np.all(steps < 0)), "StepScale", "time_grid", tuple(xs.tolist()),
              "must be strictly monotonic", fix)
        mids = (xs[1:] + xs[:-1]) / 2.0
        sizes = np.abs(steps)
        order = np.argsort(mids)
        self.time_grid = tuple(float(t) for t in xs)
        self._mids = mids[order]
        self._sizes = sizes[order]

    def calibration_step(self, u: float) -> float:
        """The calibration grid's step size around time ``u``."""
        return float(np.interp(u, self._mids, self._sizes))

    def weight(self, t_prev: float, t: float) -> float:
        """``|t - t_prev|`` in units of the calibration step there (1.0 for a zero-length step)."""
        step = abs(float(t) - float(t_prev))
        if step == 0.0:
            return 1.0
        return step / self.calibration_step((float(t) + float(t_prev)) / 2.0)
