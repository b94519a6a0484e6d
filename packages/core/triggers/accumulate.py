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

    def decide(self, state: dict, obs: Observation, metric: float | None) -> bool:
        if metric is None or is_last_step(obs) or self.threshold <= 0:
            return True
        state["acc"] = metric
        return metric >= self.threshold
