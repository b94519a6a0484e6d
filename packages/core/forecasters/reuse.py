"""Reuse: the cached value, unchanged (FORA, DeepCache, and every cache-then-reuse method)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .base import Forecaster


@dataclass(frozen=True)
class Reuse(Forecaster):
    """Return the last computed value as it is: ``F(t) = F(t_n)``.

    The zeroth-order forecast of the cache-then-reuse family (FORA, arXiv 2407.01425; DeepCache,
    arXiv 2312.00858; ...). Δ-DiT's residual delta (arXiv 2406.01125) is this forecaster applied
    to a site that caches a residual instead of an output. No knobs.
    """

    min_history = 1
    max_history = 1

    def predict(
        self, times: Sequence[float], values: Sequence[torch.Tensor], t: float, state: dict
    ) -> torch.Tensor:
        # A copy, so a caller that edits the forecast in place cannot corrupt the cache.
        return values[-1].clone()
