"""Fidelity of a cached sample to the uncached sample drawn from the same noise.

Both samples come from the same initial noise, so their atoms correspond one to one: no permutation search,
only the optimal rigid motion. The coordinate distance is the RMSD after Kabsch alignment (Kabsch 1976,
doi:10.1107/S0567739476001873): the rotation (proper, det = +1) and translation that minimise the RMSD,
found from the SVD of the covariance of the centred coordinates. Discrete channels are compared by
agreement: the share of atoms (or atom pairs, for bonds) whose argmax class is the same.

Nothing here raises on a bad sample: non-finite coordinates, an empty mask or mismatched atom counts give NaN
for that molecule and are counted by :func:`fidelity`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .molecule import Molecule, uncollate


def aligned_rmsd(coords_a: Tensor, coords_b: Tensor, mask: Tensor | None = None) -> Tensor:
    """RMSD in Å between ``coords_a`` and ``coords_b`` after the optimal rotation and translation of ``a`` onto
    ``b`` (Kabsch), atoms in the same order.

    Shapes ``(N, 3)`` (returns a 0-dim tensor) or ``(B, N, 3)`` (returns ``(B,)``); ``mask`` ``(N,)`` / ``(B, N)``
    selects the atoms (default all). Float64 inside. NaN for a molecule with no selected atoms or with a
    non-finite selected coordinate.
    """
    a, b = torch.as_tensor(coords_a).double(), torch.as_tensor(coords_b).double()
    if a.shape != b.shape or a.dim() not in (2, 3) or a.shape[-1] != 3:
        raise ValueError(f"aligned_rmsd needs two coordinate tensors of the same shape (N, 3) or (B, N, 3), got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}; compare molecules with the same atom count")
    single = a.dim() == 2
    if single:
        a, b = a[None], b[None]
    m = torch.ones(a.shape[:2], dtype=torch.bool) if mask is None else torch.as_tensor(mask).bool().reshape(a.shape[:2])
    finite = torch.isfinite(a).all(-1) & torch.isfinite(b).all(-1)
    undefined = (m & ~finite).any(-1) | ~m.any(-1)
    w = (m & finite).double().unsqueeze(-1)
    a = torch.where(finite.unsqueeze(-1), a, 0.0)
    b = torch.where(finite.unsqueeze(-1), b, 0.0)
    count = w.sum(1).clamp_min(1.0)
    a0 = (a - (a * w).sum(1, keepdim=True) / count.unsqueeze(1)) * w
    b0 = (b - (b * w).sum(1, keepdim=True) / count.unsqueeze(1)) * w
    u, _, vh = torch.linalg.svd(a0.transpose(1, 2) @ b0)
    v = vh.transpose(1, 2)
    d = torch.sign(torch.linalg.det(v @ u.transpose(1, 2)))
    d = torch.where(d == 0, torch.ones_like(d), d)
    flip = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], dim=-1))
    rotation = v @ flip @ u.transpose(1, 2)
    diff = (a0 @ rotation.transpose(1, 2) - b0) * w
    rmsd = (diff.pow(2).sum((1, 2)) / count.squeeze(-1)).sqrt()
    rmsd = rmsd.masked_fill(undefined, math.nan)
    return rmsd[0] if single else rmsd


def atom_type_agreement(types_a: Tensor, types_b: Tensor, mask: Tensor | None = None) -> Tensor:
    """Share of selected atoms whose class agrees: ``(N,)`` gives a 0-dim tensor, ``(B, N)`` gives ``(B,)``.

    Integer tensors are class indices; floating tensors (one-hot, probabilities, logits, one more dimension) are
    reduced by argmax. Works for any per-atom class (atom types, charges). NaN when no atom is selected.
    """
    a, b = torch.as_tensor(types_a), torch.as_tensor(types_b)
    a = a.argmax(-1) if a.is_floating_point() else a
    b = b.argmax(-1) if b.is_floating_point() else b
    if a.shape != b.shape or a.dim() not in (1, 2):
        raise ValueError(f"atom_type_agreement needs two (N,) or (B, N) index tensors of the same shape, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    m = torch.ones(a.shape, dtype=torch.bool) if mask is None else torch.as_tensor(mask).bool().reshape(a.shape)
    agree = ((a == b) & m).sum(-1).double()
    total = m.sum(-1).double()
    return torch.where(total > 0, agree / total.clamp_min(1), torch.full_like(agree, math.nan))


def _as_molecules(x) -> list[Molecule]:
    return uncollate(x) if isinstance(x, dict) else list(x)


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def fidelity_records(samples, references) -> list[dict]:
    """Per pair: ``coord_rmsd`` (aligned, Å), ``atom_type_agreement``, ``charge_agreement`` and
    ``bond_agreement`` (share of atom pairs i < j with the same bond class), or NaN with ``size_mismatch`` when
    the two have different atom counts. ``samples`` and ``references``: lists of molecules or collated batches.
    """
    samples, references = _as_molecules(samples), _as_molecules(references)
    if len(samples) != len(references):
        raise ValueError(f"fidelity: {len(samples)} samples against {len(references)} references; pass the "
                         "cached and uncached samples drawn from the same noise, one for one")
    records = []
    for s, r in zip(samples, references):
        if s.num_atoms != r.num_atoms:
            records.append({"size_mismatch": True, "coord_rmsd": math.nan, "atom_type_agreement": math.nan,
                            "charge_agreement": math.nan, "bond_agreement": math.nan})
            continue
        upper = torch.triu(torch.ones(s.num_atoms, s.num_atoms, dtype=torch.bool), diagonal=1)
        pairs = int(upper.sum())
        bond = float((s.bonds[upper] == r.bonds[upper]).double().mean()) if pairs else math.nan
        records.append({"size_mismatch": False,
                        "coord_rmsd": float(aligned_rmsd(s.coords, r.coords)),
                        "atom_type_agreement": float(atom_type_agreement(s.atom_types, r.atom_types)),
                        "charge_agreement": float(atom_type_agreement(s.charges, r.charges)),
                        "bond_agreement": bond})
    return records


def fidelity(samples, references) -> dict:
    """Means over the pairs of :func:`fidelity_records` (NaN entries left out; ``None`` when none is finite),
    the median and max coordinate RMSD, and the counts ``n``, ``n_size_mismatch``, ``n_nonfinite`` (pairs whose
    RMSD is undefined, e.g. NaN coordinates)."""
    records = fidelity_records(samples, references)
    rmsds = sorted(r["coord_rmsd"] for r in records if math.isfinite(r["coord_rmsd"]))
    return {
        "n": len(records),
        "coord_rmsd_mean": _mean(rmsds),
        "coord_rmsd_median": (rmsds[(len(rmsds) - 1) // 2] + rmsds[len(rmsds) // 2]) / 2 if rmsds else None,
        "coord_rmsd_max": rmsds[-1] if rmsds else None,
        "atom_type_agreement": _mean([r["atom_type_agreement"] for r in records]),
        "charge_agreement": _mean([r["charge_agreement"] for r in records]),
        "bond_agreement": _mean([r["bond_agreement"] for r in records]),
        "n_size_mismatch": sum(r["size_mismatch"] for r in records),
        "n_nonfinite": sum(not r["size_mismatch"] and not math.isfinite(r["coord_rmsd"]) for r in records),
    }
