"""The unconditional branch of classifier-free guidance as a cached site (FasterCache's CFG-Cache)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..forecasters.base import Forecaster
from ..sites.cfg import CfgSite
from ..triggers.base import Trigger
from .base import Selector


@dataclass
class CfgBranch(Selector):
    """Rebuild the unconditional output from the conditional one at cached steps.

    ``layout``: ``"sequential"`` (cond and uncond are two model calls per step; ``uncond`` is the
    index of the uncond call, 1 for diffusers' true-CFG Flux pipelines) or ``"batched"`` (one call
    over [uncond; cond] rows: ``uncond=0``, the diffusers convention, or [cond; uncond]: ``1``).
    """

    layout: str = "sequential"
    uncond: int = 1
    alpha_low: float = 1.1
    alpha_high: float = 1.1
    low_window: tuple[float, float] = (0.099, 0.901)
    high_window: tuple[float, float] = (0.0, 0.301)
    when: Trigger | None = None
    what: Forecaster | None = None
    window: tuple[float, float] | None = None
    key: Callable | None = None

    def validate(self) -> None:
        super().validate()
        if self.layout not in ("sequential", "batched"):
            raise ValueError(f"CfgBranch.layout={self.layout!r}: use 'sequential' or 'batched'")
        if self.uncond not in (0, 1):
            raise ValueError(f"CfgBranch.uncond={self.uncond}: the unconditional branch index is 0 or 1")
        if self.alpha_low <= 0 or self.alpha_high <= 0:
            raise ValueError("CfgBranch.alpha_low / alpha_high must be > 0 (FasterCache uses 1.1)")

    def build(self, runtime, model, adapter, policy):
        return [
            CfgSite(
                "cfg.uncond", runtime, self.trigger_for(policy, adapter), self.forecaster_for(policy, adapter),
                layout=self.layout, uncond=self.uncond, alpha_low=self.alpha_low, alpha_high=self.alpha_high,
                low_window=self.low_window, high_window=self.high_window, window=self.window, key=self.key,
            )
        ]
