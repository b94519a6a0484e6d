"""Forecast, then verify the forecast against a cheap real computation (SpeCa)."""

from __future__ import annotations

from ..validation import check, check_int, check_real
from ._common import num_steps
from .base import Observation, Trigger


class Speculative(Trigger):
    """SpeCa (arXiv 2509.11628): forecast-then-verify, after speculative decoding.

    ``decide`` proposes a forecast (False) unless the row is in the first ``warmup`` steps or has
    already forecast ``max_forecast`` steps in a row. The site then runs a verification block
    (the span's tail) on the forecast and on the real features, and calls
    ``verify(state, obs, e)`` with ``e = ||pred - true|| / ||true||``. The forecast is accepted iff
    ``e <= tau_t``, with the time-dependent threshold

        ``tau_t = max(threshold * decay ** (step / num_steps), min_threshold)``

    strict late in sampling, where details form, and loose early. A rejected step is recomputed
    by the site. The first ``min_forecast`` forecasts after a compute are accepted unverified.
    Metric: consecutive forecasts so far. ``threshold=0`` never forecasts (the floor
    ``min_threshold`` would otherwise still accept small errors).

    The form of ``tau_t`` is the released code's (the paper text was not available to check it):
    Shenyi-Z/Cache4Diffusion (commit 91a1949), ``flux/speca-flux/.../cal_type.py``:
    ``threshold = max(base_threshold * decay_rate ** (step / num_steps), 0.1)``; full compute when
    ``step < first_enhance`` (3), when ``taylor_step_counter >= max_taylor_steps``, or when the
    checked error exceeds the threshold; checks start once ``min_taylor_steps`` forecasts ran.
    Defaults are the DiT script's (``dit/speca-dit/sample.py``): threshold=0.1, decay=0.01,
    max_forecast=5, min_threshold=0.01 (its floor), warmup=3. The FLUX CLI uses threshold=7.0,
    decay=0.3, max_forecast=8, floor 0.1, on a different error (below). The DiT script's progress
    is ``(step + 1) / num_steps``; the FLUX one's ``step / num_steps`` is used here.

    Deviations: the reference measures a mean element-wise relative L1 error
    (``mean(|pred - true| / |true|)``, heavy-tailed where ``true`` is near 0, so its thresholds do
    not carry over); here ``e`` is the norm ratio the site computes, ``||F_pred - F|| / ||F||`` as
    the survey states SpeCa's verifier (its eq. 56). The reference stores the
    error and recomputes at the NEXT step; here a rejected step is itself recomputed (the paper's
    rollback). Its ``min_taylor_steps=2`` skips verification to save compute; the site here
    verifies every forecast anyway, so ``min_forecast`` defaults to 0 (trust none).
    """

    verifies = True

    def __init__(
        self,
        threshold: float = 0.1,
        max_forecast: int = 5,
        decay: float = 0.01,
        min_threshold: float = 0.01,
        warmup: int = 3,
        min_forecast: int = 0,
    ) -> None:
        self.threshold = threshold
        self.max_forecast = max_forecast
        self.decay = decay
        self.min_threshold = min_threshold
        self.warmup = warmup
        self.min_forecast = min_forecast

    def validate(self) -> None:
        who = type(self).__name__
        check_real(who, "threshold", self.threshold, 0.0, "use e.g. 0.1 (SpeCa DiT)")
        check_int(who, "max_forecast", self.max_forecast, 1, "use e.g. 5 (SpeCa DiT)")
        check_real(who, "decay", self.decay, 0.0, "use a factor in (0, 1], e.g. 0.01; 1 is constant")
        check(0 < self.decay <= 1, who, "decay", self.decay, "must be in (0, 1]",
              "use e.g. 0.01 (SpeCa DiT) or 0.3 (FLUX); 1 keeps the threshold constant")
        check_real(who, "min_threshold", self.min_threshold, 0.0, "use e.g. 0.01, or 0 for no floor")
        check_int(who, "warmup", self.warmup, 0, "use e.g. 3 (SpeCa)")
        check_int(who, "min_forecast", self.min_forecast, 0, "use 0 to verify every forecast")

    def tau(self, obs: Observation) -> float:
        """The acceptance threshold at this step."""
        progress = obs.step / num_steps(obs, type(self).__name__, "threshold (tau_t)")
        return max(self.threshold * self.decay**progress, self.min_threshold)

    def measure(self, state: dict, obs: Observation) -> float | None:
        return None if obs.since_compute is None else float(obs.since_compute - 1)

    def decide(self, state: dict, obs: Observation, metric: float | None) -> bool:
        if obs.since_compute is None or obs.step < self.warmup or self.threshold <= 0:
            return True
        return obs.since_compute - 1 >= self.max_forecast

    def verify(self, state: dict, obs: Observation, error: float) -> bool:
        if obs.since_compute is not None and obs.since_compute <= self.min_forecast:
            return True
        return error <= self.tau(obs)
