"""Accumulated, rescaled relative L1 change of the modulated input (TeaCache)."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch

from ..validation import check, check_real
from ._common import measure_changes, relative_l1, snapshot
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

    With the recorded ``input_changes`` (each calibration trajectory's change per step) a step that
    spans several calibration steps is read on each of them: the live change is shared among them in
    proportion to their recorded changes and the polynomial read at each share per calibration step,
    averaged by how much of each the step spans (:meth:`_per_calibration_step`). ``d_n / w`` assumes
    the change is even over the span; the first step of a generation is not (on the reference image
    model the first calibration step changes 0.16 and the next 0.03), and at 20 steps its change
    read evenly landed on the hump of the fitted polynomial, so every row computed step 1 and a 4x
    profile lost 1.8 dB. ``two_step_changes`` (each trajectory's change over two steps) tell how the
    change grows with the step size, which is less than in proportion (:meth:`_step_factor`: ``k``);
    a step inside one calibration step reads ``d_n / (k w)``. On the calibration grid every step reads
    ``d_n``: exactly the rule above.

    Re-targeting (``retarget=True``, with ``time_grid``, the recorded ``input_changes`` and the run's
    schedule known): the cadence alone still lands a whole computation off at coarse step counts,
    where one computation is a large share of the run, so the threshold is re-targeted per schedule
    to the compute ratio it was searched for (``compute_ratio``; else the calibration grid's own) by
    running this rule on the modelled changes (:meth:`signal_changes`,
    :func:`~forecache.core.triggers.retarget.retarget_threshold`). On the calibration grid the
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
        two_step_changes: Sequence[float] | Sequence[Sequence[float]] | None = None,
    ) -> None:
        self.threshold = threshold
        self.compute_ratio = compute_ratio
        self.input_changes = None if input_changes is None else _trajectories(input_changes)
        self.two_step_changes = None if two_step_changes is None else _trajectories(two_step_changes)
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
        for name in ("input_changes", "two_step_changes"):
            rows = getattr(self, name)
            if rows is None:
                continue
            grid, lengths = self.time_grid, sorted({len(row) for row in rows})
            check(grid is not None and lengths == [len(grid)], who, name, lengths,
                  "needs time_grid and, per recorded trajectory, one change per step of it",
                  "pass both from one calibration profile")
            values = np.asarray(rows, dtype=np.float64)
            check(bool(np.all(np.isfinite(values)) and np.all(values >= 0)), who, name,
                  "(values)", "must be finite and >= 0", "re-calibrate")
        if self.two_step_changes is not None:
            check(self.input_changes is not None and len(self.input_changes) == len(self.two_step_changes),
                  who, "two_step_changes", len(self.two_step_changes),
                  "needs input_changes of the same recorded trajectories", "pass both from one calibration profile")

    def bind(self, adapter) -> RelativeL1:
        """Fill ``coefficients`` left unset from the polynomial the adapter publishes for its model
        class; without one the rescaling stays the identity."""
        published = getattr(adapter, "teacache_coefficients", None)
        if self.coefficients is not None or published is None:
            return self
        return type(self)(self.threshold, published, self.time_grid, self.input_range, self.input_changes,
                          self.retarget, self.compute_ratio, self.two_step_changes)

    def describe(self) -> dict:
        grid = None if self.time_grid is None else f"{len(self.time_grid)} calibration steps"
        return {"threshold": self.threshold, "coefficients": self.coefficients, "time_grid": grid,
                "input_range": self.input_range, "retarget": self.retarget and self.can_retarget()}

    def can_retarget(self) -> bool:
        return self.input_changes is not None

    def _spans(self, t_prev: float, t: float) -> np.ndarray:
        """How many of each calibration interval the step from ``t_prev`` to ``t`` spans (fractions;
        beyond the calibration grid, the end interval is extended): their sum is the step's size in
        calibration steps, and on the calibration grid a step spans exactly one interval once."""
        key = (float(t_prev), float(t))
        memo = self.__dict__.setdefault("_span_memo", {})
        if key not in memo:
            cal = np.asarray(self.time_grid, dtype=np.float64)
            lo, hi = np.minimum(cal[:-1], cal[1:]), np.maximum(cal[:-1], cal[1:])
            first, last = int(np.argmin(lo)), int(np.argmax(hi))
            s, e = min(key), max(key)
            covered = np.clip(np.minimum(e, hi) - np.maximum(s, lo), 0.0, None)
            covered[first] += max(0.0, min(e, lo[first]) - s)
            covered[last] += max(0.0, e - max(s, hi[last]))
            share = covered / (hi - lo)
            memo[key] = np.where(share > 1e-9, share, 0.0)  # a grid point off by rounding spans no sliver
        return memo[key]

    def signal_changes(self, grid: Sequence[float]) -> list[list[float]]:
        """Per recorded trajectory, the change its signal is expected to show at each step of ``grid``.

        Each calibration step's change is spread evenly over its time interval, and a step of ``grid``
        collects the share of every interval it spans (:meth:`_spans`): on the calibration grid this
        gives back the recorded changes, and a large first change stays in the step that spans it
        instead of leaking into its neighbours."""
        steps = list(zip(grid[:-1], grid[1:]))
        spans = [self._spans(a, b) for a, b in steps]
        factors = [self._step_factor(a, b) for a, b in steps]
        return [[0.0] + [float(f @ np.asarray(row[1:], dtype=np.float64)) * k for f, k in zip(spans, factors)]
                for row in self.input_changes]

    def _step_factor(self, t_prev: float, t: float) -> float:
        """How the change of a step of ``h`` calibration steps compares with the sum of the calibration
        changes it spans: ``k = 1 + 2 (1 - s) (1 / h - 1)`` for ``h`` up to 2 (held at ``k = s`` past
        two), with ``s`` the recorded change over two steps over the sum of its two one-step changes
        (at the step's middle, interpolated; averaged over the recorded trajectories, clipped to
        ``[0.5, 1]``). 1 without ``two_step_changes``.

        The recorded one- and two-step changes fit a change that every step pays, ``b``, plus one that
        grows with the step, ``a h``: ``c = b + a`` over one step and ``2 s c = b + 2a`` over two. Then a
        step of ``h`` changes ``(b + a h) / (h c) = k`` times what the linear spread gives: less for a
        long step (relative L1 is sub-additive: the change turns from step to step), more for a short
        one. ``k = 1`` on the calibration grid and ``k = s`` over two steps. On the reference image model
        ``s`` is 0.9-0.98, lowest early; with the linear spread a 28-step profile's live reading ran
        behind its model at 20 steps (half a compute per row fewer) and ahead at 50 (4-11% more computes
        than its target)."""
        key = (float(t_prev), float(t))
        memo = self._factor_memo
        if key not in memo:
            h = float(self._spans(t_prev, t).sum())
            if self.two_step_changes is None or h == 1.0 or h <= 0.0:
                memo[key] = 1.0
            else:
                centres, shares = self._two_step_share
                share = float(np.interp(sum(key) / 2.0, centres, shares))
                memo[key] = 1.0 + 2.0 * (1.0 - share) * (1.0 / min(h, 2.0) - 1.0)
        return memo[key]

    @functools.cached_property
    def _factor_memo(self) -> dict[tuple[float, float], float]:
        """Step factors by ``(t_prev, t)``: a schedule repeats its steps for every row and generation."""
        return {}

    @functools.cached_property
    def _two_step_share(self) -> tuple[np.ndarray, np.ndarray]:
        """``(centres, s)``, ascending in time: ``s`` at each interior calibration point, the two-step
        change over the sum of the two one-step changes around it, averaged over trajectories (1 where
        both are zero)."""
        one = np.asarray(self.input_changes, dtype=np.float64)
        two = np.asarray(self.two_step_changes, dtype=np.float64)[:, 2:]
        pair = one[:, 1:-1] + one[:, 2:]
        share = np.mean(np.where(pair > 0, two / np.where(pair > 0, pair, 1.0), 1.0), axis=0)
        centres = np.asarray(self.time_grid[1:-1], dtype=np.float64)
        order = np.argsort(centres)
        # under a half, a long step's reading would grow without bound; a record that noisy is clipped
        return centres[order], np.clip(share[order], 0.5, 1.0)

    @functools.cached_property
    def _mean_changes(self) -> np.ndarray:
        """The recorded change of each calibration step, averaged over the recorded trajectories."""
        return np.mean([row[1:] for row in self.input_changes], axis=0)

    def _per_calibration_step(self, change: float, t_prev: float, t: float) -> tuple[np.ndarray, np.ndarray]:
        """The step's change read per calibration step: ``(x, f)``, the change ``x_k`` of each
        calibration step ``k`` the step spans and the fraction ``f_k`` of it spanned.

        With recorded changes, the live change is shared among the spanned calibration steps in
        proportion to their mean recorded change ``c_k``: ``x_k = change * c_k / m``, with ``m = k *
        sum_j f_j c_j`` the modelled change of the step (``k``: :meth:`_step_factor`). So a
        20-step run's first step, which spans the large first calibration change and a little of the
        small second one, reads the polynomial near the first change, where reading the whole step
        per unit of calibration step (``change / w``, which assumes the change is even over the span)
        landed between the two, on a part of the fitted polynomial no step of the calibration saw.
        A step inside one calibration interval reads ``change / (k w)`` (``w``: :class:`StepScale`'s
        weight), and every step on the calibration grid ``change``. Without recorded changes:
        ``change / w``."""
        factor = 1.0
        if self.input_changes is not None:
            f = self._spans(t_prev, t)
            spanned = np.flatnonzero(f)
            mean = self._mean_changes
            factor = self._step_factor(t_prev, t)
            expected = float(f @ mean) * factor
            if len(spanned) > 1 and expected > 0:
                return change * mean[spanned] / expected, f[spanned]
        return np.array([change / (self._scale.weight(t_prev, t) * factor)]), np.ones(1)

    def new_state(self) -> dict:
        return {"prev": None, "prev_t": None, "acc": 0.0}

    def measure(self, state: dict, obs: Observation) -> float | None:
        if state["prev"] is None or obs.signal is None or obs.signal.shape != state["prev"].shape:
            return None  # no reference of this signal's shape: compute
        return self._accumulated(state, obs, relative_l1(obs.signal, state["prev"]))

    def measure_rows(self, states, obs) -> list[float | None]:
        return measure_changes(states, obs, "prev", self._accumulated)

    def _accumulated(self, state: dict, obs: Observation, change: float) -> float:
        """The running total after this step's relative L1 ``change`` of the modulated input,
        rescaled by the polynomial."""
        if self._scale is None or state["prev_t"] is None:
            x, f = np.array([change]), np.ones(1)
        else:
            x, f = self._per_calibration_step(change, state["prev_t"], obs.t)
        if self.input_range is not None:
            x = np.clip(x, self.input_range[0], self.input_range[1])
        y = x if self._poly is None else self._poly(x)
        return state["acc"] + float(f @ y / f.sum())

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
