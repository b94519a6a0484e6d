"""The flow-matching sampler: endpoints, grids, self-conditioning, errors (no cache involved)."""

import itertools
import math

import pytest
import torch
from forecache.science.sampler import sample, time_grid

B, N, A, C, E = 2, 5, 4, 3, 2


def mask():
    m = torch.ones(B, N, dtype=torch.bool)
    m[1, 3:] = False
    return m


class Constant(torch.nn.Module):
    """Predicts the same clean molecule whatever the input: the flow is the straight interpolant."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.target = torch.randn(B, N, 3, generator=g, dtype=torch.float64)
        self.atoms = torch.randn(B, N, A, generator=g, dtype=torch.float64)
        self.charges = torch.randn(B, N, C, generator=g, dtype=torch.float64)
        b = torch.randn(B, N, N, E, generator=g, dtype=torch.float64)
        self.bonds = b + b.transpose(1, 2)
        self.conds = []

    def forward(self, coords, atoms, mask, t, charges=None, bonds=None, cond=None):
        self.conds.append(cond)
        return {"coords": self.target.clone(), "atom_logits": self.atoms.clone(),
                "charge_logits": self.charges.clone(), "bond_logits": self.bonds.clone()}


def noise(m, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    return {"coords": torch.randn(B, N, 3, generator=g, dtype=dtype), "atoms": torch.randn(B, N, A, generator=g, dtype=dtype),
            "charges": torch.randn(B, N, C, generator=g, dtype=dtype), "bonds": torch.zeros(B, N, N, E, dtype=dtype)}


SIZES = {"atom_types": A, "charges": C, "bond_types": E}


@pytest.mark.parametrize("solver", ["euler", "heun"])
@pytest.mark.parametrize("grid", ["linear", "log"])
def test_constant_prediction_reaches_it_exactly(solver, grid):
    # x_t = (1 - t) x0 + t x1 solves the ODE exactly and both solvers follow it on any grid
    model, m = Constant(), mask()
    out = sample(model, m, steps=7, solver=solver, grid=grid, noise=noise(m), **SIZES)
    node, pair = m.unsqueeze(-1), (m.unsqueeze(1) & m.unsqueeze(2) & ~torch.eye(N, dtype=torch.bool)).unsqueeze(-1)
    torch.testing.assert_close(out.state["coords"], model.target * node, rtol=0, atol=1e-12)
    torch.testing.assert_close(out.state["atoms"], model.atoms.softmax(-1) * node, rtol=0, atol=1e-12)
    torch.testing.assert_close(out.state["bonds"], model.bonds.softmax(-1) * pair, rtol=0, atol=1e-12)
    assert torch.equal(out.batch["atom_types"], model.atoms.argmax(-1) * m)
    assert torch.equal(out.batch["bonds"], out.batch["bonds"].transpose(1, 2))
    assert out.calls == (7 if solver == "euler" else 2 * 7 - 1)  # Heun's last step is Euler (no call at t = 1)


class Drift(torch.nn.Module):
    """x1_hat = x + (1 - t) c(t), so the velocity is c(t) = 3 t^2 and x(1) = x(0) + 1."""

    def forward(self, coords, atoms, mask, t, cond=None):
        tt = t.view(-1, 1, 1)
        return {"coords": coords + (1 - tt) * 3 * tt**2, "atom_logits": atoms}


def test_heun_is_second_order_and_euler_first():
    m = torch.ones(1, 3, dtype=torch.bool)
    x0 = {"coords": torch.zeros(1, 3, 3, dtype=torch.float64), "atoms": torch.zeros(1, 3, 2, dtype=torch.float64)}
    err = {}
    for solver in ("euler", "heun"):
        for steps in (10, 20):
            out = sample(Drift(), m, steps=steps, solver=solver, noise=x0, atom_types=2, charges=0, bond_types=0)
            err[solver, steps] = float((out.state["coords"] - 1.0).abs().max())
    assert 1.8 < err["euler", 10] / err["euler", 20] < 2.2
    assert err["heun", 20] < err["euler", 20] / 5


def test_grids():
    assert time_grid(4, "linear") == [0.0, 0.25, 0.5, 0.75, 1.0]
    ts = time_grid(6, "log", log_eps=0.01)
    assert ts[0] == 0.0 and ts[-1] == 1.0 and len(ts) == 7
    assert math.isclose(1 - ts[-2], 0.01)
    gaps = [b - a for a, b in itertools.pairwise(ts[:-1])]
    assert all(g2 < g1 for g1, g2 in itertools.pairwise(gaps))  # denser towards t = 1
    ratios = [(1 - b) / (1 - a) for a, b in itertools.pairwise(ts[:-1])]
    assert all(math.isclose(r, ratios[0]) for r in ratios)  # 1 - t geometric
    assert time_grid(1, "log") == [0.0, 1.0]


def test_self_conditioning_gets_the_previous_prediction():
    model, m = Constant(), mask()
    out = sample(model, m, steps=4, noise=noise(m), keep_predictions=True, **SIZES)
    assert model.conds[0] is None
    for cond, pred in zip(model.conds[1:], out.predictions):
        assert set(cond) == {"coords", "atoms", "charges", "bonds"}
        for k in cond:
            assert torch.equal(cond[k], pred[k])
    model.conds.clear()
    sample(model, m, steps=3, noise=noise(m), self_condition=False, **SIZES)
    assert model.conds == [None, None, None]


def test_drawn_noise_is_centred_and_given_noise_is_kept():
    seen = []

    class Spy(Constant):
        def forward(self, coords, atoms, mask, t, charges=None, bonds=None, cond=None):
            seen.append((coords.clone(), bonds.clone()))
            return super().forward(coords, atoms, mask, t, charges, bonds, cond)

    m = mask()
    sample(Spy(), m, steps=2, generator=torch.Generator().manual_seed(0), **SIZES)
    coords, bonds = seen[0]
    centre = coords.sum(1) / m.sum(1, keepdim=True)
    assert centre.abs().max() < 1e-6
    assert torch.equal(bonds, bonds.transpose(1, 2)) and bonds[:, range(N), range(N)].abs().max() == 0
    assert coords[1, 3:].abs().max() == 0
    seen.clear()
    shifted = noise(m)
    shifted["coords"] = shifted["coords"] + 5.0
    sample(Spy(), m, steps=2, noise=shifted, **SIZES)
    assert torch.equal(seen[0][0], shifted["coords"] * m.unsqueeze(-1))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"steps": 0}, "steps=0 must be an int >= 1"),
        ({"steps": 2.5}, "steps=2.5"),
        ({"solver": "rk4"}, "solver='rk4' is unknown"),
        ({"grid": "cosine"}, "grid='cosine' is unknown"),
        ({"grid": "log", "log_eps": 1.5}, "log_eps"),
        ({"charges": -1}, "num_charges=-1"),
    ],
)
def test_bad_arguments_name_the_problem(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sample(Constant(), mask(), **{**SIZES, **kwargs})


def test_bad_inputs_name_the_problem():
    m = mask()
    with pytest.raises(ValueError, match="bool tensor"):
        sample(Constant(), m.long(), **SIZES)
    bad = noise(m)
    bad["atoms"] = bad["atoms"][..., :2]
    with pytest.raises(ValueError, match=r"noise\['atoms'\] has shape"):
        sample(Constant(), m, noise=bad, **SIZES)
    with pytest.raises(ValueError, match="missing"):
        sample(Constant(), m, noise={"coords": bad["coords"]}, **SIZES)
    with pytest.raises(ValueError, match="output 'atom_logits' has shape"):
        sample(Constant(), m, atom_types=A + 1, charges=C, bond_types=E)

    class NoBonds(Constant):
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            del out["bond_logits"]
            return out

    with pytest.raises(ValueError, match="no 'bond_logits'.*bond_types=0"):
        sample(NoBonds(), m, **SIZES)
