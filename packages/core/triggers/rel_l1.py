"""Accumulated, rescaled relative L1 change of the modulated input (TeaCache)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ._common import check, check_real, relative_l1, snapshot
from .accumulate import Accumulating
from .base import Observation
from .retarget import RetargetsThreshold
from .step_scale import StepScale

#: TeaCache's rescaling polynomial for FLUX.1 (numpy.poly1d order, highest power first), fitted
#: from the modulated-input change to the output change. Source: ali-vilab/TeaCache
#: ``TeaCache4FLUX/teacache_flux.py`` (commit 7c10efc).
TEACACHE_FLUX_COEFFICIENTS: tuple[float, ...] = (
    4.98651651e02,
    -2.83781631e02,
    5.58554382e01,
    -3.82021401e00,
    2.64230861e-01,
)


def _trajectories(changes) -> tuple[tuple[float, ...], ...]:
    """One sequence of per-step changes, or one per trajectory, as a tuple of trajectories."""
    rows = list(changes)
    if rows and not isinstance(rows[0], (Sequence, np.ndarray)):
        rows = [rows]
    return tuple(tuple(float(x) for x in row) for row in rows)


class RelativeL1(RetargetsThreshold, Accumulating):
    """TeaCache (arXiv 2411.19108): compute when the accumulated estimate of output change is big.

    ``coefficients=None`` takes the polynomial the model's adapter publishes (:meth:`bind`), else
    the identity.

    Signal: ``"modulated_input"``, the first block's timestep-modulated input.

    Per step n (not the first): ``d_n = mean|s_n - s_{n-1}| / mean|s_{n-1}|`` where ``s_{n-1}`` is
    the PREVIOUS STEP's signal, whether that step computed or not; ``acc += poly(d_n)`` with
    ``poly`` the rescaling polynomial (``coefficients``, numpy.poly1d order; ``None`` = identity).
    Skip while ``acc < threshold``; when ``acc >= threshold`` compute and reset ``acc`` to 0.
    The first step and, when the schedule is known, the last step always compute (and reset).
    ``threshold=0`` never skips (a fitted polynomial may dip below 0, which would otherwise skip).
    Metric: the accumulated value ``acc + poly(d_n)`` the decision compares.

    All of this is as in the reference (``teacache_flux.py``: ``previous_modulated_input`` is
    overwritten every step; ``accumulated_rel_l1_distance < rel_l1_thresh`` skips; ``cnt == 0 or
    cnt == num_steps-1`` computes). ``threshold`` has no default because it is the speed knob;
    TeaCache's FLUX values are 0.25 (1.5x), 0.4 (1.8x), 0.6 (2.0x, the script's setting), 0.8
    (2.25x), with :data:`TEACACHE_FLUX_COEFFICIENTS`.

    ``time_grid``: the time coordinates the polynomial (and threshold) were calibrated on
    (``forecache.core.calibration``). The polynomial maps a change over ONE CALIBRATION STEP to an
    output change over that step, and both grow about in proportion to the step size, so at
    another step count the reference's ``poly(d_n)`` reads the polynomial outside its fitted range.
    With ``time_grid`` each step's change is read per calibration step: with ``w`` the step's size
    over the grid's local step (:class:`~forecache.core.triggers.step_scale.StepScale`),
    ``acc += poly(d_n / w)``. On the calibration grid ``w = 1`` and this is exactly the rule above;
    at another step count the threshold keeps its cadence: a profile calibrated to skip two steps
    in three at 28 steps skips about two in three at 20 or 50. (Reading the threshold as an error
    budget in the model's time instead, ``acc += w * poly(d_n / w)``, keeps the number of full
    computations: on the reference image model a 28-step profile then skipped nearly twice the steps
    asked at 50 steps, and lost 9 to 15 dB against a profile calibrated at 50.) ``None`` (default):
    the reference's per-step rule, as published coefficients expect.

    Re-targeting (``retarget=True``, with ``time_grid``, the recorded ``input_changes`` — the mean
    change at each calibration step — and the run's schedule known): the cadence alone still lands
    a whole computation off at coarse step counts, where one computation is a large share of the
    run, so the threshold is re-targeted per schedule to the compute ratio it was searched for
    (``compute_ratio``; else the calibration grid's own) by running this rule on the recorded changes
    (:func:`~forecache.core.triggers.retarget.retarget_threshold`). On the calibration grid the
    threshold is used as given.

    ``input_range``: ``(low, high)``, the input changes the polynomial was fitted on; the rescaled
    change is read at ``d`` clamped into it. A degree-4 fit swings far outside its data (the
    reference image model's fit gives -1.2 at 1.16x its largest input), and a negative term
    would buy skips the model never earned; calibration stores the range in the profile. On
    changes inside the range this is exactly the rule above. ``None`` (default): no clamp, as in
    the reference.

    Deviations: without a known schedule the last-step rule cannot apply and is skipped (the
    reference always knows ``num_steps``). Under torch.distributed the rescaled change is averaged
    across ranks (the reference runs on one device).
    """

    signal = "modulated_input"

    def __init__(
        self,
        threshold: float,
        coefficients: Sequence[float] | None = None,
        time_grid: Sequence[float] | None = None,
        input_range: Sequence[float] | None = None,
        input_changes: Sequence[float] | Sequence[Sequence[float]] | None = None,
        retarget: bool = True,
        compute_ratio: float | None = None,
    ) -> None:
        self.threshold = threshold
        self.compute_ratio = compute_ratio
        self.input_changes = None if input_changes is None else _trajectories(input_changes)
        self.retarget = retarget
        self.input_range = None if input_range is None else tuple(float(x) for x in input_range)
        self.coefficients = None if coefficients is None else tuple(float(c) for c in coefficients)
        self._poly = None if self.coefficients is None else np.poly1d(self.coefficients)
        self.time_grid = None if time_grid is None else tuple(float(t) for t in time_grid)
        self._scale = None if self.time_grid is None else StepScale(self.time_grid)

    def validate(self) -> None:
        who = type(self).__name__
        check_real(who, "threshold", self.threshold, 0.0, "use e.g. 0.4 (TeaCache FLUX: 0.25-0.8)")
        if self.coefficients is not None:
            ok = len(self.coefficients) > 0 and all(np.isfinite(self.coefficients))
            check(ok, who, "coefficients", self.coefficients, "must be finite numbers, highest power "
                  "first", "pass the fitted polynomial, e.g. TEACACHE_FLUX_COEFFICIENTS, or None")
        if self.input_range is not None:
            ok = len(self.input_range) == 2 and all(np.isfinite(self.input_range))
            check(ok and self.input_range[0] <= self.input_range[1], who, "input_range", self.input_range,
                  "must be (low, high) with low <= high", "pass the fit's input range, or None")
        self.check_compute_ratio()
        if self.input_changes is not None:
            grid, lengths = self.time_grid, sorted({len(row) for row in self.input_changes})
            check(grid is not None and lengths == [len(grid)], who, "input_changes", lengths,
                  "needs time_grid and, per recorded trajectory, one change per step of it",
                  "pass both from one calibration profile")
            values = np.asarray(self.input_changes, dtype=np.float64)
            check(bool(np.all(np.isfinite(values)) and np.all(values >= 0)), who, "input_changes",
                  "(values)", "must be finite and >= 0", "re-calibrate")

    def bind(self, adapter) -> RelativeL1:
        """Fill ``coefficients`` left unset from the polynomial the adapter publishes for its model
        class; without one the rescaling stays the identity."""
        published = getattr(adapter, "teacache_coefficients", None)
        if self.coefficients is not None or published is None:
            return self
        return type(self)(self.threshold, published, self.time_grid, self.input_range, self.input_changes,
                          self.retarget, self.compute_ratio)

    def describe(self) -> dict:
        grid = None if self.time_grid is None else f"{len(self.time_grid)} calibration steps"
        return {"threshold": self.threshold, "coefficients": self.coefficients, "time_grid": grid,
                "input_range": self.input_range, "retarget": self.retarget and self.can_retarget()}

    def can_retarget(self) -> bool:
        return self.input_changes is not None

    def signal_changes(self, grid: Sequence[float]) -> list[list[float]]:
        """Per recorded trajectory, the change its signal is expected to show at each step of ``grid``.

        Each calibration step's change is spread evenly over its time interval, and a step of ``grid``
        collects the share of every interval it overlaps (beyond the calibration grid, the end
        interval's rate): on the calibration grid this gives back the recorded changes, and a large
        first change stays in the step that spans it instead of leaking into its neighbours."""
        cal = np.asarray(self.time_grid, dtype=np.float64)
        lo, hi = np.minimum(cal[:-1], cal[1:]), np.maximum(cal[:-1], cal[1:])
        first, last = int(np.argmin(lo)), int(np.argmax(hi))
        out = []
        for row in self.input_changes:
            rates = np.asarray(row[1:], dtype=np.float64) / (hi - lo)  # change per unit of time
            changes = [0.0]
            for a, b in zip(grid[:-1], grid[1:]):
                s, e = min(a, b), max(a, b)
                overlap = np.clip(np.minimum(e, hi) - np.maximum(s, lo), 0.0, None)
                below = max(0.0, min(e, lo[first]) - s)
                above = max(0.0, e - max(s, hi[last]))
                changes.append(float(overlap @ rates + below * rates[first] + above * rates[last]))
            out.append(changes)
        return out


    def new_state(self) -> dict:
        return {"prev": None, "prev_t": None, "acc": 0.0}

    def measure(self, state: dict, obs: Observation) -> float | None:
        if state["prev"] is None or obs.signal is None:
            return None
        change = relative_l1(obs.signal, state["prev"])
        w = 1.0 if self._scale is None or state["prev_t"] is None else self._scale.weight(state["prev_t"], obs.t)
        x = change / w
        if self.input_range is not None:
            x = min(max(x, self.input_range[0]), self.input_range[1])
        return state["acc"] + (x if self._poly is None else float(self._poly(x)))

    def observe(
        self,
        state: dict,
        obs: Observation,
        computed: bool,
        inputs: torch.Tensor | None,
        output: torch.Tensor | None,
    ) -> None:
        if computed:
            state["acc"] = 0.0
        state["prev"] = snapshot(obs.signal)
        state["prev_t"] = obs.t
