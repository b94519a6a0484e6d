"""A policy is where × when × what, plus storage options; presets are policies with a paper's defaults."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .forecasters.base import Forecaster
from .forecasters.reuse import Reuse
from .selectors.base import Selector
from .triggers.base import Trigger


@dataclass
class Policy:
    """What to cache (``where``: one selector or several), when to compute (``when``: a trigger)
    and what to return otherwise (``what``: a forecaster).

    Compose freely: ``teacache().replace(what=Taylor(2))`` is TeaCache's trigger with TaylorSeer's
    forecaster. ``storage_dtype`` stores cached features in a smaller type; ``max_cache_bytes``
    bounds the cache and raises ``CacheBudgetError`` past it. ``calibrated_for`` names the model
    class a calibration profile was fitted on (presets set it from ``profile=``); applying the
    policy to another class raises ValueError.
    """

    where: Selector | Sequence[Selector]
    when: Trigger
    what: Forecaster = field(default_factory=Reuse)
    name: str = "custom"
    paper: str = ""
    storage_dtype: torch.dtype | None = None
    max_cache_bytes: int | None = None
    calibrated_for: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    @property
    def selectors(self) -> tuple[Selector, ...]:
        return (self.where,) if isinstance(self.where, Selector) else tuple(self.where)

    def validate(self) -> None:
        if not self.selectors or not all(isinstance(s, Selector) for s in self.selectors):
            raise ValueError(
                f"Policy.where={self.where!r} must be a selector (e.g. Blocks(), Submodules(('attn', 'mlp'))) or a list of them"
            )
        if not isinstance(self.when, Trigger):
            raise ValueError(f"Policy.when={self.when!r} must be a Trigger (e.g. Interval(3), RelativeL1(0.4))")
        if not isinstance(self.what, Forecaster):
            raise ValueError(f"Policy.what={self.what!r} must be a Forecaster (e.g. Reuse(), Taylor(1))")
        if self.storage_dtype is not None and not (
            isinstance(self.storage_dtype, torch.dtype) and self.storage_dtype.is_floating_point
        ):
            raise ValueError(f"Policy.storage_dtype={self.storage_dtype!r} must be a floating torch.dtype or None")
        if self.max_cache_bytes is not None and (not isinstance(self.max_cache_bytes, int) or self.max_cache_bytes <= 0):
            raise ValueError(f"Policy.max_cache_bytes={self.max_cache_bytes!r} must be a positive int, or None")
        if self.calibrated_for is not None and not isinstance(self.calibrated_for, str):
            raise ValueError(f"Policy.calibrated_for={self.calibrated_for!r} must be a model class name or None")
        self.when.validate()
        self.what.validate()
        for s in self.selectors:
            s.validate()
            if s.when is not None:
                for trig in (s.when.values() if isinstance(s.when, dict) else (s.when,)):
                    trig.validate()
            if s.what is not None:
                s.what.validate()

    def check_model(self, model: object) -> None:
        """Raise ValueError when the policy was calibrated for another model class than ``model``'s."""
        name = type(model).__name__
        if self.calibrated_for is not None and self.calibrated_for != name:
            raise ValueError(
                f"policy {self.name!r} was calibrated on {self.calibrated_for}, but is applied to {name}: "
                f"a profile fitted on one model class does not hold for another; calibrate {name} "
                "(`forecache calibrate`, or forecache.core.calibration.calibrate) and pass that profile"
            )

    def replace(self, **changes) -> Policy:
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "paper": self.paper,
            "where": [s.describe() for s in self.selectors],
            "when": {"type": type(self.when).__name__, **self.when.describe()},
            "what": {"type": type(self.what).__name__, **self.what.describe()},
            "storage_dtype": None if self.storage_dtype is None else str(self.storage_dtype),
            "max_cache_bytes": self.max_cache_bytes,
            **({} if self.calibrated_for is None else {"calibrated_for": self.calibrated_for}),
        }
