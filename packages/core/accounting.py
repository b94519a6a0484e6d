"""What a handle counts: decisions (the trace), FLOPs executed and skipped, and forecasts to check."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

import torch

from .flops import FlopMeter
from .storage import Storage
from .telemetry import Decision, Stats, Trace

if TYPE_CHECKING:
    from .sites.base import CallContext, Site

log = logging.getLogger("forecache")

#: actions that follow a ``cached`` record of the same row and step: the row was computed after all
_UNDONE = ("rejected", "nonfinite", "guarded")
_COMPUTED = Decision.COMPUTED


class Accounts:
    """The trace, the stats and the FLOP meter of one handle: the accounting half of the site
    contract (:class:`forecache.core.runtime.Runtime`)."""

    def __init__(self, storage: Storage, count_flops: bool) -> None:
        self.storage = storage
        self.meter = FlopMeter(count_flops)
        self.stats = Stats(flops_counted=count_flops)
        self.trace = Trace()
        self._checks: list[tuple] = []

    def clear(self) -> None:
        self.stats = Stats(flops_counted=self.meter.enabled)
        self.trace = Trace()
        self.storage.reset_peak()

    # -- decisions -------------------------------------------------------------------------------
    def record(
        self, site: Site | str, ctx: CallContext, r: int, action: str, metric: float | None = None, note: str | None = None
    ) -> None:
        """Record row ``r``'s decision at ``site`` (a site, or the name of a part of one that decides
        on its own: a dLLM cache's prompt and answer); see :class:`forecache.core.telemetry.Decision`.
        ``r = -1``: a decision for the whole call, every row alike."""
        row = r if ctx.rows is None or r < 0 else ctx.rows[r]
        name = site if isinstance(site, str) else site.name
        self.trace.append(Decision(ctx.generation, ctx.step, ctx.branch, row, name, ctx.t, action, metric, note, ctx.segment))
        if action == "guarded":
            log.info("forecache: %s vetoed the forecast at step %d row %d (%s); computed", name, ctx.step, row, note)
        elif action == "nonfinite":
            log.warning("forecache: non-finite forecast at %s step %d row %d; recomputed", name, ctx.step, row)

    # -- FLOPs -----------------------------------------------------------------------------------
    def run(self, key: Hashable, rows: int, fn: Callable[[], Any]) -> Any:
        """``fn()``, whose FLOPs per row are counted the first time ``key`` runs."""
        return self.meter.run(key, rows, fn)

    def skipped(self, key: Hashable, rows: float, flops: float | None = None) -> None:
        """``rows`` rows did not run ``key`` (``flops``: per-row FLOPs, when counted analytically)."""
        # _per_row inlined: skipped runs at every site call that forecasts
        per_row = self.meter.counts.get(key) if flops is None else (flops if self.meter.enabled else None)
        if per_row is None:
            if self.meter.enabled:
                shown = key[:2] if isinstance(key, tuple) else key
                log.warning("forecache: no FLOP count yet for %s; its skip is not counted in stats()", shown)
            return
        self.stats.flops_skipped += per_row * rows

    def extra(self, key: Hashable, rows: float, flops: float | None = None) -> None:
        """``rows`` rows ran ``key`` once more than the uncached model would."""
        self.stats.flops_extra += (self._per_row(key, flops) or 0.0) * rows

    def _per_row(self, key: Hashable, flops: float | None) -> float | None:
        """The site's analytic per-row count when it gives one (a varying token subset, which counting
        by shape cannot follow), else the meter's count for ``key``; None when nothing is counted."""
        if flops is None:
            return self.meter.counts.get(key)
        return flops if self.meter.enabled else None

    def model_call(self, key: Hashable, rows: int) -> None:
        self.stats.calls += 1
        self.stats.flops_full += (self.meter.per_row(key) or 0.0) * rows
        self.stats.peak_cache_bytes = max(self.stats.peak_cache_bytes, self.storage.peak_bytes)

    # -- health ----------------------------------------------------------------------------------
    def check_finite(self, site: Site | str, ctx: CallContext, rows: list[int], parts: tuple[torch.Tensor, ...]) -> None:
        """Queue the forecasts of ``rows`` (``parts``: each part stacked over those rows, in order)
        for the NaN/Inf check at the end of the model call: a device flag, read once per call, so a
        GPU synchronises once per call, not at every site. A bad row is computed again."""
        flag = torch.isfinite(parts[0]).all() if len(parts) == 1 else torch.stack([torch.isfinite(p).all() for p in parts]).all()
        self._checks.append((site, ctx, rows, parts, flag))

    def nonfinite(self) -> list[tuple[Site, CallContext, int]]:
        """The queued forecast rows that had NaN/Inf (recorded as ``nonfinite``); the queue empties."""
        checks, self._checks = self._checks, []
        if not checks:
            return []
        flags = torch.stack([c[4] for c in checks]).cpu().tolist()
        bad = []
        for (site, ctx, rows, parts, _), ok in zip(checks, flags):
            if ok:
                continue
            finite = torch.stack([torch.isfinite(p.flatten(1)).all(1) for p in parts]).all(0).cpu().tolist()
            bad.extend((site, ctx, r) for r, fine in zip(rows, finite) if not fine)
        for site, ctx, r in bad:
            self.record(site, ctx, r, "nonfinite", None)
        return bad

    def discard_checks(self) -> None:
        self._checks.clear()

    def summary(self) -> Stats:
        """The stats, their decision counts folded from the trace."""
        stats = self.stats
        stats.peak_cache_bytes = max(stats.peak_cache_bytes, self.storage.peak_bytes)
        sites: dict = defaultdict(lambda: {"rows": 0, "cached": 0})
        undone = dict.fromkeys(_UNDONE, 0)
        for d in self.trace:
            s = sites[d.site]
            if d.action in undone:
                s["cached"] -= 1
                undone[d.action] += 1
            else:
                s["rows"] += 1
                s["cached"] += d.action not in _COMPUTED
        stats.sites = sites
        stats.rejected_forecasts, stats.guarded_forecasts = undone["rejected"], undone["guarded"]
        stats.nonfinite_recomputes = undone["nonfinite"]
        return stats
