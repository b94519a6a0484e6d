"""Telemetry: per-decision trace records and the aggregate stats of a handle."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Decision:
    """One row's decision at one site and step, and the metric behind it."""

    generation: int
    step: int
    branch: int
    row: int
    site: str
    t: float
    action: str
    """``compute``; ``warmup`` (computed: not enough history to forecast); ``window`` (computed:
    outside the site's active time window); ``cached`` (reused or forecast). Two more follow a
    ``cached`` record of the same row and step and say it was computed after all: ``nonfinite``
    (the forecast had NaN/Inf, so the row was computed again), ``rejected`` (a verified
    forecast failed and the row was recomputed) and ``guarded`` (the site's guard vetoed the
    forecast, e.g. as physically implausible, and the row was computed; ``note`` says why)."""
    metric: float | None = None
    note: str | None = None
    """Why, in words, where a number does not say it (the guard's reason)."""
    segment: object = 0
    """The segment of the generation (a dLLM block, a world-model chunk), 0 when there is one."""

    COMPUTED = frozenset({"compute", "warmup", "window", "nonfinite", "rejected", "guarded"})

    @property
    def computed(self) -> bool:
        return self.action in self.COMPUTED


class Trace(list):
    """The decisions of a handle, in order. ``to_json()`` writes them as a list of objects."""

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps([asdict(d) for d in self], indent=1)
        if path is not None:
            Path(path).write_text(text)
        return text


@dataclass
class Stats:
    """Aggregate telemetry of a handle since it was applied (or last reset).

    ``compute_ratio`` is the FLOPs the cached model really executed divided by the FLOPs the
    uncached model executes on the same calls. Each cached site's per-row FLOPs are counted once
    with ``torch.utils.flop_counter.FlopCounterMode`` the first time it computes at a given shape,
    as are the whole model calls; every skipped row removes its site's FLOPs from the total, and
    every recompute (NaN/Inf forecast, rejected verification) adds them back. Elementwise work of
    forecasting is not counted, as FlopCounterMode does not count it either. Counting costs one
    slower model call per handle and input shape (FlopCounterMode dispatches every op in Python:
    about 0.6 s on a FLUX-size model at 1024x1024); ``apply(..., count_flops=False)`` skips it for
    timing runs, and ``compute_ratio`` is then NaN.
    """

    flops_counted: bool = True
    calls: int = 0
    generations: int = 0
    flops_full: float = 0.0
    flops_skipped: float = 0.0
    flops_extra: float = 0.0
    peak_cache_bytes: int = 0
    nonfinite_recomputes: int = 0
    rejected_forecasts: int = 0
    guarded_forecasts: int = 0
    sites: dict = field(default_factory=lambda: defaultdict(lambda: {"rows": 0, "cached": 0}))
    #: what sites report of their own, by site name (a dLLM cache's refresh steps and V-verify work);
    #: not part of ``as_dict`` (the benchmark JSON), which holds what every method shares
    details: dict = field(default_factory=dict)

    @property
    def compute_ratio(self) -> float:
        if not self.flops_counted:
            return float("nan")
        if self.flops_full <= 0:
            return 1.0
        return (self.flops_full - self.flops_skipped + self.flops_extra) / self.flops_full

    @property
    def hit_rate(self) -> float:
        rows = sum(s["rows"] for s in self.sites.values())
        return 0.0 if rows == 0 else sum(s["cached"] for s in self.sites.values()) / rows

    def as_dict(self) -> dict:
        return {
            "compute_ratio": round(self.compute_ratio, 6),
            "speedup_flops": round(1.0 / max(self.compute_ratio, 1e-12), 4),
            "hit_rate": round(self.hit_rate, 6),
            "calls": self.calls,
            "generations": self.generations,
            "flops_full": self.flops_full,
            "flops_executed": self.flops_full - self.flops_skipped + self.flops_extra,
            "peak_cache_bytes": self.peak_cache_bytes,
            "nonfinite_recomputes": self.nonfinite_recomputes,
            "rejected_forecasts": self.rejected_forecasts,
            "guarded_forecasts": self.guarded_forecasts,
            "sites": {
                name: {**s, "hit_rate": round(s["cached"] / s["rows"], 6) if s["rows"] else 0.0}
                for name, s in self.sites.items()
            },
        }

    def __str__(self) -> str:
        d = self.as_dict()
        ratio = (
            f"compute ratio {d['compute_ratio']:.3f} (FLOPs speedup {d['speedup_flops']:.2f}x)"
            if self.flops_counted else "FLOPs not counted (applied with count_flops=False)"
        )
        lines = [
            f"{ratio}, hit rate {d['hit_rate']:.3f}, {d['calls']} calls in {d['generations']} generation(s), "
            f"peak cache {d['peak_cache_bytes'] / 2**20:.2f} MiB"
        ]
        if d["nonfinite_recomputes"] or d["rejected_forecasts"] or d["guarded_forecasts"]:
            lines.append(
                f"recomputed: {d['nonfinite_recomputes']} non-finite forecasts, "
                f"{d['rejected_forecasts']} rejected forecasts, {d['guarded_forecasts']} vetoed by a guard"
            )
        sites = d["sites"]
        shown = list(sites.items())[:8]
        for name, s in shown:
            lines.append(f"  {name:<40} hit rate {s['hit_rate']:.3f} ({s['cached']}/{s['rows']})")
        if len(sites) > len(shown):
            lines.append(f"  ... and {len(sites) - len(shown)} more sites")
        return "\n".join(lines)
