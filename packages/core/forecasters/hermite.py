"""Hermite: HiCache's scaled-Hermite replacement for the Taylor basis."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .base import Forecaster
from .differences import taylor_weights, weighted_sum


def hermite(n: int, x: float) -> float:
    """Physicists' Hermite polynomial ``H_n(x)`` (``H_1 = 2x``, ``H_2 = 4x^2 - 2``)."""
    prev, cur = 1.0, 2.0 * x
    if n == 0:
        return prev
    for k in range(1, n):
        prev, cur = cur, 2.0 * x * cur - 2.0 * k * prev
    return cur


@functools.lru_cache(maxsize=1024)
def _combined(times: tuple[float, ...], t: float, step: float, sigma: float) -> tuple[float, ...]:
    """One weight per computed value; every row and site of a step asks for the same ones."""
    n = len(times)
    x = (t - times[-1]) / step
    w = taylor_weights(times)
    # term p: (F^(p)/p!) * step^p * σ^p H_p(σx), with H_0 = 1 giving F itself.
    basis = [(step * sigma) ** p * hermite(p, sigma * x) for p in range(n)]
    return tuple(sum(w[p][j] * basis[p] for p in range(n)) for j in range(n))


@dataclass(frozen=True)
class Hermite(Forecaster):
    """``F(t) = F_n + sum_{i=1..m} (Δ^i F_n / i!) * σ^i H_i(σ x)``, ``x`` in sampler steps.

    HiCache ("A Plug-in Scaled-Hermite Upgrade for Taylor-Style Cache-then-Forecast Diffusion
    Acceleration", arXiv 2508.16984) keeps TaylorSeer's derivative estimates ``Δ^i F_n`` and
    swaps the monomials ``x^i`` for scaled Hermite polynomials ``H~_i(x) = σ^i H_i(σ x)``, the
    contraction ``σ`` damping the growth of high orders at long horizons.

    As in the code (FreqCa's ``hermite_formula``, by overlapping authors, and public HiCache ports'
    ``_hicache_polynomial``; the official HiCache repository was not reachable here):
    ``H_i`` are the physicists' polynomials (recurrence ``H_{n+1} = 2x H_n - 2n H_{n-1}``), and
    ``x`` is the signed distance from the last computed step counted in sampler steps, with the
    derivatives per sampler step; the parity of ``H_i`` makes the result independent of which
    way the steps are counted.

    Defaults: ``order=2`` and ``sigma=0.5``, HiCache's FLUX.1-dev setting (N=7, O=2, σ=0.5;
    σ=1 is its "no contraction" ablation). FreqCa's high band uses ``sigma=0.71``.

    What it is exact on: ``σ^i H_i(σ x) = (2σ²)^i x^i + lower-order terms``, so only
    ``σ = 1/√2`` keeps Taylor's leading terms, and then ``σ^i H_i(σ x)`` is the probabilists'
    ``He_i(x)`` (``He_1 = x``, ``He_2 = x² - 1``). So ``Hermite(1, 2**-0.5)`` equals ``Taylor(1)``
    and is exact on lines; any other σ rescales the slope (σ=0.5 halves it), and order 2 adds
    ``-F''·s²/2`` (``s`` the step) even at σ=1/√2, so no σ is exact on quadratics: the
    contraction trades exactness for damping, by design.

    Deviations: derivatives come from divided differences on the real time coordinates (see
    ``Taylor``), and the sampler step ``s`` is measured, not assumed: it is the gap from the
    last computed point to the first forecast after it, kept in ``state`` until the row
    computes again, so ``x = (t - t_n) / s`` is 1, 2, 3, ... on a uniform schedule as in the
    paper, and the derivative terms are scaled by ``s^i`` to per-step units. This needs the
    site to keep ``state`` between the forecasts of one gap (the contract of ``Forecaster``).
    """

    order: int = 2
    sigma: float = 0.5

    def __post_init__(self) -> None:
        self.validate()

    @property
    def max_history(self) -> int:  # type: ignore[override]
        return self.order + 1

    def validate(self) -> None:
        if isinstance(self.order, bool) or not isinstance(self.order, int) or self.order < 0:
            raise ValueError(f"Hermite.order={self.order!r} must be an int >= 0 (HiCache uses 2)")
        if isinstance(self.sigma, bool) or not isinstance(self.sigma, (int, float)):
            raise ValueError(f"Hermite.sigma={self.sigma!r} must be a positive float (HiCache uses 0.5)")
        if not (math.isfinite(self.sigma) and self.sigma > 0):
            raise ValueError(
                f"Hermite.sigma={self.sigma!r} must be a finite float > 0; use a contraction in (0, 1], "
                "e.g. 0.5 (HiCache) or 2**-0.5 (exact on lines)"
            )

    def predict(
        self, times: Sequence[float], values: Sequence[torch.Tensor], t: float, state: dict
    ) -> torch.Tensor:
        n = min(self.order + 1, len(times))
        u = float(t) - float(times[-1])
        if u == 0.0:
            raise ValueError(f"Hermite.predict got t={t}, the time of the last computed point; compute instead")
        step = state.setdefault("hermite_step", u)
        weights = _combined(tuple(times[-n:]), float(t), step, float(self.sigma))
        return weighted_sum(values[-n:], weights).to(values[-1].dtype)
