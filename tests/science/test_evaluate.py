"""Evaluation: real MMFF conformers score perfectly, broken molecules are counted with their reason, fidelity
metrics match hand-computed values."""

import importlib.util
import math

import pytest
import torch
from forecache.science.dataset import process_smiles
from forecache.science.evaluate import (
    INVALID_REASONS,
    evaluate_molecules,
    molecule_records,
)
from forecache.science.fidelity import aligned_rmsd, atom_type_agreement, fidelity
from forecache.science.molecule import Molecule, collate, from_rdkit


def real(smiles):
    result = process_smiles(smiles, min_atoms=1, max_atoms=100, seed=0)
    assert result.reason is None, result.reason
    return from_rdkit(result.mol)


def star(n):
    bonds = torch.zeros(n, n, dtype=torch.long)
    bonds[0, 1:] = 1
    bonds[1:, 0] = 1
    return bonds


def test_real_mmff_conformers_score_perfectly():
    smiles = ["CCO", "c1ccncc1", "CC(=O)Nc1ccc(O)cc1", "O=[N+]([O-])c1ccccc1", "CS(C)=O", "FC(F)(F)c1ccccc1Br"]
    result = evaluate_molecules([real(s) for s in smiles], reference_smiles=["OCC", "CCCC"])
    assert result["n"] == 6 and result["validity"] == 1.0 and result["n_invalid"] == 0
    assert result["atom_stability"] == 1.0 and result["molecule_stability"] == 1.0
    assert result["uniqueness"] == 1.0
    assert result["novelty"] == pytest.approx(5 / 6)  # ethanol is in the reference, written another way
    assert result["n_mmff"] == 6
    assert abs(result["strain_mean"]) < 1e-3 and abs(result["strain_median"]) < 1e-3  # kcal/mol
    assert result["relax_rmsd_mean"] < 1e-3  # Å
    assert math.isfinite(result["mmff_energy_mean"])
    expected = "not installed" if importlib.util.find_spec("posebusters") is None else "ok"
    assert result["posebusters"]["status"] == expected


def test_broken_molecules_are_counted_with_their_reason():
    methane = real("C")
    ch5 = Molecule(methane.coords.new_zeros(6, 3).uniform_(-1, 1), torch.tensor([1, 0, 0, 0, 0, 0]),
                   torch.ones(6, dtype=torch.long), star(6))
    two = Molecule(torch.cat([methane.coords, methane.coords + 5.0]), methane.atom_types.repeat(2),
                   methane.charges.repeat(2), torch.block_diag(methane.bonds, methane.bonds))
    nan = Molecule(torch.full((5, 3), float("nan")), methane.atom_types, methane.charges, methane.bonds)
    empty = Molecule(torch.zeros(0, 3), torch.zeros(0), torch.zeros(0), torch.zeros(0, 0))
    records = molecule_records([ch5, two, nan, empty, methane])
    assert [r["reason"] for r in records] == ["sanitize_failed", "fragmented", "build_failed", "empty", None]
    assert "valence" in records[0]["error"].lower()
    assert records[1]["num_fragments"] == 2
    result = evaluate_molecules([ch5, two, nan, empty, methane])
    assert result["n_invalid"] == 4 and result["validity"] == pytest.approx(1 / 5)
    assert result["invalid_reasons"] == {"empty": 1, "build_failed": 1, "sanitize_failed": 1, "fragmented": 1}
    assert set(result["invalid_reasons"]) == set(INVALID_REASONS)
    # stable atoms: CH5 5 of 6 (the carbon), two methanes 10 of 10, NaN methane 0 of 5, empty 0 of 0, methane 5
    assert result["atom_stability"] == pytest.approx(20 / 26)
    # molecules: the two-methane graph is stable (but not valid), and the real methane
    assert result["molecule_stability"] == pytest.approx(2 / 5)
    assert result["n_mmff"] == 1


def test_uniqueness_counts_distinct_valid_smiles():
    ethanol = real("CCO")
    result = evaluate_molecules([ethanol, ethanol, real("CC")], energies=False, posebusters=False)
    assert result["uniqueness"] == pytest.approx(2 / 3)
    assert "strain_mean" not in result and result["posebusters"] == {"status": "skipped"}


def test_evaluate_accepts_a_collated_batch():
    molecules = [real("CCO"), real("CC")]
    assert evaluate_molecules(collate(molecules), energies=False)["validity"] == 1.0


def random_rotation(generator):
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    return q if torch.linalg.det(q) > 0 else -q


def test_aligned_rmsd_of_a_moved_copy_is_zero():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(12, 3, generator=g, dtype=torch.float64)
    b = a @ random_rotation(g).T + torch.tensor([3.0, -1.0, 2.0], dtype=torch.float64)
    assert float(aligned_rmsd(a, b)) < 1e-9
    batch = aligned_rmsd(torch.stack([a, a]), torch.stack([b, a]))
    assert batch.shape == (2,) and float(batch.max()) < 1e-9


def test_aligned_rmsd_of_a_known_perturbation():
    square = torch.tensor([[1.0, 1, 0], [1, -1, 0], [-1, -1, 0], [-1, 1, 0]], dtype=torch.float64)
    # a 10 % breathing: the best motion is the identity (A^T B is symmetric positive), each atom is off by
    # 0.1 * |a| = 0.1 * sqrt(2)
    assert float(aligned_rmsd(square, 1.1 * square)) == pytest.approx(0.1 * math.sqrt(2), abs=1e-12)
    # a pucker, z += d * (1, -1, 1, -1): orthogonal to every translation and rotation of the square, so
    # nothing can be aligned away and every atom is off by d
    pucker = square.clone()
    pucker[:, 2] = 0.3 * torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64)
    assert float(aligned_rmsd(square, pucker)) == pytest.approx(0.3, abs=1e-12)
    # the same pucker seen from another frame
    g = torch.Generator().manual_seed(3)
    moved = pucker @ random_rotation(g).T - 7.0
    assert float(aligned_rmsd(square, moved)) == pytest.approx(0.3, abs=1e-9)


def test_aligned_rmsd_uses_proper_rotations_only():
    tetra = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 2, 0], [0, 0, 3]])
    mirror = tetra * torch.tensor([1.0, 1.0, -1.0])
    assert float(aligned_rmsd(tetra, mirror)) > 0.3


def test_aligned_rmsd_masks_padding_and_never_raises():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(2, 6, 3, generator=g)
    b = a.clone()
    b[0, 4:] = 100.0  # padding garbage
    b[1, 0] = float("nan")
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    out = aligned_rmsd(a, b, mask)
    assert float(out[0]) < 1e-5 and math.isnan(float(out[1]))
    assert math.isnan(float(aligned_rmsd(a[0], b[0], torch.zeros(6, dtype=torch.bool))))


def test_atom_type_agreement_hand_values():
    assert float(atom_type_agreement(torch.tensor([1, 1, 2, 3]), torch.tensor([1, 1, 2, 0]))) == 0.75
    mask = torch.tensor([True, True, True, False])
    assert float(atom_type_agreement(torch.tensor([1, 1, 2, 3]), torch.tensor([1, 1, 2, 0]), mask)) == 1.0
    logits = torch.nn.functional.one_hot(torch.tensor([[1, 2]]), 10).float()
    assert atom_type_agreement(logits, torch.tensor([[1, 3]])).tolist() == [0.5]


def test_fidelity_means_and_counts():
    molecules = [real("CCO"), real("CC")]
    g = torch.Generator().manual_seed(2)
    rotated = [Molecule(m.coords @ random_rotation(g).float().T + 1.0, m.atom_types, m.charges, m.bonds)
               for m in molecules]
    same = fidelity(rotated, molecules)
    assert same["n"] == 2 and same["coord_rmsd_mean"] < 1e-4
    assert same["atom_type_agreement"] == 1.0 and same["bond_agreement"] == 1.0
    nan = Molecule(molecules[0].coords * float("nan"), molecules[0].atom_types, molecules[0].charges,
                   molecules[0].bonds)
    mixed = fidelity([nan, molecules[0]], collate(molecules))
    assert mixed["n_nonfinite"] == 1 and mixed["n_size_mismatch"] == 1 and mixed["coord_rmsd_mean"] is None


def test_under_valent_atoms_are_valid_radicals_but_unstable():
    ethane = real("CC")
    keep = torch.tensor([i for i in range(ethane.num_atoms) if i != ethane.num_atoms - 1])  # drop one H
    ethyl = Molecule(ethane.coords[keep], ethane.atom_types[keep], ethane.charges[keep], ethane.bonds[keep][:, keep])
    (record,) = molecule_records([ethyl], energies=False)
    assert record["valid"] and record["radical_electrons"] == 1 and not record["molecule_stable"]
    result = evaluate_molecules([ethyl], energies=False)
    assert result["n_valid_with_radicals"] == 1 and result["molecule_stability"] == 0.0


def test_coincident_atoms_give_nonfinite_energy_not_an_error():
    ethanol = real("CCO")
    collapsed = Molecule(torch.zeros_like(ethanol.coords), ethanol.atom_types, ethanol.charges, ethanol.bonds)
    result = evaluate_molecules([collapsed, ethanol], posebusters=False)
    assert result["validity"] == 1.0 and result["n_mmff"] == 1 and result["mmff_nonfinite"] == 1
    assert abs(result["strain_mean"]) < 1e-3
