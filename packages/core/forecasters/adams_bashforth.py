"""AdamsBashforth: AB-Cache's linear combination of the last k computed outputs."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .base import Forecaster
from .differences import least_squares_weights, weighted_sum


@dataclass(frozen=True)
class AdamsBashforth(Forecaster):
    """``F(t) = sum_{i=1..k} c_i F(t_{n+1-i})`` over the last ``k = order`` computed points.

    AB-Cache ("Training-Free Acceleration of Diffusion Models via Adams-Bashforth Cached Feature
    Reuse", arXiv 2504.10540) reads the denoising ODE through a k-th order Adams-Bashforth
    scheme and concludes that the model output at the next step is approximately a fixed linear
    combination of the outputs at the previous k steps, with truncation error O(h^k). On the
    paper's uniform step grid the coefficients are the binomial extrapolation weights
    ``c_i = (-1)^(i+1) C(k, i)``: (1), (2, -1), (3, -3, 1), ... These are not the Adams-Bashforth
    integration weights (3/2, -1/2 for k=2, ...); those weight the integral of the output over a
    step, while the cache needs the output itself one step ahead, which is what the combination
    above predicts. (Verified from the survey's Eq. 45, a summary of the paper that describes the
    third-order case as the binomial combination of the last three outputs, and a reading of the
    reference FLUX code, which replaces a skipped output by ``2 f_n - f_{n-1}``; the paper's own
    derivation of the ``c_i`` was not accessible here.)

    Defaults: ``order=2`` (``2 F_n - F_{n-1}``, the reference code's setting). With fewer computed
    points the highest order the history supports is used.

    Deviations, both forced by real schedules: the weights are Lagrange extrapolation weights
    computed from the real time coordinates of the last k computed points and the target time,
    so they equal the binomial ones on a uniform grid one step ahead and stay exact for every
    polynomial of degree ``<= k - 1`` on any grid and at any horizon. And the history holds only
    computed points: where AB-Cache's queue also feeds its own reused outputs back in, skipping
    several steps here extrapolates from the last computed points straight to ``t`` (on a
    polynomial of degree ``<= k - 1`` the two agree). ``AdamsBashforth(m + 1)`` therefore equals
    ``Taylor(m)``: the same polynomial, written in another basis.

    ``basis="index"`` computes the same weights on step indices instead of times: the paper's
    binomial weights whenever the computed steps and the target are evenly spaced in index, whatever
    the time grid (exact for polynomials in the step index). The default ``basis="time"`` is the
    step-distance-aware form (exact for polynomials in ``t`` on any grid).

    ``points`` (this project's extension; default ``None``, i.e. ``order``): fit the polynomial of
    degree ``order - 1`` to the last ``points`` computed outputs by least squares instead of
    interpolating the last ``order``. Still exact on polynomials of degree ``<= order - 1``, it
    averages out a component the polynomial cannot follow, where interpolation extrapolates it:
    a self-conditioned model whose outputs alternate from one step to the next (the molecule model
    of ``forecache.science``, see its ADAPTER.md) gives, at interval 3, computed points of
    alternating phase, and ``2 F_n - F_(n-1)`` then carries two to three times the alternation.
    The cost is the memory of ``points`` outputs instead of ``order``.
    """

    order: int = 2
    basis: str = "time"
    points: int | None = None

    def __post_init__(self) -> None:
        self.validate()

    @property
    def max_history(self) -> int:  # type: ignore[override]
        return self.order if self.points is None else self.points

    def validate(self) -> None:
        if isinstance(self.order, bool) or not isinstance(self.order, int) or self.order < 1:
            raise ValueError(
                f"AdamsBashforth.order={self.order!r} must be an int >= 1 "
                "(the number of past outputs combined; 1 = reuse, 2 = 2F_n - F_(n-1))"
            )
        if self.points is not None and (
            isinstance(self.points, bool) or not isinstance(self.points, int) or self.points < self.order
        ):
            raise ValueError(
                f"AdamsBashforth.points={self.points!r} must be None (interpolate the last `order` outputs) "
                f"or an int >= order={self.order!r} (least-squares fit over that many outputs, e.g. 7 for order 4)"
            )
        if self.basis not in ("time", "index"):
            raise ValueError(
                f"AdamsBashforth.basis={self.basis!r} must be 'time' (real time gaps) or 'index' "
                "(step indices: the paper's uniform-grid binomial weights)"
            )

    def predict(
        self, times: Sequence[float], values: Sequence[torch.Tensor], t: float, state: dict
    ) -> torch.Tensor:
        k = min(self.max_history, len(times))
        degree = min(self.order, k) - 1
        weights = _weights(tuple(float(x) for x in times[-k:]), float(t), degree)
        return weighted_sum(list(values[-k:]), weights).to(values[-1].dtype)


@functools.lru_cache(maxsize=1024)
def _weights(times: tuple[float, ...], t: float, degree: int) -> tuple[float, ...]:
    # Every row and every output part of a site asks for the same weights at a step; the least-squares
    # solve in plain Python would otherwise cost a large part of a forecast step (measured on the
    # molecule benchmark: 32 rows x 4 outputs per step).
    return tuple(least_squares_weights(times, t, degree))
