"""E(3) equivariance survives caching: a rotated, reflected and translated initial noise gives the
rotated, reflected and translated sample, with and without a forecasting cache."""

import pytest
import torch
from forecache.science.adapter import cache_model
from forecache.science.model import EGNNConfig, MoleculeEGNN
from forecache.science.presets import ab_forecast, ab_forecast_timed, taylor_forecast
from forecache.science.sampler import sample

B, N = 2, 6
CONFIG = EGNNConfig(hidden=16, layers=2, message=8, edge_hidden=4, rbf=4, time_features=4,
                    num_atom_types=4, num_charges=3, num_bond_types=3, max_atoms=8)


def setup():
    torch.manual_seed(0)
    model = MoleculeEGNN(CONFIG).double().eval()
    m = torch.ones(B, N, dtype=torch.bool)
    m[1, 4:] = False
    g = torch.Generator().manual_seed(1)
    b = torch.randn(B, N, N, 3, generator=g, dtype=torch.float64)
    noise = {"coords": 1.5 * torch.randn(B, N, 3, generator=g, dtype=torch.float64),
             "atoms": torch.randn(B, N, 4, generator=g, dtype=torch.float64),
             "charges": torch.randn(B, N, 3, generator=g, dtype=torch.float64), "bonds": b + b.transpose(1, 2)}
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    q[:, 0] = -q[:, 0] if torch.det(q) > 0 else q[:, 0]  # a reflection too: E(3), not only SE(3)
    shift = torch.tensor([3.0, -2.0, 7.5], dtype=torch.float64)
    return model, m, noise, q, shift


def moved(noise, m, q, shift):
    out = dict(noise)
    out["coords"] = (noise["coords"] @ q.T + shift) * m.unsqueeze(-1)
    return out


def assert_equivariant(a, b, m, q, shift):
    node = m.unsqueeze(-1)
    torch.testing.assert_close(b.state["coords"], (a.state["coords"] @ q.T + shift) * node, rtol=0, atol=1e-9)
    for k in ("atoms", "charges", "bonds"):
        torch.testing.assert_close(b.state[k], a.state[k], rtol=0, atol=1e-9)


def test_network_is_equivariant():
    model, m, noise, q, shift = setup()
    t = torch.full((B,), 0.4, dtype=torch.float64)
    with torch.no_grad():
        a = model(noise["coords"], noise["atoms"], m, t, noise["charges"], noise["bonds"])
        x = moved(noise, m, q, shift)
        b = model(x["coords"], x["atoms"], m, t, x["charges"], x["bonds"])
    torch.testing.assert_close(b["coords"], (a["coords"] @ q.T + shift) * m.unsqueeze(-1), rtol=0, atol=1e-10)
    for k in ("atom_logits", "charge_logits", "bond_logits"):
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-10)
    assert torch.equal(a["bond_logits"], a["bond_logits"].transpose(1, 2))


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_uncached_sample_is_equivariant(solver):
    model, m, noise, q, shift = setup()
    with torch.no_grad():
        a = sample(model, m, steps=8, solver=solver, noise=noise)
        b = sample(model, m, steps=8, solver=solver, noise=moved(noise, m, q, shift))
    assert_equivariant(a, b, m, q, shift)


@pytest.mark.parametrize("preset, solver, grid", [
    (ab_forecast, "euler", "linear"), (ab_forecast_timed, "heun", "log"), (taylor_forecast, "euler", "log"),
])
def test_cached_sample_is_equivariant(preset, solver, grid):
    model, m, noise, q, shift = setup()
    with torch.no_grad():
        handle = cache_model(model, preset(interval=3))
        a = sample(model, m, steps=10, solver=solver, grid=grid, noise=noise, handle=handle)
        b = sample(model, m, steps=10, solver=solver, grid=grid, noise=moved(noise, m, q, shift), handle=handle)
        handle.remove()
        ref = sample(model, m, steps=10, solver=solver, grid=grid, noise=noise)
    assert handle.stats().hit_rate > 0.4
    assert_equivariant(a, b, m, q, shift)
    assert float((a.state["coords"] - ref.state["coords"]).abs().max()) > 0  # the cache really forecast
