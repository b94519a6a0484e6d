"""What a handle counts: decisions (the trace), FLOPs executed and skipped, and forecasts to check."""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

import torch

from .flops import FlopMeter
from .storage import Storage
from .telemetry import Decision, Stats, Trace

if TYPE_CHECKING:
    from .sites.base import CallContext

log = logging.getLogger("forecache")

#: actions that follow a ``cached`` record of the same row and step: the row was computed after all
_UNDONE = ("rejected", "nonfinite", "guarded")


class Accounts:
    """The trace, the stats and the FLOP meter of one handle."""

    def __init__(self, storage: Storage, count_flops: bool) -> None:
        self.storage = storage
        self.meter = FlopMeter(count_flops)
        self.stats = Stats(flops_counted=count_flops)
        self.trace = Trace()
        self._checks: list[tuple[str, CallContext, int, torch.Tensor]] = []

    def clear(self) -> None:
        self.stats = Stats(flops_counted=self.meter.enabled)
        self.trace = Trace()
        self.storage.reset_peak()

    # -- decisions -------------------------------------------------------------------------------
    def record(
        self, site: str, ctx: CallContext, r: int, action: str, metric: float | None, note: str | None = None
    ) -> None:
        d = Decision(ctx.generation, ctx.step, ctx.branch, ctx.row_of(r), site, ctx.t, action, metric, note,
                     segment=ctx.segment)
        self.trace.append(d)
        s = self.stats.sites[site]
        if action in _UNDONE:
            s["cached"] -= 1
            if action == "rejected":
                self.stats.rejected_forecasts += 1
            elif action == "guarded":
                self.stats.guarded_forecasts += 1
                log.info("forecache: %s vetoed the forecast at step %d row %d (%s); computed", site, ctx.step, r, note)
            else:
                self.stats.nonfinite_recomputes += 1
                log.warning("forecache: non-finite forecast at %s step %d row %d; recomputed", site, ctx.step, r)
            return
        s["rows"] += 1
        s["cached"] += 0 if d.computed else 1

    # -- FLOPs -----------------------------------------------------------------------------------
    def run(self, key: Hashable, rows: int, fn: Callable[[], Any]) -> Any:
        return self.meter.run(key, rows, fn)

    def skipped(self, key: Hashable, rows: float, flops: float | None = None) -> None:
        per_row = self._per_row(key, flops)
        if per_row is None:
            if self.meter.enabled:
                log.warning("forecache: no FLOP count yet for %s; its skip is not counted in stats()", key[:2])
            return
        self.stats.flops_skipped += per_row * rows

    def extra(self, key: Hashable, rows: float, flops: float | None = None) -> None:
        self.stats.flops_extra += (self._per_row(key, flops) or 0.0) * rows

    def model_call(self, key: Hashable, rows: int) -> None:
        self.stats.calls += 1
        self.stats.flops_full += (self.meter.per_row(key) or 0.0) * rows
        self.stats.peak_cache_bytes = max(self.stats.peak_cache_bytes, self.storage.peak_bytes)

    def _per_row(self, key: Hashable, flops: float | None) -> float | None:
        """Analytic per-row FLOPs when the site gives them (a varying token subset, which counting by
        shape cannot follow), else the meter's count for ``key``."""
        if flops is not None:
            return flops if self.meter.enabled else None
        return self.meter.per_row(key)

    # -- health ----------------------------------------------------------------------------------
    def check_finite(self, site: str, ctx: CallContext, r: int, value: tuple[torch.Tensor, ...]) -> None:
        """Queue a forecast's finiteness as a device tensor: read once per model call, so a GPU
        synchronises once per call, not at every site."""
        flag = torch.stack([torch.isfinite(p).all() for p in value]).all()
        self._checks.append((site, ctx, r, flag))

    def nonfinite(self) -> list[tuple[str, CallContext, int]]:
        """The queued forecasts that had NaN/Inf (recorded as ``nonfinite``); the queue empties."""
        checks, self._checks = self._checks, []
        if not checks:
            return []
        flags = torch.stack([c[3].to("cpu") for c in checks]).tolist()
        bad = [c[:3] for c, ok in zip(checks, flags) if not ok]
        for site, ctx, r in bad:
            self.record(site, ctx, r, "nonfinite", None)
        return bad

    def discard_checks(self) -> None:
        self._checks.clear()

    def summary(self) -> Stats:
        self.stats.peak_cache_bytes = max(self.stats.peak_cache_bytes, self.storage.peak_bytes)
        return self.stats
