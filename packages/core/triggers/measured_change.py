"""Compute at the step after the change measured while reusing, summed since the last compute, rose above a
threshold."""

from __future__ import annotations

import math

from ..validation import check
from .base import Observation, Trigger


class MeasuredChange(Trigger):
    """Compute once the cache's own staleness measure says so, one step late.

    Some caches measure how stale they are *while* reusing, from work the reuse does anyway: dLLM-Cache's
    V-verify compares fresh value vectors with the cached ones at every step it does not refresh (the drift of
    :mod:`forecache.dllm.drift`). The change of a step is therefore known only after that step, and this trigger
    acts on it at the next one. Rule, per row (or per whole call) and step:

    - ``obs.signal`` is the change measured since the last decision: a number (or a 0-d tensor), or ``None``
      when no step measured one (the step after a compute measures nothing new);
    - metric: the running total ``acc + change`` (``accumulate=True``, default) or the change alone
      (``accumulate=False``); ``None`` without a new change;
    - compute when the metric is strictly above ``threshold`` (so ``threshold=0`` computes after any non-zero
      change and ``threshold=inf`` never does) or NaN (an unreadable measure is treated as stale); without a new
      change, keep reusing;
    - ``observe`` zeroes the total on a compute; a step that reuses keeps the metric as the new total.

    How it differs from :class:`~forecache.core.triggers.accumulate.Accumulating` (TeaCache, EasyCache), whose
    change is estimated from the step's *input* before the step runs: there the step's own change decides it,
    the comparison is ``>=``, ``threshold <= 0`` and a missing metric always compute, and so does the last step
    of a known schedule. Here a missing measure means "nothing new since the last compute" and keeps the cache,
    and the schedule's end plays no role (the caller asks with ``must=True`` when it must compute).

    Metric: the running total (or the change). ``threshold`` has no default: it is the speed/quality knob.
    """

    signal = "change"

    def __init__(self, threshold: float, accumulate: bool = True) -> None:
        self.threshold = threshold
        self.accumulate = accumulate

    def validate(self) -> None:
        who = type(self).__name__
        t = self.threshold
        ok = isinstance(t, (int, float)) and not isinstance(t, bool) and float(t) >= 0.0  # NaN fails too
        check(ok, who, "threshold", t, "must be a number >= 0 (inf: never compute)", "calibrate one for a target")
        check(type(self.accumulate) is bool, who, "accumulate", self.accumulate, "must be True or False",
              "True sums the changes since the last compute, False compares each change alone")

    def new_state(self) -> dict:
        return {"acc": 0.0}

    def measure(self, state: dict, obs: Observation) -> float | None:
        if obs.signal is None:
            return None
        change = float(obs.signal)
        return change + state["acc"] if self.accumulate else change

    def decide(self, state: dict, obs: Observation, metric: float | None) -> bool:
        if metric is None:
            return False
        state["acc"] = metric
        return math.isnan(metric) or metric > self.threshold

    def observe(self, state, obs, computed, inputs, output) -> None:
        if computed:
            state["acc"] = 0.0
