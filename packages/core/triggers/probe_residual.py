"""Change of the probe blocks' residual since the last computed step (FBCache, DBCache)."""

from __future__ import annotations

import torch

from ..validation import check_int, check_real
from ._common import measure_changes, relative_l1, snapshot
from .base import Observation, Trigger

#: cache-dit's DBCache defaults (``BasicCacheConfig`` in vipshop/cache-dit
#: ``src/cache_dit/caching/cache_contexts/cache_config.py``, commit f86744a; its design doc calls
#: this "F8B0, 8 warmup steps, and unlimited cached steps"). ``Fn``/``Bn`` are the span site's
#: ``probe``/``tail`` blocks, the rest are this trigger's knobs.
DBCACHE_DEFAULTS: dict = {
    "Fn": 8,
    "Bn": 0,
    "threshold": 0.08,
    "warmup": 8,
    "max_cached_steps": -1,
    "max_continuous_cached": -1,
}

#: FBCache's FLUX.1-dev threshold (chengzeyi/ParaAttention ``doc/fastest_flux.md``: "0.08, which
#: is the default value for FLUX models"), with Fn=1, Bn=0 and no warm-up.
FBCACHE_FLUX_THRESHOLD: float = 0.08


class ProbeResidual(Trigger):
    """First-Block Cache (ParaAttention) and Dual-Block Cache (cache-dit): the first blocks always
    run, and how much their residual moved tells whether the rest can be reused.

    Signal: ``"probe_residual"``, output minus input of the probe blocks (DBCache's Fn; FBCache's
    single first block).

    Rule, per row and step: compute while ``step < warmup``; compute once ``max_cached_steps``
    steps have been cached in this generation (-1: no limit); compute once
    ``max_continuous_cached`` consecutive steps have been cached (-1: no limit); compute when
    ``threshold <= 0`` (caching disabled, as in both references); otherwise compute iff
    ``d >= threshold`` with ``d = mean|r - r_ref| / mean|r_ref|`` and ``r_ref`` the probe residual
    of the LAST COMPUTED step (both references store it only when the rest of the model runs).
    Metric: ``d``.

    Verified against ParaAttention ``first_block_cache/utils.py`` (commit 4de137c:
    ``are_two_tensors_similar`` returns ``diff < threshold`` to reuse, ``warmup_steps`` default 0)
    and cache-dit ``cache_manager.py`` (commit f86744a: ``similarity``, ``can_cache``). Defaults
    here are FBCache's (``warmup=0``, no limits); :data:`DBCACHE_DEFAULTS` has DBCache's
    (Fn=8, Bn=0, threshold=0.08, warmup=8, unlimited cached steps). cache-dit's
    ``warmup_interval`` (compute every k-th warm-up step) is not modelled; its default 1 is what
    this does.

    Deviations: cache-dit treats ``threshold >= 1`` as "always reuse"; here it is an ordinary
    (very permissive) threshold. cache-dit's consecutive-cached counter is not reset by a compute
    unless the limit was hit; here it is the actual run of cached steps since the last compute
    (``since_compute - 1``), which is what its documentation describes. Under torch.distributed
    the references average numerator and denominator separately; here the ratio is averaged.
    """

    signal = "probe_residual"

    def __init__(
        self,
        threshold: float,
        warmup: int = 0,
        max_cached_steps: int = -1,
        max_continuous_cached: int = -1,
    ) -> None:
        self.threshold = threshold
        self.warmup = warmup
        self.max_cached_steps = max_cached_steps
        self.max_continuous_cached = max_continuous_cached

    def validate(self) -> None:
        who = type(self).__name__
        check_real(who, "threshold", self.threshold, 0.0, "use e.g. 0.08 (FBCache/DBCache FLUX)")
        check_int(who, "warmup", self.warmup, 0, "use 0 (FBCache) or 8 (DBCache)")
        for knob in ("max_cached_steps", "max_continuous_cached"):
            value = getattr(self, knob)
            check_int(who, knob, value, -1, "use -1 for no limit or a count >= 0")

    def new_state(self) -> dict:
        return {"ref": None, "cached": 0}

    def measure(self, state: dict, obs: Observation) -> float | None:
        if state["ref"] is None or obs.signal is None or obs.signal.shape != state["ref"].shape:
            return None
        return relative_l1(obs.signal, state["ref"])

    def measure_rows(self, states, obs) -> list[float | None]:
        return measure_changes(states, obs, "ref", _change)

    def decide(self, state: dict, obs: Observation, metric: float | None) -> bool:
        if metric is None or obs.step < self.warmup or self.threshold <= 0:
            return True
        if 0 <= self.max_cached_steps <= state["cached"]:
            return True
        run = 0 if obs.since_compute is None else obs.since_compute - 1
        if 0 <= self.max_continuous_cached <= run:
            return True
        return metric >= self.threshold

    def observe(
        self,
        state: dict,
        obs: Observation,
        computed: bool,
        inputs: torch.Tensor | None,
        output: torch.Tensor | None,
    ) -> None:
        if computed:
            state["ref"] = snapshot(obs.signal)
        else:
            state["cached"] += 1


def _change(state: dict, obs: Observation, change: float) -> float:
    """The metric is the probe residual's relative L1 change itself."""
    return change
