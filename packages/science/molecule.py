"""The molecular representation shared by the science domain: a 3D molecular graph with explicit hydrogens.

A molecule is four tensors (Hoogeboom et al. 2022, EDM, arXiv 2203.17003, with the explicit bond and formal
charge channels of Vignac et al. 2023, MiDi, arXiv 2302.09048):

- ``coords`` float32 ``(N, 3)``: positions in Å;
- ``atom_types`` long ``(N,)``: index into :data:`ATOM_TYPES` (hydrogens are atoms, never implicit counts);
- ``charges`` long ``(N,)``: index into :data:`CHARGES` (formal charges -1, 0, +1);
- ``bonds`` long ``(N, N)``: symmetric, zero diagonal, index into :data:`BOND_TYPES`. Bonds are in Kekulé form:
  aromatic rings are written as alternating single and double bonds, so the index of a bond *is* its order and
  the valence of an atom is the row sum of ``bonds``.

Batches are dense and padded (:func:`collate`, :func:`uncollate`), the layout an EGNN consumes. The bridge to
RDKit (:func:`from_rdkit`, :func:`to_rdkit`) never sanitises on the way out: deciding whether a generated
molecule is chemically valid is the evaluation's job (:mod:`forecache.science.evaluate`), so :func:`to_rdkit`
builds whatever the tensors say and returns ``None`` only when even that is impossible.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

ATOM_TYPES: tuple[str, ...] = ("H", "C", "N", "O", "F", "P", "S", "Cl", "Br", "I")
CHARGES: tuple[int, ...] = (-1, 0, 1)
BOND_TYPES: tuple[str, ...] = ("none", "single", "double", "triple")

NEUTRAL = CHARGES.index(0)  # the index of formal charge 0 in CHARGES

_ATOM_INDEX = {symbol: i for i, symbol in enumerate(ATOM_TYPES)}
_CHARGE_INDEX = {charge: i for i, charge in enumerate(CHARGES)}


@dataclass(frozen=True)
class Molecule:
    """One molecule as tensors (see the module docstring for the layout).

    Inputs are converted on construction (``coords`` to float32, the rest to long, all on the CPU); shapes,
    index ranges and bond symmetry are checked, coordinate *values* are not (NaN coordinates are allowed so a
    diverged sample can still be represented and counted invalid by the evaluation). ``N = 0`` is allowed.
    """

    coords: Tensor
    atom_types: Tensor
    charges: Tensor
    bonds: Tensor

    def __post_init__(self) -> None:
        coords = torch.as_tensor(self.coords).detach().to("cpu", torch.float32)
        atom_types = torch.as_tensor(self.atom_types).detach().to("cpu", torch.long)
        charges = torch.as_tensor(self.charges).detach().to("cpu", torch.long)
        bonds = torch.as_tensor(self.bonds).detach().to("cpu", torch.long)
        n = atom_types.shape[0] if atom_types.dim() == 1 else -1
        if atom_types.dim() != 1:
            raise ValueError(f"Molecule.atom_types must have shape (N,), got {tuple(atom_types.shape)}; pass one "
                             "index into ATOM_TYPES per atom (take the argmax of one-hot or logit tensors first)")
        if coords.shape != (n, 3):
            raise ValueError(f"Molecule.coords must have shape (N, 3) = ({n}, 3), got {tuple(coords.shape)}; "
                             "pass one xyz row per atom, in Å")
        if charges.shape != (n,):
            raise ValueError(f"Molecule.charges must have shape (N,) = ({n},), got {tuple(charges.shape)}; pass one "
                             "index into CHARGES per atom")
        if bonds.shape != (n, n):
            raise ValueError(f"Molecule.bonds must have shape (N, N) = ({n}, {n}), got {tuple(bonds.shape)}; pass a "
                             "dense adjacency of indices into BOND_TYPES")
        for name, values, size, table in (("atom_types", atom_types, len(ATOM_TYPES), "ATOM_TYPES"),
                                          ("charges", charges, len(CHARGES), "CHARGES"),
                                          ("bonds", bonds, len(BOND_TYPES), "BOND_TYPES")):
            if values.numel() and (int(values.min()) < 0 or int(values.max()) >= size):
                raise ValueError(f"Molecule.{name} holds indices outside [0, {size}); they index into {table} "
                                 f"{globals()[table]}")
        if n and not torch.equal(bonds, bonds.T):
            raise ValueError("Molecule.bonds must be symmetric (bonds[i, j] == bonds[j, i]); symmetrise it, e.g. "
                             "keep the upper triangle and mirror it (uncollate does this)")
        if n and bool(bonds.diagonal().any()):
            raise ValueError("Molecule.bonds must have a zero diagonal (an atom is not bonded to itself); set "
                             "bonds.fill_diagonal_(0)")
        object.__setattr__(self, "coords", coords)
        object.__setattr__(self, "atom_types", atom_types)
        object.__setattr__(self, "charges", charges)
        object.__setattr__(self, "bonds", bonds)

    @property
    def num_atoms(self) -> int:
        return int(self.atom_types.shape[0])

    def symbols(self) -> list[str]:
        """Element symbols, in atom order."""
        return [ATOM_TYPES[i] for i in self.atom_types.tolist()]

    def formal_charges(self) -> list[int]:
        """Formal charges (not indices), in atom order."""
        return [CHARGES[i] for i in self.charges.tolist()]


def collate(molecules: list[Molecule], max_atoms: int | None = None) -> dict[str, Tensor]:
    """Dense padded batch: ``coords (B,N,3)``, ``atom_types (B,N)``, ``charges (B,N)``, ``bonds (B,N,N)``,
    ``mask (B,N)`` bool, with ``N`` the largest molecule (or ``max_atoms`` when given).

    Padded entries are 0 in every tensor and False in ``mask``; a model must read ``mask``.
    """
    n = max((m.num_atoms for m in molecules), default=0)
    if max_atoms is not None:
        if max_atoms < n:
            raise ValueError(f"collate(max_atoms={max_atoms}) is smaller than the largest molecule ({n} atoms); "
                             f"raise max_atoms to at least {n} or leave it None")
        n = max_atoms
    b = len(molecules)
    out = {"coords": torch.zeros(b, n, 3), "atom_types": torch.zeros(b, n, dtype=torch.long),
           "charges": torch.zeros(b, n, dtype=torch.long), "bonds": torch.zeros(b, n, n, dtype=torch.long),
           "mask": torch.zeros(b, n, dtype=torch.bool)}
    for i, m in enumerate(molecules):
        k = m.num_atoms
        out["coords"][i, :k] = m.coords
        out["atom_types"][i, :k] = m.atom_types
        out["charges"][i, :k] = m.charges
        out["bonds"][i, :k, :k] = m.bonds
        out["mask"][i, :k] = True
    return out


def _indices(x: Tensor, dims: int, name: str) -> Tensor:
    """Index tensor from indices (``dims`` dimensions) or from one-hot/probabilities/logits (one more, argmax)."""
    if x.dim() == dims + 1:
        return x.argmax(-1)
    if x.dim() == dims:
        return x.long()
    raise ValueError(f"uncollate: '{name}' must have {dims} dimensions (indices) or {dims + 1} (one-hot, "
                     f"probabilities or logits, argmax taken), got shape {tuple(x.shape)}")


def uncollate(batch: dict[str, Tensor]) -> list[Molecule]:
    """Split a dense batch back into molecules (the inverse of :func:`collate`).

    ``atom_types`` may be ``(B,N)`` indices or ``(B,N,T)`` scores, ``charges`` ``(B,N)`` or ``(B,N,C)``,
    ``bonds`` ``(B,N,N)`` or ``(B,N,N,K)``; scores (one-hot, probabilities or logits) are reduced by argmax.
    Bond scores are symmetrised first (``(s + s^T) / 2``); bond indices keep their upper triangle, mirrored.
    The diagonal is cleared. ``mask`` (optional, default all atoms) selects each molecule's atoms.
    """
    coords = batch["coords"].detach().cpu().float()
    if coords.dim() != 3 or coords.shape[-1] != 3:
        raise ValueError(f"uncollate: 'coords' must have shape (B, N, 3), got {tuple(coords.shape)}")
    b, n, _ = coords.shape
    atom_types = _indices(batch["atom_types"].detach().cpu(), 2, "atom_types")
    charges = _indices(batch["charges"].detach().cpu(), 2, "charges")
    raw_bonds = batch["bonds"].detach().cpu()
    if raw_bonds.dim() == 4:
        scores = raw_bonds.float()
        bonds = ((scores + scores.transpose(1, 2)) / 2).argmax(-1)
    else:
        upper = torch.triu(_indices(raw_bonds, 3, "bonds"), diagonal=1)
        bonds = upper + upper.transpose(1, 2)
    bonds = bonds * (1 - torch.eye(n, dtype=torch.long))
    mask = batch.get("mask")
    mask = torch.ones(b, n, dtype=torch.bool) if mask is None else mask.detach().cpu().bool()
    molecules = []
    for i in range(b):
        keep = mask[i].nonzero().squeeze(-1)
        molecules.append(Molecule(coords[i, keep], atom_types[i, keep], charges[i, keep],
                                  bonds[i][keep][:, keep]))
    return molecules


def from_rdkit(mol, conf_id: int = -1) -> Molecule:
    """A :class:`Molecule` from an RDKit molecule with a 3D conformer and explicit hydrogen atoms.

    Aromatic bonds are kekulized (on a copy). Raises ``ValueError`` naming the problem and the fix when the
    molecule has no conformer, implicit hydrogens, an element outside :data:`ATOM_TYPES`, a formal charge outside
    :data:`CHARGES`, radical electrons, or a bond that is not single/double/triple after kekulization.
    """
    from rdkit import Chem

    if mol.GetNumConformers() == 0:
        raise ValueError("from_rdkit needs a 3D conformer; embed one first (AllChem.EmbedMolecule(mol, "
                         "AllChem.ETKDGv3()))")
    mol = Chem.Mol(mol)
    n = mol.GetNumAtoms()
    types, charges = [], []
    for atom in mol.GetAtoms():
        symbol = atom.GetSymbol()
        if symbol not in _ATOM_INDEX:
            raise ValueError(f"from_rdkit: element {symbol} (atom {atom.GetIdx()}) is not in ATOM_TYPES {ATOM_TYPES}; "
                             "filter such molecules out before converting")
        if atom.GetFormalCharge() not in _CHARGE_INDEX:
            raise ValueError(f"from_rdkit: formal charge {atom.GetFormalCharge()} on atom {atom.GetIdx()} is not in "
                             f"CHARGES {CHARGES}; filter such molecules out before converting")
        if atom.GetNumRadicalElectrons():
            raise ValueError(f"from_rdkit: atom {atom.GetIdx()} has radical electrons, which the representation "
                             "cannot hold; filter radicals out before converting")
        atom.UpdatePropertyCache(strict=False)
        if atom.GetTotalNumHs(includeNeighbors=False):
            raise ValueError(f"from_rdkit: atom {atom.GetIdx()} ({symbol}) carries implicit hydrogens; add them as "
                             "atoms first with Chem.AddHs(mol, addCoords=True)")
        types.append(_ATOM_INDEX[symbol])
        charges.append(_CHARGE_INDEX[atom.GetFormalCharge()])
    if any(b.GetIsAromatic() for b in mol.GetBonds()):
        Chem.Kekulize(mol, clearAromaticFlags=True)
    order = {Chem.BondType.SINGLE: 1, Chem.BondType.DOUBLE: 2, Chem.BondType.TRIPLE: 3}
    bonds = torch.zeros(n, n, dtype=torch.long)
    for bond in mol.GetBonds():
        if bond.GetBondType() not in order:
            raise ValueError(f"from_rdkit: bond {bond.GetIdx()} is {bond.GetBondType()}, not single/double/triple; "
                             "only covalent Kekulé bonds are representable")
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        bonds[i, j] = bonds[j, i] = order[bond.GetBondType()]
    coords = torch.tensor(mol.GetConformer(conf_id).GetPositions(), dtype=torch.float32).reshape(n, 3)
    return Molecule(coords, torch.tensor(types, dtype=torch.long), torch.tensor(charges, dtype=torch.long), bonds)


def to_rdkit(molecule: Molecule):
    """An unsanitised RDKit molecule (``Chem.Mol``) with the atoms, formal charges, bonds and 3D conformer, or
    ``None`` when it cannot be built (non-finite coordinates, or anything RDKit refuses). Never raises.

    Every atom has ``NoImplicit`` set: hydrogens are atoms, so RDKit must not invent more. Sanitisation, and
    with it the decision whether the molecule is chemically valid, is left to the caller.
    """
    try:
        from rdkit import Chem
        from rdkit.Geometry import Point3D

        coords = molecule.coords.double()
        if not bool(torch.isfinite(coords).all()):
            return None
        rw = Chem.RWMol()
        for t, c in zip(molecule.atom_types.tolist(), molecule.charges.tolist()):
            atom = Chem.Atom(ATOM_TYPES[t])
            atom.SetFormalCharge(CHARGES[c])
            atom.SetNoImplicit(True)
            rw.AddAtom(atom)
        kinds = (None, Chem.BondType.SINGLE, Chem.BondType.DOUBLE, Chem.BondType.TRIPLE)
        i_idx, j_idx = torch.triu(molecule.bonds, diagonal=1).nonzero(as_tuple=True)
        for i, j in zip(i_idx.tolist(), j_idx.tolist()):
            rw.AddBond(i, j, kinds[int(molecule.bonds[i, j])])
        conformer = Chem.Conformer(molecule.num_atoms)
        conformer.Set3D(True)
        for i, (x, y, z) in enumerate(coords.tolist()):
            conformer.SetAtomPosition(i, Point3D(x, y, z))
        mol = rw.GetMol()
        mol.AddConformer(conformer, assignId=True)
        mol.UpdatePropertyCache(strict=False)
        return mol
    except Exception:  # noqa: BLE001 - never raises by contract; None counts as invalid
        return None
