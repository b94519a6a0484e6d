"""Chemistry evaluation of generated 3D molecules with RDKit: validity, stability, uniqueness, novelty, MMFF94
energy, strain, relaxation RMSD, and PoseBusters when it is installed.

Definitions (per molecule, :func:`molecule_records`; aggregated by :func:`summarize`):

- **validity** (EDM, Hoogeboom et al. 2022, arXiv 2203.17003; with the single-fragment requirement of MiDi,
  Vignac et al. 2023, arXiv 2302.09048): the molecule can be built, ``Chem.SanitizeMol`` accepts it, and it is
  one connected fragment. An invalid molecule gets the first failing reason of ``empty`` (no atoms),
  ``build_failed`` (:func:`~forecache.science.molecule.to_rdkit` returned None, e.g. NaN coordinates),
  ``sanitize_failed`` (impossible valence, ...; the RDKit message is kept in ``error``), ``fragmented``.
  As in the literature, sanitisation accepts *under*-valent atoms (it makes them radicals: with every hydrogen
  explicit, a missing hydrogen reads as a radical), so a valid molecule can still be unstable;
  ``n_valid_with_radicals`` counts those, and molecule stability is the stricter measure.
- **atom / molecule stability** (EDM): see :mod:`forecache.science.valence`; computed for every molecule,
  valid or not. Atom stability is over all atoms of all molecules, molecule stability over molecules.
- **uniqueness** (EDM): distinct canonical SMILES among valid molecules / valid molecules. **novelty**: distinct
  valid SMILES not in ``reference_smiles`` / distinct valid SMILES. SMILES are canonical, hydrogens removed,
  without stereo (constitution level, as EDM), so they compare with reference SMILES that lack stereo tags.
- **MMFF94 energy** (kcal/mol) of the generated conformer, **strain** = that energy minus the energy after
  MMFF94 relaxation from it, and **relaxation RMSD** (Å, heavy atoms, Kabsch-aligned) between the generated and
  the relaxed conformer, the physical-plausibility measures of e.g. Buttenschoen et al. 2024 (PoseBusters,
  arXiv 2308.05777) and FlowMol (Dunn & Koes 2024, arXiv 2404.19739). Computed for valid molecules that have
  MMFF94 parameters and finite energies (``mmff_no_parameters``, ``mmff_nonfinite`` count the others); mean and
  median reported (one exploded sample can dominate a mean: read the median).
- **PoseBusters** (``config="mol"``): pass rate per check and of all checks, on valid molecules; reported as
  ``{"status": "not installed"}`` when the package is absent.

Nothing raises on a bad molecule. Undefined aggregates (e.g. uniqueness with no valid molecule) are ``None``.
"""

from __future__ import annotations

import importlib.util
import math
import statistics

import torch
from tqdm.auto import tqdm

from .fidelity import aligned_rmsd, atom_type_agreement, fidelity, fidelity_records  # noqa: F401 - re-exported
from .molecule import Molecule, to_rdkit, uncollate
from .valence import molecule_stability

INVALID_REASONS = ("empty", "build_failed", "sanitize_failed", "fragmented")
MMFF_ITERS = 2000
MMFF_MAX_ROUNDS = 10


def _sanitized(molecule: Molecule):
    """``(reason, error, sanitized_mol, n_fragments)``; ``reason`` None for a valid molecule."""
    from rdkit import Chem

    if molecule.num_atoms == 0:
        return "empty", None, None, 0
    mol = to_rdkit(molecule)
    if mol is None:
        return "build_failed", None, None, 0
    try:
        mol = Chem.Mol(mol)
        Chem.SanitizeMol(mol)
    except Exception as error:  # noqa: BLE001 - RDKit raises several exception types; all mean invalid
        return "sanitize_failed", f"{type(error).__name__}: {error}", None, 0
    n_fragments = len(Chem.GetMolFrags(mol))
    return ("fragmented" if n_fragments > 1 else None), None, mol, n_fragments


def canonical_smiles(mol) -> str | None:
    """Canonical SMILES of a sanitised molecule, hydrogens removed, no stereo; None when RDKit cannot write it."""
    from rdkit import Chem

    try:
        return Chem.MolToSmiles(Chem.RemoveHs(mol), isomericSmiles=False)
    except Exception:  # noqa: BLE001
        return None


def mmff_relaxation(mol) -> dict:
    """MMFF94 energy of the conformer, energy after relaxation, strain and heavy-atom relaxation RMSD.

    ``mol``: sanitised, explicit hydrogens, one conformer. Returns ``{"mmff": "ok", "mmff_energy", "relaxed_energy",
    "strain", "relax_rmsd", "converged"}``, or ``{"mmff": "no_parameters" | "nonfinite" | "failed: ..."}``.
    """
    from rdkit import Chem
    from rdkit.Chem import AllChem

    try:
        props = AllChem.MMFFGetMoleculeProperties(mol, mmffVariant="MMFF94")
        if props is None:
            return {"mmff": "no_parameters"}
        energy = AllChem.MMFFGetMoleculeForceField(mol, props).CalcEnergy()
        relaxed = Chem.Mol(mol)
        ff = AllChem.MMFFGetMoleculeForceField(relaxed, props)
        converged = False
        for _ in range(MMFF_MAX_ROUNDS):
            if ff.Minimize(maxIts=MMFF_ITERS) == 0:
                converged = True
                break
        relaxed_energy = ff.CalcEnergy()
        heavy = [a.GetIdx() for a in mol.GetAtoms() if a.GetAtomicNum() > 1]
        before = torch.tensor(mol.GetConformer().GetPositions())[heavy]
        after = torch.tensor(relaxed.GetConformer().GetPositions())[heavy]
        rmsd = float(aligned_rmsd(before, after))
        if not all(math.isfinite(v) for v in (energy, relaxed_energy, rmsd)):
            return {"mmff": "nonfinite"}  # e.g. coincident atoms
        return {"mmff": "ok", "mmff_energy": energy, "relaxed_energy": relaxed_energy,
                "strain": energy - relaxed_energy, "relax_rmsd": rmsd, "converged": converged}
    except Exception as error:  # noqa: BLE001 - a bad geometry must not stop an evaluation
        return {"mmff": f"failed: {type(error).__name__}: {error}"}


def molecule_records(molecules, *, energies: bool = True, progress: bool = False) -> list[dict]:
    """One dict per molecule: ``index``, ``num_atoms``, ``valid``, ``reason`` (None or one of
    :data:`INVALID_REASONS`), ``error``, ``smiles``, ``num_fragments``, ``stable_atoms``, ``molecule_stable``,
    ``radical_electrons`` (assigned by sanitisation; None when it failed), and with ``energies`` for valid molecules the keys of :func:`mmff_relaxation`.

    ``molecules``: a list of :class:`~forecache.science.molecule.Molecule` or a collated batch (dict).
    """
    from rdkit import RDLogger

    molecules = uncollate(molecules) if isinstance(molecules, dict) else list(molecules)
    records = []
    RDLogger.DisableLog("rdApp.*")
    try:
        for index, molecule in enumerate(tqdm(molecules, desc="evaluate", disable=not progress)):
            stable_count, n_atoms, stable = molecule_stability(molecule)
            reason, error, mol, n_fragments = _sanitized(molecule)
            record = {"index": index, "num_atoms": n_atoms, "valid": reason is None, "reason": reason,
                      "error": error, "smiles": canonical_smiles(mol) if mol is not None else None,
                      "num_fragments": n_fragments, "stable_atoms": stable_count, "molecule_stable": stable,
                      "radical_electrons": (sum(a.GetNumRadicalElectrons() for a in mol.GetAtoms())
                                            if mol is not None else None)}
            if energies:
                record.update(mmff_relaxation(mol) if reason is None else {"mmff": "not_valid"})
            records.append(record)
    finally:
        RDLogger.EnableLog("rdApp.*")
    return records


def posebusters_checks(mols: list) -> dict:
    """PoseBusters ``config="mol"`` checks (Buttenschoen et al. 2024, arXiv 2308.05777) on RDKit molecules:
    ``{"status": "ok", "n", "pass_rates": {check: rate}, "all_pass"}``, ``{"status": "not installed"}`` when
    the package is absent (``pip install posebusters`` enables it), or ``{"status": "failed: ..."}``."""
    try:
        from posebusters import PoseBusters
    except ImportError:
        return {"status": "not installed"}
    if not mols:
        return {"status": "ok", "n": 0, "pass_rates": {}, "all_pass": None}
    try:
        frame = PoseBusters(config="mol").bust(mols, None, None)
        checks = frame.select_dtypes(include="bool")
        return {"status": "ok", "n": len(frame),
                "pass_rates": {str(c): float(checks[c].mean()) for c in checks.columns},
                "all_pass": float(checks.all(axis=1).mean()) if len(checks.columns) else None}
    except Exception as error:  # noqa: BLE001 - an optional extra must not break the evaluation
        return {"status": f"failed: {type(error).__name__}: {error}"}


def _stats(values: list[float]) -> tuple[float | None, float | None]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return (statistics.fmean(finite), statistics.median(finite)) if finite else (None, None)


def summarize(records: list[dict], reference_smiles=None) -> dict:
    """Aggregate :func:`molecule_records` (see the module docstring for the definitions)."""
    from rdkit import Chem, RDLogger

    n = len(records)
    valid = [r for r in records if r["valid"]]
    total_atoms = sum(r["num_atoms"] for r in records)
    unique = {r["smiles"] for r in valid if r["smiles"] is not None}
    out = {
        "n": n, "n_valid": len(valid), "validity": len(valid) / n if n else None, "n_invalid": n - len(valid),
        "invalid_reasons": {reason: sum(r["reason"] == reason for r in records) for reason in INVALID_REASONS},
        "atom_stability": sum(r["stable_atoms"] for r in records) / total_atoms if total_atoms else None,
        "molecule_stability": sum(r["molecule_stable"] for r in records) / n if n else None,
        "uniqueness": len(unique) / len(valid) if valid else None,
        "novelty": None,
        "n_valid_with_radicals": sum(bool(r["radical_electrons"]) for r in valid),
    }
    if reference_smiles is not None:
        RDLogger.DisableLog("rdApp.*")
        try:
            reference = set()
            for s in reference_smiles:
                mol = Chem.MolFromSmiles(s)
                if mol is not None:
                    reference.add(Chem.MolToSmiles(mol, isomericSmiles=False))
        finally:
            RDLogger.EnableLog("rdApp.*")
        out["novelty"] = len(unique - reference) / len(unique) if unique else None
    if any("mmff" in r for r in records):
        ok = [r for r in valid if r.get("mmff") == "ok"]
        out["n_mmff"] = len(ok)
        out["mmff_no_parameters"] = sum(r.get("mmff") == "no_parameters" for r in valid)
        out["mmff_nonfinite"] = sum(r.get("mmff") == "nonfinite" for r in valid)
        out["mmff_failed"] = sum(str(r.get("mmff", "")).startswith("failed") for r in valid)
        for key in ("mmff_energy", "strain", "relax_rmsd"):
            out[f"{key}_mean"], out[f"{key}_median"] = _stats([r[key] for r in ok])
    return out


def evaluate_molecules(molecules, *, reference_smiles=None, progress: bool = False, energies: bool = True,
                       posebusters: bool = True) -> dict:
    """Evaluate generated molecules (a list of :class:`~forecache.science.molecule.Molecule` or a collated
    batch): :func:`summarize` of :func:`molecule_records`, plus ``"posebusters"`` (:func:`posebusters_checks`
    on the valid molecules, or ``{"status": "skipped"}`` with ``posebusters=False``)."""
    molecules = uncollate(molecules) if isinstance(molecules, dict) else list(molecules)
    records = molecule_records(molecules, energies=energies, progress=progress)
    result = summarize(records, reference_smiles)
    if posebusters and importlib.util.find_spec("posebusters") is None:
        result["posebusters"] = {"status": "not installed"}
    elif posebusters:
        from rdkit import Chem

        mols = []
        for r in records:
            if r["valid"]:
                mol = Chem.Mol(to_rdkit(molecules[r["index"]]))
                Chem.SanitizeMol(mol)
                mols.append(mol)
        result["posebusters"] = posebusters_checks(mols)
    else:
        result["posebusters"] = {"status": "skipped"}
    return result
