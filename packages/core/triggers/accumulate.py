"""The decision shared by triggers that accumulate an estimated change until a threshold."""

from __future__ import annotations

from ._common import is_last_step
from .base import Observation, Trigger


class Accumulating(Trigger):
    """``measure`` returns the running total ``state["acc"] + this step's change``; the row
    skips while it stays under ``threshold`` and computes once it reaches it (TeaCache's
    accumulated rescaled L1, EasyCache's accumulated deviation). No metric yet, the last step of
    a known schedule, and ``threshold <= 0`` always compute. ``observe`` must zero ``acc`` on a
    compute."""

    threshold: float

    def threshold_for(self, obs: Observation) -> float:
        """The threshold this step compares against (a calibrated trigger may re-target it)."""
        return self.threshold

    def decide(self, state: dict, obs: Observation, metric: float | None) -> bool:
        threshold = self.threshold_for(obs)
        if metric is None or is_last_step(obs) or threshold <= 0:
            return True
        state["acc"] = metric
        return metric >= threshold
