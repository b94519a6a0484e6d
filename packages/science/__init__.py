"""forecache.science: molecular flow matching with Adams-Bashforth feature forecasting.

A flow-matching sampler for molecule generators whose network returns a dict of tensors
(coordinates; atom-type, charge and bond logits), with Euler and Heun on linear or log time grids
and self-conditioning; caching presets that forecast the network's whole output between full
evaluations (AB-Cache, arXiv 2504.10540, as Sommer et al. apply it to molecules, arXiv 2510.04646;
Taylor); a chemistry guard that replaces implausible forecasts by real evaluations; an offline
evaluation suite on rdkit; and a small E(3)-equivariant reference generator trained on rdkit's NCI
conformers. Builds on forecache.core.

    from forecache.science import MoleculeEGNN, ab_forecast, cache_model, sample
    handle = cache_model(model, ab_forecast(interval=3, order=2))
    out = sample(model, mask, steps=100, handle=handle)
"""

from .adapter import MoleculeAdapter, cache_model
from .evaluate import evaluate_molecules, molecule_records, summarize
from .fidelity import aligned_rmsd, atom_type_agreement, fidelity
from .guards import MoleculeGuard, forecast_problem
from .model import EGNNConfig, MoleculeEGNN
from .molecule import (
    ATOM_TYPES,
    BOND_TYPES,
    CHARGES,
    Molecule,
    collate,
    from_rdkit,
    to_rdkit,
    uncollate,
)
from .presets import ab_forecast, ab_forecast_timed, taylor_forecast
from .sampler import FlowSample, sample, time_grid

__all__ = [
    "ATOM_TYPES", "BOND_TYPES", "CHARGES", "EGNNConfig", "FlowSample", "Molecule", "MoleculeAdapter",
    "MoleculeEGNN", "MoleculeGuard", "ab_forecast", "ab_forecast_timed", "aligned_rmsd", "atom_type_agreement",
    "cache_model", "collate", "evaluate_molecules", "fidelity", "forecast_problem", "from_rdkit",
    "molecule_records", "sample", "summarize", "taylor_forecast", "time_grid", "to_rdkit", "uncollate",
]
