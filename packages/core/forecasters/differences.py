"""Divided differences on real time coordinates: the machinery every polynomial forecaster shares.

Everything here works on scalar weights first (float64 Python numbers) and touches tensors once,
in ``weighted_sum``. A forecast is then a single linear combination of the computed values, which
keeps the tensor work to one pass and the rounding error to that of the final sum.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def _check_distinct(times: Sequence[float]) -> None:
    if len(set(times)) != len(times):
        raise ValueError(
            f"times={list(times)} repeat a value; a forecaster needs distinct time coordinates "
            "(record one point per step)"
        )


def taylor_weights(times: Sequence[float]) -> list[list[float]]:
    """Weights of the Taylor coefficients, at the newest time, of the polynomial through all points.

    With ``n = len(times)`` and ``P`` the unique polynomial of degree ``< n`` through the points,
    returns ``W`` (``n`` rows, ``n`` columns, columns in the order of ``times``) such that
    ``P^(p)(times[-1]) / p! = sum_j W[p][j] * value_j``.
    """
    n = len(times)
    if n == 0:
        raise ValueError("taylor_weights needs at least one time coordinate")
    _check_distinct(times)
    # Newton form with the newest node first, so the expansion point is the first node and the
    # Newton basis expands in powers of u = t - newest without any shift of the coefficients.
    nodes = [float(x) for x in reversed(times)]
    anchor = nodes[0]
    offsets = [x - anchor for x in nodes]
    weights = [[0.0] * n for _ in range(n)]
    basis = [1.0]  # coefficients in u of prod_{l<j} (u - offsets[l]), lowest power first
    for j in range(n):
        # f[x_0..x_j] = sum_i f(x_i) / prod_{l<=j, l!=i} (x_i - x_l)
        for i in range(j + 1):
            denom = math.prod(nodes[i] - nodes[l] for l in range(j + 1) if l != i)
            for p, coef in enumerate(basis):
                weights[p][n - 1 - i] += coef / denom
        basis = [0.0] + basis  # multiply by u
        for p in range(len(basis) - 1):
            basis[p] -= offsets[j] * basis[p + 1]
    return weights


def lagrange_weights(times: Sequence[float], t: float) -> list[float]:
    """Weights ``w_j`` with ``P(t) = sum_j w_j * value_j`` for the polynomial ``P`` through the points.

    On a uniform grid one step past the newest point these are the binomial extrapolation weights
    (1), (2, -1), (3, -3, 1), ... (listed newest first).
    """
    _check_distinct(times)
    xs = [float(x) for x in times]
    return [
        math.prod((t - xs[m]) / (xs[j] - xs[m]) for m in range(len(xs)) if m != j) for j in range(len(xs))
    ]


def least_squares_weights(times: Sequence[float], t: float, degree: int) -> list[float]:
    """Weights ``w_j`` with ``P(t) = sum_j w_j * value_j`` for the least-squares polynomial ``P`` of
    degree ``degree`` through the points (``len(times) > degree``).

    With ``degree == len(times) - 1`` the fit interpolates and these are :func:`lagrange_weights`.
    With more points than coefficients the fit averages them, so a component the polynomial cannot
    follow (noise, an oscillation between steps) is damped instead of extrapolated.
    """
    if not 0 <= degree < len(times):
        raise ValueError(f"degree={degree} needs 0 <= degree < {len(times)} (the number of points)")
    if degree == len(times) - 1:
        return lagrange_weights(times, t)
    _check_distinct(times)
    xs = [float(x) for x in times]
    # powers of (x - newest) / span: a Vandermonde matrix that stays well conditioned on any time scale.
    # Plain Python, like the other weights: torch ops here would also count as the model's FLOPs.
    anchor, span = xs[-1], max(xs) - min(xs)
    basis = [[((x - anchor) / span) ** p for p in range(degree + 1)] for x in xs]
    at = [((float(t) - anchor) / span) ** p for p in range(degree + 1)]
    # P(t) = at . c with the normal equations (B^T B) c = B^T y, so w = B (B^T B)^-1 at
    gram = [[sum(row[p] * row[q] for row in basis) for q in range(degree + 1)] for p in range(degree + 1)]
    c = _solve(gram, at)
    return [sum(b * x for b, x in zip(row, c)) for row in basis]


def _solve(matrix: list[list[float]], rhs: list[float]) -> list[float]:
    """``x`` with ``matrix @ x = rhs``: Gaussian elimination with partial pivoting (small systems)."""
    n = len(rhs)
    a = [list(row) + [r] for row, r in zip(matrix, rhs)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda i: abs(a[i][col]))
        a[col], a[pivot] = a[pivot], a[col]
        for i in range(col + 1, n):
            f = a[i][col] / a[col][col]
            for j in range(col, n + 1):
                a[i][j] -= f * a[col][j]
    x = [0.0] * n
    for i in reversed(range(n)):
        x[i] = (a[i][n] - sum(a[i][j] * x[j] for j in range(i + 1, n))) / a[i][i]
    return x


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float32 for half types (whose rounding would swamp the differences), else the dtype itself."""
    if not x.is_floating_point():
        raise ValueError(f"forecasters need floating-point features, got dtype {x.dtype}")
    return torch.promote_types(x.dtype, torch.float32)


def weighted_sum(values: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """``sum_j weights[j] * values[j]`` in at least float32, inputs left untouched."""
    if len(values) != len(weights) or not values:
        raise ValueError(f"weighted_sum got {len(values)} values and {len(weights)} weights")
    last = values[-1]
    if not last.is_floating_point():
        raise ValueError(f"forecasters need floating-point features, got dtype {last.dtype}")
    out = values[0].to(torch.promote_types(last.dtype, torch.float32)) * weights[0]
    for v, w in zip(values[1:], weights[1:]):
        out.add_(v, alpha=w)  # promotes in place: no temporary copy of v
    return out


def derivatives(times: Sequence[float], values: Sequence[torch.Tensor], order: int) -> list[torch.Tensor]:
    """Plain derivative estimates ``[F, F', ..., F^(m)]`` at the newest computed point.

    They are the derivatives of the polynomial through the last ``m + 1`` points, found with
    divided differences on the real time coordinates, with ``m = min(order, len(times) - 1)``:
    exact for polynomials of degree ``<= m`` on any grid. Units are per unit of the time
    coordinate. Tensors come back in at least float32.
    """
    if order < 0:
        raise ValueError(f"order={order} must be >= 0")
    m = min(order, len(times) - 1)
    pts_t, pts_v = list(times[len(times) - m - 1 :]), list(values[len(values) - m - 1 :])
    w = taylor_weights(pts_t)
    return [weighted_sum(pts_v, [math.factorial(p) * x for x in w[p]]) for p in range(m + 1)]
