"""Chemistry guard: veto a forecast molecule that breaks physical sense, so it is computed instead.

A forecast is a polynomial extrapolation of past network outputs (AB-Cache, arXiv 2504.10540;
Sommer et al., "Predictive Feature Caching for Training-free Acceleration of Molecular Geometry
Generation", arXiv 2510.04646). Extrapolation can overshoot, and one bad prediction of the clean
molecule feeds the ODE (and self-conditioning) at the next step. The guard checks each forecast
row before it is used and names the first problem it finds:

- ``non-finite``: NaN or Inf in any output tensor;
- ``exploding``: an atom farther than ``max_radius`` Å from its molecule's centroid (a distance
  from the centroid, not from the origin, so the check is invariant to translating the molecule);
- ``collapse``: two atoms of one molecule closer than ``min_distance`` Å *and* closer than
  ``collapse_ratio`` times the closest pair of a reference geometry (when there is one).

The reference is what the molecule looked like just before: the previous prediction the model
is self-conditioned on (``arguments["cond"]["coords"]``), else the model's input coordinates.
Without it an absolute bound alone would veto the early predictions of an endpoint model, which
sit near the molecule's centroid (the mean of the data) in computed outputs too, and almost every
prediction of an untrained model: what the guard must catch is a forecast that *became* collapsed,
not a geometry that is still forming. Every check is E(3)-invariant, so guarding never breaks the
sampler's equivariance.

Defaults: ``max_radius = 100`` Å (drug-like molecules span a few tens of Å), ``min_distance =
0.4`` Å (well under the shortest real bond, H-H at 0.74 Å), ``collapse_ratio = 0.5``. All are
loose on purpose: the guard catches broken forecasts, it does not judge chemistry; a veto costs
one evaluation, never quality.

Use: ``MoleculeGuard()`` is the ``guard`` of ``forecache.core.ModelOutput`` (the presets of
``forecache.science.presets`` set it); :func:`forecast_problems` and :func:`forecast_problem` work
on any output dict and mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


def forecast_problems(
    output: dict[str, torch.Tensor],
    mask: torch.Tensor | None = None,
    max_radius: float = 100.0,
    min_distance: float = 0.4,
    coords_key: str = "coords",
    reference: torch.Tensor | None = None,
    collapse_ratio: float = 0.5,
) -> list[str | None]:
    """One reason (the first problem found) or ``None`` per molecule of ``output``.

    ``output``: a dict of tensors with the batch first, ``output[coords_key]`` (B, N, 3) Å;
    ``mask`` (B, N) bool, True for real atoms (all atoms when ``None``); ``reference`` (B, N, 3):
    the geometry a collapse is measured against (none: the absolute bound alone).
    """
    if not isinstance(output, dict) or coords_key not in output:
        raise ValueError(f"the guard needs a dict output with {coords_key!r} (B, N, 3); got {type(output).__name__}"
                         + (f" with keys {sorted(output)}" if isinstance(output, dict) else ""))
    coords = output[coords_key]
    if coords.dim() != 3 or coords.shape[-1] != 3:
        raise ValueError(f"output[{coords_key!r}] has shape {tuple(coords.shape)}; expected (batch, atoms, 3)")
    B, N, _ = coords.shape
    if mask is None:
        mask = torch.ones(B, N, dtype=torch.bool, device=coords.device)
    if tuple(mask.shape) != (B, N):
        raise ValueError(f"mask has shape {tuple(mask.shape)}; expected {(B, N)} like output[{coords_key!r}]")
    mask = mask.to(device=coords.device, dtype=torch.bool)
    x = coords.detach().to(torch.float32)

    finite = {}
    for key, value in output.items():
        if torch.is_tensor(value) and value.is_floating_point() and value.dim() > 0 and value.shape[0] == B:
            finite[key] = torch.isfinite(value.detach()).flatten(1).all(1)
    m = mask.to(x.dtype).unsqueeze(-1)
    count = m.sum(1).clamp_min(1.0)
    centroid = (torch.nan_to_num(x) * m).sum(1) / count
    radius = ((x - centroid.unsqueeze(1)).norm(dim=-1).masked_fill(~mask, 0.0)).amax(1)
    pair = mask.unsqueeze(1) & mask.unsqueeze(2) & ~torch.eye(N, dtype=torch.bool, device=x.device)
    closest = _closest(x, pair)
    bound = torch.full_like(closest, float(min_distance))
    if reference is not None:
        if tuple(reference.shape) != (B, N, 3):
            raise ValueError(f"reference has shape {tuple(reference.shape)}; expected {(B, N, 3)} like the output")
        ref = _closest(torch.nan_to_num(reference.detach().to(device=x.device, dtype=x.dtype)), pair)
        bound = torch.minimum(bound, collapse_ratio * ref)

    # one synchronisation for the whole batch
    flags = torch.stack([*finite.values(), radius, closest, bound], 1).cpu()
    keys = list(finite)
    reasons: list[str | None] = []
    for row in flags.tolist():
        bad = [k for k, ok in zip(keys, row[: len(keys)]) if not ok]
        r, d, limit = row[len(keys) :]
        if bad:
            reasons.append(f"non-finite values in {', '.join(repr(k) for k in bad)}")
        elif r > max_radius:
            reasons.append(f"exploding coordinates: an atom {r:.1f} Å from the centroid (bound {max_radius} Å)")
        elif d < limit:
            reasons.append(f"atoms collapsing: two atoms {d:.3f} Å apart (bound {limit:.3f} Å)")
        else:
            reasons.append(None)
    return reasons


def _closest(x: torch.Tensor, pair: torch.Tensor) -> torch.Tensor:
    """The closest pair distance of each molecule (inf with fewer than two atoms)."""
    if x.shape[1] < 2:
        return torch.full((x.shape[0],), float("inf"), device=x.device)
    return torch.cdist(x, x).masked_fill(~pair, float("inf")).flatten(1).amin(1)


def forecast_problem(output: dict[str, torch.Tensor], mask: torch.Tensor | None = None, **bounds) -> str | None:
    """The first problem of any molecule of ``output`` (prefixed by its row), or ``None``.
    ``bounds``: the keyword arguments of :func:`forecast_problems`."""
    for row, reason in enumerate(forecast_problems(output, mask, **bounds)):
        if reason is not None:
            return f"molecule {row}: {reason}"
    return None


@dataclass(frozen=True)
class MoleculeGuard:
    """The chemistry guard as a ``forecache.core.ModelOutput`` guard: called with a forecast output
    and the model call's arguments, it reads the padding mask from ``arguments[mask_arg]`` and the
    reference geometry from ``arguments[cond_arg][coords_key]`` (the self-conditioning input), else
    ``arguments[input_arg]``, and returns one reason or ``None`` per row. Defaults: see the module
    docstring."""

    max_radius: float = 100.0
    min_distance: float = 0.4
    collapse_ratio: float = 0.5
    coords_key: str = "coords"
    mask_arg: str = "mask"
    cond_arg: str = "cond"
    input_arg: str = "coords"

    def __post_init__(self) -> None:
        for name in ("max_radius", "min_distance", "collapse_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or value == float("inf"):
                raise ValueError(f"MoleculeGuard.{name}={value!r} must be a finite number >= 0 (Å)")

    def __call__(self, output: Any, arguments: dict[str, Any]) -> list[str | None]:
        mask = arguments.get(self.mask_arg)
        cond = arguments.get(self.cond_arg)
        reference = cond.get(self.coords_key) if isinstance(cond, dict) else None
        if not torch.is_tensor(reference):
            reference = arguments.get(self.input_arg)
        return forecast_problems(
            output, mask if torch.is_tensor(mask) else None, self.max_radius, self.min_distance, self.coords_key,
            reference if torch.is_tensor(reference) else None, self.collapse_ratio,
        )
