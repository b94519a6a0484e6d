"""Taylor: TaylorSeer's cache-then-forecast, a Taylor series around the newest computed point."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .base import Forecaster
from .differences import derivatives, taylor_weights, weighted_sum

__all__ = ["Taylor", "derivatives"]


@functools.lru_cache(maxsize=1024)
def _combined(times: tuple[float, ...], t: float) -> tuple[float, ...]:
    """One weight per computed value: ``sum_p c_p u^p`` with ``c_p = sum_j W[p][j] F_j`` and
    ``u = t - times[-1]``. Every row and site of a step asks for the same weights: computed once."""
    n, u = len(times), t - float(times[-1])
    w = taylor_weights(times)
    return tuple(sum(w[p][j] * u**p for p in range(n)) for j in range(n))


@dataclass(frozen=True)
class Taylor(Forecaster):
    """Taylor expansion of order ``order`` around the newest computed point.

    TaylorSeer ("From Reusing to Forecasting: Accelerating Diffusion Models with TaylorSeers",
    arXiv 2503.06923) predicts ``F(t_n + Δ) = sum_{i<=m} F^(i)(t_n) / i! * Δ^i`` with the
    derivatives estimated from the cached computed points (Eq. 42 of "A Survey on Cache Methods
    in Diffusion Models").

    Defaults: ``order=1`` (linear; order 2 is the setting the HiCache and FreqCa comparisons run).
    Until ``order + 1`` points are computed the highest order the history supports is used, as
    TaylorSeer does during its first steps; ``order=0`` is plain reuse.

    Deliberate deviation: the paper estimates ``Δ^i F`` by recursive finite differences divided
    by the computation interval ``N`` (``Δ^{i+1} = (Δ^i_now - Δ^i_prev) / N``), which are only
    first-order accurate derivatives: order 2 is not exact even on a quadratic, and a
    non-uniform schedule breaks the single ``N``. Here the derivatives are those of the Newton
    interpolant through the last ``order + 1`` points, built from divided differences on the
    real time coordinates. The forecast is then exact for every polynomial of degree
    ``<= order`` on any grid (it equals polynomial extrapolation through those points), and at
    order 1 it is the paper's formula exactly (one secant slope).
    """

    order: int = 1

    def __post_init__(self) -> None:
        self.validate()

    @property
    def max_history(self) -> int:  # type: ignore[override]
        return self.order + 1

    def validate(self) -> None:
        if isinstance(self.order, bool) or not isinstance(self.order, int) or self.order < 0:
            raise ValueError(
                f"Taylor.order={self.order!r} must be an int >= 0 (0 = reuse, 1 = linear, 2 = quadratic)"
            )

    def predict(
        self, times: Sequence[float], values: Sequence[torch.Tensor], t: float, state: dict
    ) -> torch.Tensor:
        n = min(self.order + 1, len(times))
        return weighted_sum(values[-n:], _combined(tuple(times[-n:]), float(t))).to(values[-1].dtype)
