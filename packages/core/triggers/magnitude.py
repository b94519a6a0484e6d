"""Accumulated error of a calibrated residual-magnitude decay (MagCache)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..validation import check, check_int, check_real
from ._common import num_steps
from .base import Observation, Trigger
from .retarget import RetargetsThreshold
from .step_scale import StepScale


@dataclass(frozen=True)
class MagnitudeProfile:
    """Per-step residual magnitude ratios, with the time grid they were measured on.

    ``ratios[i] = ||r_i|| / ||r_{i-1}||`` for the residual ``r = output - input`` of the cached
    region at calibration step ``i``; ``ratios[0]`` is ignored (the first step has no
    predecessor; published curves put 1.0 there). ``times[i]`` is the time coordinate the model
    received at step ``i``. Without ``times`` the grid is the position in the schedule,
    ``i / (len - 1)``, and the profile is read at ``step / (num_steps - 1)``.

    Reading it at other step counts: ratios of adjacent residuals multiply along the trajectory
    (``||r_c|| / ||r_a|| = (||r_b|| / ||r_a||) * (||r_c|| / ||r_b||)``), so the profile is stored as
    a cumulative log magnitude ``L`` on its grid, interpolated linearly in time (extrapolated
    linearly past its ends), and the ratio between two steps is ``exp(L(t) - L(t_prev))``. A
    profile taken at 28 steps thus gives, at 14 steps, the product of each pair of ratios and, at
    56 steps, roughly their square roots; over a whole run the product telescopes to the same
    total decay whatever the step count. MagCache itself resamples by nearest index, which reuses
    one 28-step ratio for two 56-step steps and doubles the modelled decay.
    """

    ratios: tuple[float, ...]
    times: tuple[float, ...] | None = None
    _xs: np.ndarray = field(init=False, repr=False, compare=False)
    _logs: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ratios = tuple(float(r) for r in self.ratios)
        object.__setattr__(self, "ratios", ratios)
        fix = "pass the per-step ratios ||r_i||/||r_{i-1}|| of a calibration run"
        check(len(ratios) >= 2, "MagnitudeProfile", "ratios", len(ratios), "needs at least 2 steps", fix)
        check(all(math.isfinite(r) and r > 0 for r in ratios), "MagnitudeProfile", "ratios", ratios,
              "every ratio must be finite and > 0", fix)
        if self.times is None:
            xs = np.linspace(0.0, 1.0, len(ratios))
        else:
            times = tuple(float(t) for t in self.times)
            object.__setattr__(self, "times", times)
            check(len(times) == len(ratios), "MagnitudeProfile", "times", len(times),
                  f"must have one time per ratio ({len(ratios)})", "pass the calibration run's timesteps")
            xs = np.asarray(times, dtype=np.float64)
            steps = np.diff(xs)
            check(bool(np.all(steps > 0) or np.all(steps < 0)), "MagnitudeProfile", "times", times,
                  "must be strictly monotonic", "pass the calibration run's timesteps in step order")
        logs = np.concatenate([[0.0], np.cumsum(np.log(ratios[1:]))])
        if xs[-1] < xs[0]:  # sampling usually runs t downwards; interpolation wants it ascending
            xs, logs = xs[::-1].copy(), logs[::-1].copy()
        object.__setattr__(self, "_xs", xs)
        object.__setattr__(self, "_logs", logs)

    def log_magnitude(self, u: float) -> float:
        """``log ||r||`` at coordinate ``u``, up to a constant."""
        i = int(np.clip(np.searchsorted(self._xs, u), 1, len(self._xs) - 1))
        x0, x1 = self._xs[i - 1], self._xs[i]
        l0, l1 = self._logs[i - 1], self._logs[i]
        return float(l0 + (l1 - l0) * (u - x0) / (x1 - x0))

    def ratio(self, u_from: float, u_to: float) -> float:
        """``||r(u_to)|| / ||r(u_from)||``."""
        return math.exp(self.log_magnitude(u_to) - self.log_magnitude(u_from))


def _flux_sigmas(steps: int = 28, mu: float = 1.15) -> tuple[float, ...]:
    # FluxPipeline's default schedule: sigmas linspace(1, 1/steps), exponential time shift with
    # mu = calculate_shift(4096 tokens) = 1.15 at 1024x1024; the transformer receives sigma
    base = np.linspace(1.0, 1.0 / steps, steps)
    return tuple(float(math.exp(mu) / (math.exp(mu) + (1.0 / s - 1.0))) for s in base)


#: MagCache's published FLUX.1-dev magnitude ratios (28 steps; the leading 1.0 is step 0's
#: placeholder). Numbers from Zehong-Ma/MagCache ``MagCache4FLUX/magcache_flux.py`` (commit
#: df81cb1), also shipped as ``FLUX_MAG_RATIOS`` in diffusers ``hooks/mag_cache.py``; Apache-2.0.
FLUX_MAG_RATIOS: tuple[float, ...] = (
    1.0, 1.21094, 1.11719, 1.07812, 1.0625, 1.03906, 1.03125, 1.03906, 1.02344, 1.03125,
    1.02344, 0.98047, 1.01562, 1.00781, 1.0, 1.00781, 1.0, 1.00781, 1.0, 1.0,
    0.99609, 0.99609, 0.98047, 0.98828, 0.96484, 0.95703, 0.93359, 0.89062,
)  # fmt: skip
#: The time grid FLUX_MAG_RATIOS were measured on: the 28 sigmas (what FluxTransformer2DModel
#: receives as ``timestep``) of diffusers' FluxPipeline at its default 1024x1024, the setting of
#: MagCache's calibration script.
FLUX_MAG_TIMES: tuple[float, ...] = _flux_sigmas()
FLUX_MAG_PROFILE = MagnitudeProfile(FLUX_MAG_RATIOS, FLUX_MAG_TIMES)
#: MagCache's FLUX.1-dev setting, "E024K5R01" (``magcache_flux.py``; diffusers' MagCacheConfig
#: defaults are instead threshold=0.06, max_skip=3, retention=0.2).
MAGCACHE_FLUX_DEFAULTS: dict = {"threshold": 0.24, "max_skip": 5, "retention": 0.1}

Ratios = MagnitudeProfile | Sequence[float] | Callable[[float], float]


class MagnitudeRatio(RetargetsThreshold, Trigger):
    """MagCache (arXiv 2506.09045): skip while the modelled error of reusing a residual is small.

    The magnitude ratio of adjacent residuals ``g_t = ||r_t|| / ||r_{t-1}||`` is nearly the same
    for every prompt, so it is calibrated once (``ratios``). Reusing the residual of the last
    computed step c at step t errs by about ``|1 - prod_{c<i<=t} g_i|``.

    Rule, per row and step: compute during the first ``round(retention * num_steps)`` steps
    (needs the schedule when ``retention > 0``). Otherwise ``R *= g_t``, ``E += |1 - R|`` with
    ``R = 1, E = 0`` reset at every compute; skip iff ``E <= threshold`` and the steps since the
    last compute ``<= max_skip`` (K), else compute. Metric: ``E``. As in ``magcache_flux.py``
    (commit df81cb1): ``accumulated_err <= magcache_thresh and accumulated_steps <= K`` skips;
    ``cnt >= int(retention_ratio * num_steps + 0.5)`` starts skipping. Defaults are its FLUX.1
    setting (threshold=0.24, max_skip=5, retention=0.1). ``threshold=0`` never skips (a ratio of
    exactly 1.0, which the FLUX curve has, would otherwise give ``E = 0 <= 0``).

    ``ratios``: a :class:`MagnitudeProfile` (e.g. :data:`FLUX_MAG_PROFILE`); a sequence of
    per-step ratios with ``times`` (their time grid) or without (a position grid, read at
    ``step / (num_steps - 1)``); or a callable giving the relative residual magnitude
    ``||r(t)||`` at time ``t`` (any scale), so ``g_t = m(t) / m(t_prev)``. ``g_t`` is read between
    the previous step's time and this step's, so another step count or schedule gets the ratio of
    its own step size (see :class:`MagnitudeProfile`). ``None`` takes the profile the model's
    adapter publishes (:meth:`bind`); with none published, binding raises ValueError naming the
    fix (calibrate, or pass ``ratios=``).

    ``time_grid``: the time coordinates the ratios and the knobs were calibrated on
    (``forecache.core.calibration`` sets it from a profile). ``g_t`` read over a step of another
    size is the decay over that step, about ``g^w`` for a step ``w`` calibration steps long
    (:class:`~forecache.core.triggers.step_scale.StepScale`), so the same threshold would let the
    accumulated error grow at another rate per step. With ``time_grid`` each step's ratio is read
    per calibration step, ``g_t ** (1 / w)``; the error still sums one term per step and
    ``max_skip`` counts steps. On the calibration grid ``w = 1`` and this is exactly the rule above;
    at another step count ``threshold`` and ``max_skip`` keep their cadence: a profile calibrated
    to 3x at 28 steps runs about 3x at 20 or 50. (Reading them as a budget in the model's time
    instead, ``E += w * |1 - R|`` with the skipped span ``sum w <= max_skip``, keeps the number of
    full computations: on the reference image model a 28-step profile then skipped far more steps
    than asked at 50 steps and lost 3.5 to 5.5 dB against a profile calibrated at 50.) ``None``
    (default): the reference's per-step rule.

    Re-targeting (``retarget=True``, with ``time_grid`` and the run's schedule known): the decisions
    depend only on the ratios and the schedule, so this rule run ahead on the schedule gives the
    exact number of computations; the threshold is re-targeted per schedule to the compute ratio it
    was searched for (``compute_ratio``; else the calibration grid's own), as a calibration at that
    step count would aim (:func:`~forecache.core.triggers.retarget.retarget_threshold`). At 20 steps
    a 28-step 3x profile then computes 7 times, where its cadence gives 6. On the calibration grid
    the threshold is used as given.

    Deviations: ratios are interpolated in time and multiplied over the step instead of
    resampled by nearest index; the reference's FLUX-only forced compute at calibration step 11
    of 28 is not reproduced (a site window can force steps).
    """

    def __init__(
        self,
        threshold: float = 0.24,
        max_skip: int = 5,
        retention: float = 0.1,
        ratios: Ratios | None = None,
        times: Sequence[float] | None = None,
        time_grid: Sequence[float] | None = None,
        retarget: bool = True,
        compute_ratio: float | None = None,
    ) -> None:
        self.threshold = threshold
        self.compute_ratio = compute_ratio
        self.retarget = retarget
        self.max_skip = max_skip
        self.retention = retention
        self.ratios = ratios
        self.times = times
        self.time_grid = None if time_grid is None else tuple(float(t) for t in time_grid)
        self._scale = None if self.time_grid is None else StepScale(self.time_grid)
        self._profile: MagnitudeProfile | None = None
        if isinstance(ratios, MagnitudeProfile):
            check(times is None, type(self).__name__, "times", times, "a MagnitudeProfile carries "
                  "its own times", "pass times inside the profile or ratios as a sequence")
            self._profile = ratios
        elif ratios is not None and not callable(ratios):
            self._profile = MagnitudeProfile(tuple(ratios), None if times is None else tuple(times))

    def validate(self) -> None:
        # ratios=None is legal here: bind() fills the profile the model's adapter publishes
        who = type(self).__name__
        check_real(who, "threshold", self.threshold, 0.0, "use e.g. 0.24 (MagCache FLUX)")
        check_int(who, "max_skip", self.max_skip, 0, "use e.g. 5 (MagCache FLUX); 0 never skips")
        check_real(who, "retention", self.retention, 0.0, "use a fraction in [0, 1], e.g. 0.1")
        check(self.retention <= 1.0, who, "retention", self.retention, "must be a fraction in [0, 1]",
              "use e.g. 0.1 (the first 10% of steps compute)")
        self.check_compute_ratio()

    def _require_ratios(self, where: str) -> None:
        check(self.ratios is not None, type(self).__name__, "ratios", None,
              f"MagCache needs the model's calibrated residual magnitude ratios and {where}",
              "calibrate them (`forecache calibrate --method magcache`, then magcache(profile=...)) "
              "or pass ratios=, e.g. FLUX_MAG_PROFILE for FLUX.1")

    def bind(self, adapter) -> MagnitudeRatio:
        """Fill ``ratios`` left unset from the profile the adapter publishes for its model class."""
        if self.ratios is not None:
            return self
        published = getattr(adapter, "magcache_ratios", None)
        if published is None:
            self._require_ratios(f"{type(adapter).__name__} publishes none for this model")
        return type(self)(self.threshold, self.max_skip, self.retention, ratios=published, time_grid=self.time_grid,
                          retarget=self.retarget, compute_ratio=self.compute_ratio)

    def describe(self) -> dict:
        if self._profile is None:
            ratios = None if self.ratios is None else "callable magnitude"
        else:
            grid = "position" if self._profile.times is None else "time"
            ratios = f"{len(self._profile.ratios)} ratios on a {grid} grid"
        calibration = None if self.time_grid is None else f"{len(self.time_grid)} calibration steps"
        return {"threshold": self.threshold, "max_skip": self.max_skip,
                "retention": self.retention, "ratios": ratios, "time_grid": calibration, "retarget": self.retarget}

    def new_state(self) -> dict:
        return {"prev_u": None, "prev_t": None, "acc_ratio": 1.0, "acc_err": 0.0}

    def _coordinate(self, obs: Observation) -> float:
        if self._profile is not None and self._profile.times is None:
            n = num_steps(obs, type(self).__name__, "ratios (given without times)")
            return obs.step / (n - 1) if n > 1 else 0.0
        return float(obs.t)

    def _gamma(self, state: dict, obs: Observation) -> float:
        u = self._coordinate(obs)
        if self._profile is not None:
            gamma = self._profile.ratio(state["prev_u"], u)
        else:
            gamma = float(self.ratios(u)) / float(self.ratios(state["prev_u"]))
        if self._scale is None or state["prev_t"] is None:
            return gamma
        return gamma ** (1.0 / self._scale.weight(state["prev_t"], obs.t))

    def _retained(self, obs: Observation) -> int:
        if self.retention <= 0:
            return 0
        return int(self.retention * num_steps(obs, type(self).__name__, "retention") + 0.5)

    def measure(self, state: dict, obs: Observation) -> float | None:
        if self.ratios is None:
            self._require_ratios("none were given or bound from an adapter")
        if state["prev_u"] is None or obs.step < self._retained(obs):
            return None
        return state["acc_err"] + abs(1.0 - state["acc_ratio"] * self._gamma(state, obs))

    def decide(self, state: dict, obs: Observation, metric: float | None) -> bool:
        threshold = self.threshold_for(obs)
        if metric is None or obs.since_compute is None or threshold <= 0:
            return True
        state["acc_ratio"] *= self._gamma(state, obs)
        state["acc_err"] = metric
        return not (metric <= threshold and obs.since_compute <= self.max_skip)

    def observe(
        self,
        state: dict,
        obs: Observation,
        computed: bool,
        inputs: torch.Tensor | None,
        output: torch.Tensor | None,
    ) -> None:
        if computed:
            state["acc_ratio"], state["acc_err"] = 1.0, 0.0
        state["prev_u"] = self._coordinate(obs)
        state["prev_t"] = obs.t
