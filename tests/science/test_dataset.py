"""The NCI conformer dataset: counts add up, each skip reason is recognised, the cache is reused, the split is
deterministic. Tiny builds only (``limit=``) into a temporary folder."""

import json

import forecache.science.dataset as dataset_module
import pytest
import torch
from forecache.science.dataset import (
    SKIP_REASONS,
    build_dataset,
    process_smiles,
    train_val_split,
)
from forecache.science.evaluate import evaluate_molecules
from forecache.science.valence import molecule_stability


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("nci")
    return folder, build_dataset(folder, min_atoms=8, max_atoms=25, limit=60, progress=False)


def test_counts_add_up_and_molecules_fit_the_range(tiny):
    _, data = tiny
    summary = data.summary
    assert summary["lines_read"] == 60
    assert set(summary["skipped"]) == set(SKIP_REASONS)
    assert summary["kept"] + sum(summary["skipped"].values()) == summary["lines_read"]
    assert summary["kept"] == len(data) == len(data.smiles) == len(data.ids) > 10
    assert summary["skipped"]["too_large"] > 0  # the first 60 NCI lines hold bigger molecules too
    assert all(8 <= m.num_atoms <= 25 for m in data.molecules)
    assert sum(summary["atoms_with_h"]["histogram"].values()) == len(data)
    assert all(molecule_stability(m)[2] for m in data.molecules)


def test_cached_conformers_are_mmff_minima(tiny):
    _, data = tiny
    result = evaluate_molecules(data.molecules[:10], posebusters=False)
    assert result["validity"] == 1.0 and result["molecule_stability"] == 1.0
    assert result["strain_median"] < 1e-3 and result["relax_rmsd_median"] < 1e-3


def test_second_call_loads_the_cache(tiny, monkeypatch):
    folder, data = tiny
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["nci5k_v1_atoms8-25_seed0_frag-largest_limit-60.json",
                     "nci5k_v1_atoms8-25_seed0_frag-largest_limit-60.pt"]
    assert json.loads((folder / files[0]).read_text())["kept"] == len(data)

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the cached dataset should have been loaded, not rebuilt")

    monkeypatch.setattr(dataset_module, "process_smiles", no_rebuild)
    again = build_dataset(folder, min_atoms=8, max_atoms=25, limit=60, progress=False)
    assert again.smiles == data.smiles and again.ids == data.ids and again.summary == data.summary
    for a, b in zip(again.molecules, data.molecules):
        for name in ("coords", "atom_types", "charges", "bonds"):
            assert torch.equal(getattr(a, name), getattr(b, name))


@pytest.mark.parametrize("smiles, reason", [
    ("C1CC", "parse_failed"),
    ("", "parse_failed"),
    ("C[Si](C)(C)C", "unsupported_element"),
    ("CC[S-2]", "unsupported_charge"),
    ("C[CH2]", "radical"),
    ("CO", "too_small"),
    ("CCCCCCCCCC", "too_large"),
])
def test_each_skip_reason(smiles, reason):
    assert process_smiles(smiles, min_atoms=8, max_atoms=25).reason == reason


def test_fragments_largest_or_drop():
    kept = process_smiles("CCCCO.Cl", min_atoms=8, max_atoms=25)
    assert kept.reason is None and kept.reduced and kept.num_atoms == 15  # butanol, C4H10O
    assert process_smiles("CCCCO.Cl", min_atoms=8, max_atoms=25, fragments="drop").reason == "multiple_fragments"


def test_bad_arguments_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="largest"):
        build_dataset(tmp_path, fragments="keep")
    with pytest.raises(ValueError, match="min_atoms <= max_atoms"):
        build_dataset(tmp_path, min_atoms=30, max_atoms=10)


def test_split_is_deterministic_disjoint_and_keeps_duplicates_together():
    smiles = [f"C{'C' * i}O" for i in range(2000)] + ["CCO", "CCO"]
    train, val = train_val_split(smiles, val_fraction=0.1, seed=0)
    assert (train, val) == train_val_split(smiles, val_fraction=0.1, seed=0)
    assert sorted(train + val) == list(range(len(smiles)))
    assert 0.08 < len(val) / len(smiles) < 0.12
    side = {i: i in val for i in range(len(smiles))}
    assert side[2000] == side[2001] == side[smiles.index("CCO")]
    assert train_val_split(smiles, val_fraction=0.1, seed=1) != (train, val)
    assert train_val_split(smiles, val_fraction=0.0) == (list(range(len(smiles))), [])
