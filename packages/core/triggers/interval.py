"""Fixed-interval refresh with warm-up and cool-down (FORA, DeepCache)."""

from __future__ import annotations

from ..validation import check_int
from ._common import num_steps
from .base import Observation, Trigger


class Interval(Trigger):
    """Compute every ``interval`` steps; in between, reuse or forecast.

    FORA (arXiv 2407.01425) and DeepCache (arXiv 2312.00858) refresh the cache on a fixed
    period N and use the cached features for the N-1 steps in between.

    Rule, per row and step:

    - compute while ``step < warmup`` (the first steps set the image's layout and change fast);
    - compute on the last ``cooldown`` steps (needs the schedule: ``obs.timesteps``);
    - otherwise compute when ``since_compute >= interval``, i.e. the period is counted from the
      row's last real computation.

    Metric: ``since_compute``.

    ``interval`` has no default because it is the speed/quality knob. Both references use N=3:
    FORA's README runs ``--cache-threshold 3`` (its name for N) on DiT with 250 steps
    (prathebaselva/FORA ``src/models.py``, commit acde628) and DeepCache's README example is
    ``cache_interval=3`` (horseee/DeepCache, commit 1691a3a). ``warmup`` and ``cooldown`` default
    to 0 (plain FORA/DeepCache).

    Deviations: both references compute at ``step % N == 0`` (DeepCache's uniform
    ``range(0, steps, N)``), FORA also on the final step. Counting from the last computation gives
    the same steps without warm-up, and keeps the period right after a warm-up or after a compute
    the site forced (NaN guard, forecaster without history). FORA's final step is ``cooldown=1``.
    """

    def __init__(self, interval: int, warmup: int = 0, cooldown: int = 0) -> None:
        self.interval = interval
        self.warmup = warmup
        self.cooldown = cooldown

    def validate(self) -> None:
        who = type(self).__name__
        check_int(who, "interval", self.interval, 1, "use 1 (always compute) or more, e.g. 3")
        check_int(who, "warmup", self.warmup, 0, "use 0 for no warm-up")
        check_int(who, "cooldown", self.cooldown, 0, "use 0 for no cool-down")

    def measure(self, state: dict, obs: Observation) -> float | None:
        return None if obs.since_compute is None else float(obs.since_compute)

    def decide(self, state: dict, obs: Observation, metric: float | None) -> bool:
        if obs.since_compute is None or obs.step < self.warmup:
            return True
        if self.cooldown > 0 and obs.step >= num_steps(obs, type(self).__name__, "cooldown") - self.cooldown:
            return True
        return obs.since_compute >= self.interval
