"""Fitting TeaCache's rescaling polynomial to a recording.

TeaCache (Liu et al., arXiv 2411.19108, Sec. 4.2) observes that the relative L1 change of the
timestep-modulated input between two steps predicts the change of the model output, up to a
model-specific scaling, and fits a polynomial ``output_change ≈ poly(input_change)`` by least
squares (``numpy.polyfit``, degree 4 in the reference scripts) on the steps of a few uncached
generations. :func:`fit_teacache` does the same on a :class:`~.recording.Recording`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .recording import Recording

#: TeaCache's polynomial degree (the reference scripts' ``np.polyfit(x, y, 4)``).
TEACACHE_DEGREE = 4


@dataclass(frozen=True)
class TeaCachePolynomial:
    """A fitted TeaCache polynomial: ``coefficients`` highest power first (``numpy.poly1d``
    order, as :class:`~forecache.core.triggers.rel_l1.RelativeL1` takes them), the degree, the
    root-mean-square residual of the fit, the range of input changes it was fitted on, and how
    many points it saw."""

    coefficients: tuple[float, ...]
    degree: int
    rmse: float
    input_range: tuple[float, float]
    points: int

    def __call__(self, x: float | np.ndarray) -> float | np.ndarray:
        return np.polyval(self.coefficients, x)

    def as_data(self) -> dict:
        """The entries a profile stores under ``data``."""
        return {"coefficients": list(self.coefficients), "degree": self.degree, "fit_rmse": self.rmse,
                "input_range": list(self.input_range), "fit_points": self.points}


def fit_teacache(
    data: Recording | tuple[Sequence[float], Sequence[float]],
    degree: int = TEACACHE_DEGREE,
    target: str = "output",
) -> TeaCachePolynomial:
    """Least-squares polynomial from the input change to the output change.

    ``data``: a :class:`~.recording.Recording` (its ``pairs(target)``: ``target="output"`` fits the
    block stack's output change as TeaCache does; ``"residual"`` its residual change), or ``(x, y)``
    arrays. ``degree`` defaults to TeaCache's 4.
    """
    if not isinstance(degree, int) or isinstance(degree, bool) or degree < 1:
        raise ValueError(f"fit_teacache(degree={degree!r}): use a positive integer, e.g. 4 (TeaCache)")
    if isinstance(data, Recording):
        x, y = data.pairs(target)
    else:
        x, y = (np.asarray(v, dtype=np.float64).ravel() for v in data)
        if x.shape != y.shape:
            raise ValueError(f"fit_teacache: x has {x.size} points but y has {y.size}; pass one y per x")
    if x.size < degree + 1:
        raise ValueError(
            f"fit_teacache: {x.size} points cannot determine a degree-{degree} polynomial; record more "
            f"steps or generations, or lower degree (at most {max(x.size - 1, 0)})"
        )
    if np.ptp(x) <= 0:
        raise ValueError("fit_teacache: every input change is the same, so no polynomial can be fitted; "
                         "record a generation whose signal changes (a real schedule, not one timestep)")
    coefficients = np.polyfit(x, y, degree)
    rmse = float(np.sqrt(np.mean((np.polyval(coefficients, x) - y) ** 2)))
    return TeaCachePolynomial(tuple(float(c) for c in coefficients), degree, rmse,
                              (float(x.min()), float(x.max())), int(x.size))
