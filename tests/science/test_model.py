"""MoleculeEGNN: shapes, symmetric bonds, size budget, save/load, clear errors."""

import pytest
import torch
from forecache.science.model import EGNNConfig, MoleculeEGNN

from .tiny import TINY


def inputs(b=2, n=5):
    c = TINY
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[1, 3:] = False
    return {"coords": torch.randn(b, n, 3, generator=g), "atoms": torch.randn(b, n, c.num_atom_types, generator=g),
            "mask": mask, "t": torch.full((b,), 0.3), "charges": torch.randn(b, n, c.num_charges, generator=g),
            "bonds": torch.randn(b, n, n, c.num_bond_types, generator=g)}


def test_default_size_is_within_budget():
    n = sum(p.numel() for p in MoleculeEGNN().parameters())
    assert n <= 1_000_000 and n * 4 <= 10 * 2**20


def test_outputs_and_self_conditioning():
    model = MoleculeEGNN(TINY).eval()
    x = inputs()
    with torch.no_grad():
        out = model(**x)
        assert {k: tuple(v.shape) for k, v in out.items()} == {
            "coords": (2, 5, 3), "atom_logits": (2, 5, 10), "charge_logits": (2, 5, 3), "bond_logits": (2, 5, 5, 4)}
        assert torch.equal(out["bond_logits"], out["bond_logits"].transpose(1, 2))
        assert out["coords"][1, 3:].abs().max() == 0 and out["bond_logits"][1, 3:].abs().max() == 0
        cond = {"coords": out["coords"], "atoms": out["atom_logits"].softmax(-1),
                "charges": out["charge_logits"].softmax(-1), "bonds": out["bond_logits"].softmax(-1)}
        again = model(**x, cond=cond)
    assert not torch.equal(again["atom_logits"], out["atom_logits"])


def test_split_bond_head_equals_the_head_on_concatenated_pair_features():
    # forward splits the bond head's first linear map by input to save O(N^2) work; same function
    model = MoleculeEGNN(TINY).eval()
    g = torch.Generator().manual_seed(1)
    e = torch.randn(2, 5, 5, TINY.edge_hidden, generator=g)
    h = torch.randn(2, 5, TINY.hidden, generator=g)
    with torch.no_grad():
        whole = model.bond_head(torch.cat([e, h.unsqueeze(2) + h.unsqueeze(1)], -1))
        torch.testing.assert_close(model._bond_logits(e, h), whole)


def test_heads_can_be_disabled():
    c = EGNNConfig(hidden=16, layers=1, message=8, edge_hidden=4, rbf=4, time_features=4, num_charges=0, num_bond_types=0)
    x = inputs()
    out = MoleculeEGNN(c)(x["coords"], x["atoms"], x["mask"], 0.5)
    assert set(out) == {"coords", "atom_logits"}


def test_save_and_load_roundtrip(tmp_path):
    model = MoleculeEGNN(TINY).eval()
    model.save(tmp_path / "m")
    back = MoleculeEGNN.load(tmp_path / "m")
    assert back.config == TINY
    with torch.no_grad():
        a, b = model(**inputs()), back(**inputs())
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(FileNotFoundError, match="MoleculeEGNN.save"):
        MoleculeEGNN.load(tmp_path / "nothing")


def test_errors_name_the_problem():
    model = MoleculeEGNN(TINY)
    x = inputs()
    with pytest.raises(ValueError, match="bonds is missing"):
        model(**{**x, "bonds": None})
    with pytest.raises(ValueError, match=r"atoms has shape \(2, 5, 4\); expected \(2, 5, 10\)"):
        model(**{**x, "atoms": x["atoms"][..., :4]})
    with pytest.raises(ValueError, match="max_atoms=8"):
        model(**inputs(n=9))
    with pytest.raises(ValueError, match="bool mask"):
        model(**{**x, "mask": x["mask"].long()})
    with pytest.raises(ValueError, match="EGNNConfig.layers"):
        EGNNConfig(layers=0)
