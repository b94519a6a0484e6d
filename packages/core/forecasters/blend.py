"""FasterCache's attention reuse (arXiv 2410.19355): the last computed output pushed along the
difference of the last two, by a weight that grows over the run."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .base import Forecaster


def linear_ramp(level: float) -> float:
    """FasterCache's w(t): 0 at pure noise rising linearly to 1 at the data (``level`` is the
    noise level in [0, 1])."""
    return min(1.0, max(0.0, 1.0 - level))


@dataclass
class Blend(Forecaster):
    """``F̂ = F_last + w · (F_last − F_prev)`` with ``w = weight(t / time_unit)``.

    FasterCache computes spatial attention every second step and approximates the others this
    way, with w(t) rising linearly from 0 to 1 over the denoising (the paper); diffusers' hook
    defaults to a constant 0.5 instead. ``time_unit`` converts the model's timestep to a noise
    level (1 for models fed sigma, 1000 for models fed scheduler timesteps); left ``None``, it is
    taken from the model's adapter when the policy is applied. Unlike Taylor, the step size does not enter: the weight is a schedule, as in the
    paper. With one computed point it reuses it.
    """

    weight: Callable[[float], float] = linear_ramp
    time_unit: float | None = None
    min_history: int = 1
    max_history: int = 2

    def validate(self) -> None:
        if not callable(self.weight):
            raise ValueError("Blend.weight must be a callable noise level -> weight, e.g. linear_ramp")
        if self.time_unit is not None and self.time_unit <= 0:
            raise ValueError(f"Blend.time_unit={self.time_unit} must be > 0 (1.0 or 1000.0)")

    def bind(self, adapter) -> Blend:
        if self.time_unit is not None:
            return self
        return dataclasses.replace(self, time_unit=adapter.time_unit)

    def predict(self, times: Sequence[float], values: Sequence[torch.Tensor], t: float, state: dict) -> torch.Tensor:
        last = values[-1]
        if len(values) < 2:
            return last.clone()
        w = float(self.weight(t / (self.time_unit or 1.0)))
        out = last.float() + w * (last.float() - values[-2].float())
        return out.to(last.dtype)

    def describe(self) -> dict:
        return {"weight": getattr(self.weight, "__name__", repr(self.weight)), "time_unit": self.time_unit}
