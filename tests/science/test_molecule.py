"""The molecular representation: RDKit round trip, batching, and to_rdkit never raising."""

import pytest
import torch
from forecache.science.dataset import process_smiles
from forecache.science.molecule import (
    ATOM_TYPES,
    BOND_TYPES,
    CHARGES,
    Molecule,
    collate,
    from_rdkit,
    to_rdkit,
    uncollate,
)
from forecache.science.valence import molecule_stability
from rdkit import Chem


def conformer(smiles):
    result = process_smiles(smiles, min_atoms=1, max_atoms=100, seed=0)
    assert result.reason is None, result.reason
    return result.mol


def canonical(mol):
    mol = Chem.Mol(mol)
    Chem.SanitizeMol(mol)
    Chem.AssignStereochemistryFrom3D(mol)
    return Chem.MolToSmiles(Chem.RemoveHs(mol))


# aromatic ring (kekulized on the way in), nitro group (N+ and O-), a stereocentre, a triple bond, halogens, S(VI)
SMILES = ["c1ccccc1O", "C[C@H](N)C(=O)O", "O=[N+]([O-])c1ccc(Cl)cc1", "CC#N", "CS(=O)(=O)NBr", "FC(F)(F)CI"]


@pytest.mark.parametrize("smiles", SMILES)
def test_rdkit_round_trip_keeps_smiles_and_coordinates(smiles):
    mol = conformer(smiles)
    molecule = from_rdkit(mol)
    assert molecule.num_atoms == mol.GetNumAtoms()
    assert molecule.coords.dtype == torch.float32 and molecule.bonds.dtype == torch.long
    assert torch.equal(molecule.bonds, molecule.bonds.T) and not molecule.bonds.diagonal().any()
    assert set(molecule.bonds.unique().tolist()) <= {0, 1, 2, 3}  # Kekulé: no aromatic class
    assert molecule_stability(molecule)[2]
    back = to_rdkit(molecule)
    assert back is not None
    assert canonical(back) == canonical(mol)
    assert torch.allclose(torch.tensor(back.GetConformer().GetPositions()),
                          torch.tensor(mol.GetConformer().GetPositions()), atol=1e-5)
    assert [a.GetFormalCharge() for a in back.GetAtoms()] == [a.GetFormalCharge() for a in mol.GetAtoms()]


def test_nitro_charges_are_indices_into_charges():
    molecule = from_rdkit(conformer("C[N+](=O)[O-]"))
    assert sorted(molecule.formal_charges()) == sorted([0] * 5 + [1, -1])
    assert CHARGES[int(molecule.charges[1])] == 1 and ATOM_TYPES[int(molecule.atom_types[1])] == "N"
    assert BOND_TYPES[int(molecule.bonds[1, 2])] == "double"


def test_from_rdkit_names_the_problem_and_the_fix():
    with pytest.raises(ValueError, match="conformer"):
        from_rdkit(Chem.MolFromSmiles("CCO"))
    no_h = Chem.RemoveHs(conformer("CCO"))
    with pytest.raises(ValueError, match="AddHs"):
        from_rdkit(no_h)
    silane = Chem.AddHs(Chem.MolFromSmiles("C[SiH3]"))
    from rdkit.Chem import AllChem
    AllChem.EmbedMolecule(silane, randomSeed=0)
    with pytest.raises(ValueError, match="Si.*ATOM_TYPES"):
        from_rdkit(silane)


def test_molecule_checks_shapes_and_symmetry():
    bonds = torch.tensor([[0, 1], [0, 0]])
    with pytest.raises(ValueError, match="symmetric"):
        Molecule(torch.zeros(2, 3), torch.tensor([1, 1]), torch.tensor([1, 1]), bonds)
    with pytest.raises(ValueError, match="ATOM_TYPES"):
        Molecule(torch.zeros(1, 3), torch.tensor([len(ATOM_TYPES)]), torch.tensor([1]), torch.zeros(1, 1))
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        Molecule(torch.zeros(2, 2), torch.tensor([1, 1]), torch.tensor([1, 1]), torch.zeros(2, 2))


def test_to_rdkit_never_raises():
    methane = from_rdkit(conformer("C"))
    broken = Molecule(methane.coords.clone().fill_(float("nan")), methane.atom_types, methane.charges, methane.bonds)
    assert to_rdkit(broken) is None
    empty = Molecule(torch.zeros(0, 3), torch.zeros(0), torch.zeros(0), torch.zeros(0, 0))
    assert to_rdkit(empty).GetNumAtoms() == 0
    # five bonds on a carbon is built (not sanitised): the evaluation decides it is invalid
    ch5 = Molecule(torch.randn(6, 3), torch.tensor([1, 0, 0, 0, 0, 0]), torch.ones(6, dtype=torch.long), _star(6))
    mol = to_rdkit(ch5)
    assert mol is not None and mol.GetNumAtoms() == 6 and mol.GetAtomWithIdx(0).GetDegree() == 5


def _star(n):
    bonds = torch.zeros(n, n, dtype=torch.long)
    bonds[0, 1:] = 1
    bonds[1:, 0] = 1
    return bonds


def test_collate_uncollate_round_trip_with_padding():
    molecules = [from_rdkit(conformer(s)) for s in ("CCO", "c1ccccc1", "C")]
    batch = collate(molecules)
    n = max(m.num_atoms for m in molecules)
    assert batch["coords"].shape == (3, n, 3) and batch["bonds"].shape == (3, n, n)
    assert batch["mask"].sum(1).tolist() == [m.num_atoms for m in molecules]
    assert not batch["coords"][2, molecules[2].num_atoms:].any()
    assert not batch["bonds"][2, molecules[2].num_atoms:].any()
    for m, back in zip(molecules, uncollate(batch)):
        for name in ("coords", "atom_types", "charges", "bonds"):
            assert torch.equal(getattr(m, name), getattr(back, name)), name
    assert collate(molecules, max_atoms=n + 4)["mask"].shape == (3, n + 4)
    with pytest.raises(ValueError, match="max_atoms"):
        collate(molecules, max_atoms=2)


def test_uncollate_takes_the_argmax_of_scores_and_symmetrises_bonds():
    molecules = [from_rdkit(conformer(s)) for s in ("CC=O", "N#N")]
    batch = collate(molecules)
    noise = lambda shape: 0.3 * torch.rand(shape)
    scored = {
        "coords": batch["coords"], "mask": batch["mask"],
        "atom_types": torch.nn.functional.one_hot(batch["atom_types"], len(ATOM_TYPES)).float() + noise(
            (*batch["atom_types"].shape, len(ATOM_TYPES))),
        "charges": torch.nn.functional.one_hot(batch["charges"], len(CHARGES)).float().log_softmax(-1),
        "bonds": torch.nn.functional.one_hot(batch["bonds"], len(BOND_TYPES)).float(),
    }
    # an asymmetric score: the upper triangle says "triple", the lower "none"; the average picks one consistently
    scored["bonds"][0, 0, 1] = torch.tensor([0.0, 0.0, 0.0, 1.0])
    back = uncollate(scored)
    assert torch.equal(back[1].atom_types, molecules[1].atom_types)
    assert torch.equal(back[0].charges, molecules[0].charges)
    assert torch.equal(back[0].bonds, back[0].bonds.T)
    assert torch.equal(back[1].bonds, molecules[1].bonds)
