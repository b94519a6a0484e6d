"""The valence table behind atom and molecule stability.

Stability is the graph-level check of Hoogeboom et al. 2022 (EDM, arXiv 2203.17003, ``bond_analyze.py``):
an atom is *stable* when the sum of the orders of its bonds equals one of the valences its element allows;
a molecule is stable when every one of its atoms is. EDM's table is neutral-only (``H 1, C 4, N 3, O 2, F 1,
P 3|5, S 4, Cl 1, Br 1, I 1``). Vignac et al. 2023 (MiDi, arXiv 2302.09048), followed by FlowMol (Dunn & Koes
2024, arXiv 2404.19739), key the table by formal charge as well; so does this one, since our molecules carry
formal charges (nitro groups, N-oxides, carboxylates, ...).

Our table (valence = sum of Kekulé bond orders, hydrogens counted as atoms):

======  =========  ======  ======
atom    charge 0   +1      -1
======  =========  ======  ======
H       1          0       0
C       4          3       3
N       3          4       2
O       2          3       1
F       1          --      0
P       3, 5       4       --
S       2, 4, 6    3       1
Cl      1          --      0
Br      1          2       0
I       1          --      0
======  =========  ======  ======

It differs from MiDi's on purpose, because every hydrogen here is an explicit atom: MiDi also accepts neutral
C with 3 and neutral N with 2 (and S+ with 2), which with explicit hydrogens are radicals; and it lacks neutral
S with 4 (sulfoxides, present in the NCI data) which EDM's ``S: 4`` alone would get wrong the other way
(thioethers, sulfones). Every (element, charge, valence) in the NCI training set built by
:mod:`forecache.science.dataset` is in this table, so its molecules are 100% stable. A "--" entry means the
combination is never stable.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .molecule import ATOM_TYPES, CHARGES, Molecule

ALLOWED_VALENCES: dict[str, dict[int, tuple[int, ...]]] = {
    "H": {0: (1,), 1: (0,), -1: (0,)},
    "C": {0: (4,), 1: (3,), -1: (3,)},
    "N": {0: (3,), 1: (4,), -1: (2,)},
    "O": {0: (2,), 1: (3,), -1: (1,)},
    "F": {0: (1,), -1: (0,)},
    "P": {0: (3, 5), 1: (4,)},
    "S": {0: (2, 4, 6), 1: (3,), -1: (1,)},
    "Cl": {0: (1,), -1: (0,)},
    "Br": {0: (1,), 1: (2,), -1: (0,)},
    "I": {0: (1,), -1: (0,)},
}

MAX_VALENCE = 24  # table width; any larger bond-order sum is unstable


def _allowed_table() -> Tensor:
    """Bool ``(len(ATOM_TYPES), len(CHARGES), MAX_VALENCE + 1)``: ``[t, c, v]`` True when allowed."""
    table = torch.zeros(len(ATOM_TYPES), len(CHARGES), MAX_VALENCE + 1, dtype=torch.bool)
    for t, symbol in enumerate(ATOM_TYPES):
        for c, charge in enumerate(CHARGES):
            for v in ALLOWED_VALENCES[symbol].get(charge, ()):
                table[t, c, v] = True
    return table


ALLOWED_TABLE: Tensor = _allowed_table()


def atom_valences(bonds: Tensor) -> Tensor:
    """Sum of bond orders per atom: ``(..., N)`` from ``bonds`` ``(..., N, N)`` (indices into BOND_TYPES, which
    are the bond orders)."""
    return bonds.long().sum(-1)


def stable_atoms(atom_types: Tensor, charges: Tensor, bonds: Tensor) -> Tensor:
    """Bool ``(..., N)``: whether each atom's valence is allowed for its element and formal charge.

    ``atom_types`` and ``charges`` are indices into ATOM_TYPES and CHARGES; works batched (padding atoms are
    whatever their indices say: mask them yourself).
    """
    valence = atom_valences(bonds)
    in_range = valence <= MAX_VALENCE
    lookup = ALLOWED_TABLE.to(atom_types.device)[atom_types.long(), charges.long(), valence.clamp(0, MAX_VALENCE)]
    return lookup & in_range


def molecule_stability(molecule: Molecule) -> tuple[int, int, bool]:
    """``(stable_atom_count, atom_count, molecule_stable)`` for one molecule.

    Atoms with non-finite coordinates count as unstable (a diverged sample is not a molecule, whatever its
    graph says); an empty molecule is not stable.
    """
    n = molecule.num_atoms
    if n == 0:
        return 0, 0, False
    stable = stable_atoms(molecule.atom_types, molecule.charges, molecule.bonds)
    stable &= torch.isfinite(molecule.coords).all(-1)
    count = int(stable.sum())
    return count, n, count == n
