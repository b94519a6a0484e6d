"""Small 3D conformer dataset from the NCI list that ships with RDKit, cached on disk.

Source: ``RDConfig.RDDataDir/NCI/first_5K.smi`` (the first 5,000 entries of the NCI open database, 4,999
lines). Each line goes through these steps, in order; the first one that fails is the line's skip reason
and is counted in the summary:

1. parse the SMILES (``parse_failed``);
2. fragments: with ``fragments="largest"`` (default) a multi-fragment SMILES (salt, solvate) is reduced to its
   largest fragment (most heavy atoms, then most atoms, then first) and counted in ``reduced_to_largest_fragment``
   (informational, not a skip), as salt strippers do: the counter-ion is not part of the molecule. With
   ``fragments="drop"`` it is skipped (``multiple_fragments``);
3. every element in :data:`~forecache.science.molecule.ATOM_TYPES` (``unsupported_element``), every formal
   charge in :data:`~forecache.science.molecule.CHARGES` (``unsupported_charge``), no radical electrons
   (``radical``: the representation has no channel for them);
4. add explicit hydrogens and filter on the atom count *with hydrogens* (``too_small``, ``too_large``), before
   the expensive steps;
5. embed one conformer with ETKDGv3 (Wang et al. 2020, doi:10.1021/acs.jcim.0c00025) and ``randomSeed=seed``;
   when that fails, once more from random coordinates (``embed_failed``);
6. optimise with MMFF94 (Halgren 1996, doi:10.1002/(SICI)1096-987X(199604)17:5/6<490::AID-JCC1>3.0.CO;2-P) to
   convergence (``mmff_failed``: no MMFF94 parameters; ``mmff_not_converged``: still moving after
   ``MMFF_MAX_ROUNDS`` x ``MMFF_ITERS`` iterations);
7. convert to a :class:`~forecache.science.molecule.Molecule` (``conversion_failed``; not expected).

``kept + sum(skipped.values()) == lines_read`` always holds.

Default size range: 8 to 25 atoms with hydrogens. The NCI list (largest fragment, supported elements) has a
median of 27 atoms with hydrogens (quartiles 20 and 36); the model that trains on this data is a small EGNN on
2 CPU cores whose cost grows with N^2, so the range stops at 25 (a QM9-like size: QM9 tops out at 29), which
still leaves about 2,000 molecules. Below 8 atoms are only a handful of two-heavy-atom species.

The result is cached under ``cache_dir`` as ``<name>.pt`` (tensors, ``torch.load(weights_only=True)``) and
``<name>.json`` (the summary: counts, size histogram, settings, time taken); the name encodes every setting,
so a second call with the same settings loads the file instead of rebuilding.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from .molecule import ATOM_TYPES, CHARGES, Molecule, from_rdkit

log = logging.getLogger(__name__)

DEFAULT_MIN_ATOMS = 8
DEFAULT_MAX_ATOMS = 25
MMFF_ITERS = 2000
MMFF_MAX_ROUNDS = 10
FORMAT_VERSION = 1
SKIP_REASONS = ("parse_failed", "multiple_fragments", "unsupported_element", "unsupported_charge", "radical",
                "too_small", "too_large", "embed_failed", "mmff_failed", "mmff_not_converged", "conversion_failed")


def default_cache_dir() -> Path:
    """``$FORECACHE_DATA/science`` when set, else ``~/.cache/forecache/science``."""
    root = os.environ.get("FORECACHE_DATA")
    return Path(root) / "science" if root else Path.home() / ".cache" / "forecache" / "science"


def nci_path() -> Path:
    """The NCI SMILES list bundled with RDKit."""
    from rdkit import RDConfig

    path = Path(RDConfig.RDDataDir) / "NCI" / "first_5K.smi"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: this RDKit build ships without its Data/NCI folder; install "
                                "RDKit from PyPI or conda-forge (pip install rdkit), which bundles it")
    return path


@dataclass
class ConformerDataset:
    """Molecules with one MMFF94-optimised conformer each, their canonical SMILES and NCI ids, and the summary
    of how they were built. Indexing gives a :class:`~forecache.science.molecule.Molecule`."""

    molecules: list[Molecule]
    smiles: list[str]
    ids: list[str]
    summary: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.molecules)

    def __getitem__(self, index: int) -> Molecule:
        return self.molecules[index]


def _largest_fragment(mol):
    from rdkit import Chem

    frags = Chem.GetMolFrags(mol, asMols=True, sanitizeFrags=True)
    if len(frags) == 1:
        return mol, False
    best = max(range(len(frags)), key=lambda i: (frags[i].GetNumHeavyAtoms(), frags[i].GetNumAtoms(), -i))
    return frags[best], True


def _embed(mol, seed: int) -> bool:
    from rdkit.Chem import AllChem

    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    if AllChem.EmbedMolecule(mol, params) == 0:
        return True
    params.useRandomCoords = True
    return AllChem.EmbedMolecule(mol, params) == 0


def _mmff_optimise(mol) -> str | None:
    """Optimise in place with MMFF94 until converged; the skip reason on failure, None on success."""
    from rdkit.Chem import AllChem

    props = AllChem.MMFFGetMoleculeProperties(mol, mmffVariant="MMFF94")
    if props is None:
        return "mmff_failed"
    ff = AllChem.MMFFGetMoleculeForceField(mol, props)
    if ff is None:
        return "mmff_failed"
    for _ in range(MMFF_MAX_ROUNDS):
        if ff.Minimize(maxIts=MMFF_ITERS) == 0:
            break
    else:
        return "mmff_not_converged"
    # The conformer is stored in float32. A minimiser can stop on a flat saddle (a planar conjugated torsion);
    # the float32 rounding then lets the evaluation's relaxation slide off it and report strain. Minimise again
    # from the rounded coordinates until that no longer lowers the energy, so stored conformers are minima.
    for _ in range(MMFF_MAX_ROUNDS):
        energy = ff.CalcEnergy()
        conformer = mol.GetConformer()
        rounded = torch.tensor(conformer.GetPositions(), dtype=torch.float32).double().tolist()
        for i, xyz in enumerate(rounded):
            conformer.SetAtomPosition(i, xyz)
        ff = AllChem.MMFFGetMoleculeForceField(mol, props)
        converged = ff.Minimize(maxIts=MMFF_ITERS) == 0
        if converged and energy - ff.CalcEnergy() < 1e-4:
            return None
    return "mmff_not_converged"


class Processed(NamedTuple):
    """What :func:`process_smiles` made of one SMILES."""

    reason: str | None  # the skip reason, None when kept
    mol: object  # the MMFF94-optimised RDKit molecule with explicit hydrogens when kept, else None
    reduced: bool  # a multi-fragment SMILES was reduced to its largest fragment
    num_atoms: int | None  # atom count with hydrogens, once known (step 4), else None


def process_smiles(smiles: str, *, min_atoms: int, max_atoms: int, seed: int = 0,
                   fragments: str = "largest") -> Processed:
    """One SMILES through the pipeline of the module docstring."""
    from rdkit import Chem

    mol = Chem.MolFromSmiles(smiles) if smiles else None
    if mol is None:
        return Processed("parse_failed", None, False, None)
    reduced = False
    if len(Chem.GetMolFrags(mol)) > 1:
        if fragments == "drop":
            return Processed("multiple_fragments", None, False, None)
        mol, reduced = _largest_fragment(mol)
    atoms = list(mol.GetAtoms())
    if any(a.GetSymbol() not in ATOM_TYPES for a in atoms):
        return Processed("unsupported_element", None, reduced, None)
    if any(a.GetFormalCharge() not in CHARGES for a in atoms):
        return Processed("unsupported_charge", None, reduced, None)
    if any(a.GetNumRadicalElectrons() for a in atoms):
        return Processed("radical", None, reduced, None)
    mol = Chem.AddHs(mol)
    n = mol.GetNumAtoms()
    if n < min_atoms:
        return Processed("too_small", None, reduced, n)
    if n > max_atoms:
        return Processed("too_large", None, reduced, n)
    if not _embed(mol, seed):
        return Processed("embed_failed", None, reduced, n)
    reason = _mmff_optimise(mol)
    return Processed(reason, None if reason else mol, reduced, n)


def _cache_name(min_atoms: int, max_atoms: int, seed: int, fragments: str, limit: int | None) -> str:
    return (f"nci5k_v{FORMAT_VERSION}_atoms{min_atoms}-{max_atoms}_seed{seed}_frag-{fragments}"
            f"_limit-{'all' if limit is None else limit}")


def _pack(molecules: list[Molecule]) -> dict[str, torch.Tensor]:
    """Ragged storage: per-atom tensors concatenated, bonds as (i, j, type) with i < j in local indices."""
    edges = []
    for m in molecules:
        i, j = torch.triu(m.bonds, diagonal=1).nonzero(as_tuple=True)
        edges.append(torch.stack([i, j, m.bonds[i, j]], dim=1))
    cat = lambda xs, shape: torch.cat(xs) if xs else torch.zeros(shape)
    return {"num_atoms": torch.tensor([m.num_atoms for m in molecules], dtype=torch.long),
            "num_bonds": torch.tensor([len(e) for e in edges], dtype=torch.long),
            "coords": cat([m.coords for m in molecules], (0, 3)),
            "atom_types": cat([m.atom_types for m in molecules], (0,)).long(),
            "charges": cat([m.charges for m in molecules], (0,)).long(),
            "edges": cat(edges, (0, 3)).long()}


def _unpack(data: dict[str, torch.Tensor]) -> list[Molecule]:
    molecules = []
    atom_offsets = torch.cumsum(data["num_atoms"], 0) - data["num_atoms"]
    bond_offsets = torch.cumsum(data["num_bonds"], 0) - data["num_bonds"]
    for n, a0, nb, b0 in zip(data["num_atoms"].tolist(), atom_offsets.tolist(), data["num_bonds"].tolist(),
                             bond_offsets.tolist()):
        edges = data["edges"][b0:b0 + nb]
        bonds = torch.zeros(n, n, dtype=torch.long)
        bonds[edges[:, 0], edges[:, 1]] = edges[:, 2]
        bonds[edges[:, 1], edges[:, 0]] = edges[:, 2]
        molecules.append(Molecule(data["coords"][a0:a0 + n], data["atom_types"][a0:a0 + n],
                                  data["charges"][a0:a0 + n], bonds))
    return molecules


def _quantiles(sizes: Counter) -> dict[str, int]:
    """Lower quantiles (5, 25, 50, 75, 95 %) of a size histogram."""
    ordered = sorted(sizes.elements())
    if not ordered:
        return {}
    return {f"p{q}": ordered[min(len(ordered) - 1, q * len(ordered) // 100)] for q in (5, 25, 50, 75, 95)}


def build_dataset(cache_dir: str | os.PathLike | None = None, min_atoms: int = DEFAULT_MIN_ATOMS,
                  max_atoms: int = DEFAULT_MAX_ATOMS, seed: int = 0, limit: int | None = None,
                  progress: bool = True, fragments: str = "largest", rebuild: bool = False) -> ConformerDataset:
    """Build (or load from ``cache_dir``) the NCI conformer dataset described in the module docstring.

    ``cache_dir`` defaults to :func:`default_cache_dir`; ``limit`` reads only the first ``limit`` lines (for
    tests); ``fragments`` is ``"largest"`` (default) or ``"drop"``; ``rebuild`` ignores an existing cache.
    """
    if fragments not in ("largest", "drop"):
        raise ValueError(f"build_dataset(fragments={fragments!r}): use 'largest' (keep the largest fragment of a "
                         "salt) or 'drop' (skip multi-fragment SMILES)")
    if not 1 <= min_atoms <= max_atoms:
        raise ValueError(f"build_dataset(min_atoms={min_atoms}, max_atoms={max_atoms}): need "
                         "1 <= min_atoms <= max_atoms; the default range is "
                         f"{DEFAULT_MIN_ATOMS}..{DEFAULT_MAX_ATOMS} atoms with hydrogens")
    if limit is not None and limit < 0:
        raise ValueError(f"build_dataset(limit={limit}): use None for the whole list or a count >= 0")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    name = _cache_name(min_atoms, max_atoms, seed, fragments, limit)
    pt_path, json_path = cache / f"{name}.pt", cache / f"{name}.json"
    if pt_path.exists() and json_path.exists() and not rebuild:
        data = torch.load(pt_path, weights_only=True)
        summary = json.loads(json_path.read_text())
        log.info("loaded %d molecules from %s", len(data["smiles"]), pt_path)
        return ConformerDataset(_unpack(data["tensors"]), list(data["smiles"]), list(data["ids"]), summary)

    from rdkit import Chem, RDLogger, rdBase

    source = nci_path()
    lines = source.read_text().splitlines()
    if limit is not None:
        lines = lines[:limit]
    skipped = Counter({reason: 0 for reason in SKIP_REASONS})
    reduced_count = 0
    candidate_sizes: Counter = Counter()  # atoms with H of every supported molecule, before the size filter
    molecules, smiles_out, ids = [], [], []
    start = time.perf_counter()
    RDLogger.DisableLog("rdApp.*")
    try:
        for number, line in enumerate(tqdm(lines, desc="NCI conformers", disable=not progress), start=1):
            parts = line.split()
            smiles = parts[0] if parts else ""
            reason, mol, reduced, n_atoms = process_smiles(smiles, min_atoms=min_atoms, max_atoms=max_atoms,
                                                           seed=seed, fragments=fragments)
            reduced_count += reduced
            if n_atoms is not None:
                candidate_sizes[n_atoms] += 1
            if reason is None:
                try:
                    molecule = from_rdkit(mol)
                except ValueError:
                    reason = "conversion_failed"
            if reason is not None:
                skipped[reason] += 1
                continue
            molecules.append(molecule)
            smiles_out.append(Chem.MolToSmiles(Chem.RemoveHs(mol)))
            ids.append(parts[1] if len(parts) > 1 else str(number))
    finally:
        RDLogger.EnableLog("rdApp.*")
    elapsed = time.perf_counter() - start
    sizes = Counter(m.num_atoms for m in molecules)
    elements = Counter(s for m in molecules for s in m.symbols())
    summary = {
        "source": str(source), "lines_read": len(lines), "kept": len(molecules), "skipped": dict(skipped),
        "reduced_to_largest_fragment": reduced_count,
        "settings": {"min_atoms": min_atoms, "max_atoms": max_atoms, "seed": seed, "limit": limit,
                     "fragments": fragments, "embedding": "ETKDGv3", "force_field": "MMFF94",
                     "mmff_max_iters": MMFF_ITERS * MMFF_MAX_ROUNDS, "format_version": FORMAT_VERSION},
        "atoms_with_h": {"min": min(sizes, default=0), "max": max(sizes, default=0),
                         "mean": (sum(k * v for k, v in sizes.items()) / len(molecules)) if molecules else 0.0,
                         "histogram": {str(k): sizes[k] for k in sorted(sizes)}},
        "candidates_atoms_with_h": {"count": sum(candidate_sizes.values()),
                                    "quantiles": _quantiles(candidate_sizes),
                                    "histogram": {str(k): candidate_sizes[k] for k in sorted(candidate_sizes)}},
        "elements": dict(elements.most_common()),
        "unique_smiles": len(set(smiles_out)),
        "time_s": round(elapsed, 2), "rdkit": rdBase.rdkitVersion, "file": pt_path.name,
    }
    assert summary["kept"] + sum(skipped.values()) == summary["lines_read"]
    cache.mkdir(parents=True, exist_ok=True)
    tmp = pt_path.with_suffix(".pt.tmp")
    torch.save({"tensors": _pack(molecules), "smiles": smiles_out, "ids": ids}, tmp)
    os.replace(tmp, pt_path)
    json_path.write_text(json.dumps(summary, indent=2) + "\n")
    log.info("built %d molecules in %.1f s, cached at %s", len(molecules), elapsed, pt_path)
    return ConformerDataset(molecules, smiles_out, ids, summary)


def train_val_split(smiles: list[str], val_fraction: float = 0.1, seed: int = 0) -> tuple[list[int], list[int]]:
    """Deterministic split into ``(train_indices, val_indices)``, decided per molecule by a hash of its SMILES.

    A molecule goes to validation when ``sha256(f"{seed}:{smiles}")`` falls in the lowest ``val_fraction`` of
    the hash range: the split is stable across runs, machines and ``limit`` values, duplicates of one SMILES
    always land on the same side (no leakage), and the validation share is ``val_fraction`` up to sampling
    noise. Pass ``dataset.smiles``.
    """
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"train_val_split(val_fraction={val_fraction}): use a fraction in [0, 1], e.g. 0.1")
    train, val = [], []
    for index, s in enumerate(smiles):
        digest = hashlib.sha256(f"{seed}:{s}".encode()).digest()
        (val if int.from_bytes(digest[:8], "big") < val_fraction * 2**64 else train).append(index)
    return train, val


def main(argv: list[str] | None = None) -> None:
    """``python -m forecache.science.dataset [--min-atoms N] [--max-atoms N] [--limit N] [--cache-dir D]``."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--min-atoms", type=int, default=DEFAULT_MIN_ATOMS)
    parser.add_argument("--max-atoms", type=int, default=DEFAULT_MAX_ATOMS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--fragments", choices=("largest", "drop"), default="largest")
    parser.add_argument("--rebuild", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    dataset = build_dataset(args.cache_dir, args.min_atoms, args.max_atoms, args.seed, args.limit,
                            fragments=args.fragments, rebuild=args.rebuild)
    train, val = train_val_split(dataset.smiles)
    print(json.dumps({**dataset.summary, "split": {"train": len(train), "val": len(val)}}, indent=2))


if __name__ == "__main__":
    main()
