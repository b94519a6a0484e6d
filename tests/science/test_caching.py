"""Caching a molecule flow-matching model: presets, forecasts, Heun's two caches, the chemistry guard."""

import forecache.core as fc
import pytest
import torch
from forecache.science.adapter import cache_model
from forecache.science.guards import MoleculeGuard, forecast_problem, forecast_problems
from forecache.science.model import EGNNConfig, MoleculeEGNN
from forecache.science.presets import ab_forecast, ab_forecast_timed, taylor_forecast
from forecache.science.sampler import sample, time_grid

B, N, A = 2, 4, 3
TINY = EGNNConfig(hidden=16, layers=2, message=8, edge_hidden=4, rbf=4, time_features=4,
                  num_atom_types=A, num_charges=2, num_bond_types=2, max_atoms=8)


def mask():
    m = torch.ones(B, N, dtype=torch.bool)
    m[1, 3:] = False
    return m


def egnn():
    torch.manual_seed(0)
    return MoleculeEGNN(TINY).double().eval()


def egnn_noise(m, seed=1):
    g = torch.Generator().manual_seed(seed)
    b = torch.randn(B, N, N, 2, generator=g, dtype=torch.float64)
    return {"coords": 2 * torch.randn(B, N, 3, generator=g, dtype=torch.float64),
            "atoms": torch.randn(B, N, A, generator=g, dtype=torch.float64),
            "charges": torch.randn(B, N, 2, generator=g, dtype=torch.float64), "bonds": b + b.transpose(1, 2)}


@pytest.mark.parametrize("preset", [ab_forecast, ab_forecast_timed, taylor_forecast])
@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_interval_one_is_bit_identical_to_uncached(preset, solver):
    model, m = egnn(), mask()
    with torch.no_grad():
        ref = sample(model, m, steps=6, solver=solver, grid="log", noise=egnn_noise(m))
        handle = cache_model(model, preset(interval=1))
        out = sample(model, m, steps=6, solver=solver, grid="log", noise=egnn_noise(m), handle=handle)
    handle.remove()
    for k in ref.state:
        assert torch.equal(ref.state[k], out.state[k])
    assert handle.stats().hit_rate == 0.0


class Polynomial(torch.nn.Module):
    """Outputs that are polynomials of degree ``degree`` in t (or in ``u(t)``), whatever the input."""

    def __init__(self, degree, of=lambda t: t):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.coef = [torch.randn(B, N, 3, generator=g, dtype=torch.float64) for _ in range(degree + 1)]
        self.logit = [torch.randn(B, N, A, generator=g, dtype=torch.float64) for _ in range(degree + 1)]
        self.of = of
        self.seen = []  # (t, cond) of every real call

    def forward(self, coords, atoms, mask, t, cond=None):
        self.seen.append((float(t[0]), cond))
        u = self.of(t).view(-1, 1, 1)
        return {"coords": sum(c * u**i for i, c in enumerate(self.coef)),
                "atom_logits": sum(c * u**i for i, c in enumerate(self.logit))}


def run(model, policy, steps=12, solver="euler", grid="linear"):
    m = torch.ones(B, N, dtype=torch.bool)
    x0 = {"coords": torch.zeros(B, N, 3, dtype=torch.float64), "atoms": torch.zeros(B, N, A, dtype=torch.float64)}
    kw = {"steps": steps, "solver": solver, "grid": grid, "noise": x0, "atom_types": A, "charges": 0, "bond_types": 0,
          "keep_predictions": True}
    if policy is None:
        return sample(model, m, **kw), None
    handle = cache_model(model, policy)
    out = sample(model, m, handle=handle, **kw)
    handle.remove()
    return out, handle


def assert_same_predictions(a, b, atol=1e-9):
    assert len(a.predictions) == len(b.predictions)
    for p, q in zip(a.predictions, b.predictions):
        for k in p:
            torch.testing.assert_close(p[k], q[k], rtol=0, atol=atol)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_ab_is_exact_on_polynomials_of_degree_order_minus_one(order):
    model = Polynomial(order - 1)
    ref, _ = run(model, None)
    for preset in (ab_forecast, ab_forecast_timed):  # a linear grid: t is proportional to the step index
        out, handle = run(model, preset(interval=3, order=order, warmup=order, guard=None))
        assert handle.stats().hit_rate > 0.4
        assert_same_predictions(ref, out)


def test_timed_ab_is_exact_on_a_log_grid_and_the_index_basis_is_not():
    model = Polynomial(2)
    ref, _ = run(model, None, grid="log")
    out, handle = run(model, ab_forecast_timed(interval=3, order=3, warmup=3, guard=None), grid="log")
    assert handle.stats().hit_rate > 0.4
    assert_same_predictions(ref, out)
    index, _ = run(model, ab_forecast(interval=3, order=3, warmup=3, guard=None), grid="log")
    gap = max(float((p["coords"] - q["coords"]).abs().max()) for p, q in zip(ref.predictions, index.predictions))
    assert gap > 1e-3


def test_index_ab_is_exact_on_polynomials_of_the_step_index():
    ts = time_grid(12, "log")
    index_of = lambda t: torch.tensor([min(range(len(ts)), key=lambda i: abs(ts[i] - float(x))) for x in t], dtype=torch.float64)
    model = Polynomial(1, of=index_of)
    ref, _ = run(model, None, grid="log")
    out, _ = run(model, ab_forecast(interval=3, order=2, guard=None), grid="log")
    assert_same_predictions(ref, out)


@pytest.mark.parametrize("order", [1, 2])
def test_taylor_is_exact_on_polynomials_of_its_order(order):
    model = Polynomial(order)
    ref, _ = run(model, None, grid="log")
    out, _ = run(model, taylor_forecast(interval=4, order=order, warmup=order + 1, guard=None), grid="log")
    assert_same_predictions(ref, out)


def test_forecast_logits_feed_self_conditioning():
    model = Polynomial(1)
    out, handle = run(model, ab_forecast(interval=3, guard=None))
    times = out.times
    cached_steps = {d.step for d in handle.trace() if d.action == "cached"}
    checked = 0
    for t, cond in model.seen:
        step = times.index(t)
        if step == 0:
            assert cond is None
            continue
        for k in cond:
            assert torch.equal(cond[k], out.predictions[step - 1][k])  # the sampler's previous prediction
        checked += (step - 1) in cached_steps
    assert checked >= 2  # ... which was a forecast at least twice


def test_heun_keeps_one_cache_per_call_at_its_own_times():
    model = Polynomial(1)
    ref, _ = run(model, None, solver="heun", grid="log")
    out, handle = run(model, ab_forecast_timed(interval=3, order=2, guard=None), solver="heun", grid="log")
    assert_same_predictions(ref, out)  # exact only if each call extrapolates from its own times
    ts = out.times
    trace = handle.trace()
    assert {d.branch for d in trace} == {0, 1}
    assert all(d.t == ts[d.step + d.branch] for d in trace)
    assert any(d.action == "cached" and d.branch == 1 for d in trace)


class Shrinking(torch.nn.Module):
    """A molecule whose predicted size drops from 1 to 0.55 after the first step, then stays: a
    linear extrapolation from steps 0 and 1 shrinks it to 0.1, collapsing its atoms."""

    def __init__(self):
        super().__init__()
        self.base = torch.tensor([[0.0, 0, 0], [1.5, 0, 0], [0, 1.5, 0], [0, 0, 1.5]], dtype=torch.float64).expand(B, N, 3)

    def forward(self, coords, atoms, mask, t, cond=None):
        scale = torch.where(t == 0, 1.0, 0.55).to(torch.float64).view(-1, 1, 1)
        return {"coords": self.base * scale, "atom_logits": torch.zeros(B, N, A, dtype=torch.float64)}


def test_guard_replaces_a_collapsing_forecast_by_a_real_evaluation():
    model = Shrinking()
    ref, _ = run(model, None)
    out, handle = run(model, ab_forecast(interval=3, order=2, warmup=2))
    guarded = [d for d in handle.trace() if d.action == "guarded"]
    assert [d.step for d in guarded] == [2, 2]  # both rows, at the first forecast step
    assert all("collapsing" in d.note for d in guarded)
    assert handle.stats().guarded_forecasts == 2
    assert '"note": "atoms collapsing' in handle.trace().to_json()
    assert_same_predictions(ref, out)
    unguarded, _ = run(model, ab_forecast(interval=3, order=2, warmup=2, guard=None))
    gap = max(float((p["coords"] - q["coords"]).abs().max()) for p, q in zip(ref.predictions, unguarded.predictions))
    assert gap > 0.5  # without the guard the collapsed forecast is used


def test_a_cache_that_never_fires_is_an_error():
    handle = cache_model(Polynomial(0), ab_forecast())
    with pytest.raises(RuntimeError, match="saw none of the sampler's"):
        run_with(handle, Polynomial(0))
    handle.remove()


def run_with(handle, model):
    m = torch.ones(B, N, dtype=torch.bool)
    return sample(model, m, steps=3, handle=handle, atom_types=A, charges=0, bond_types=0)


def test_guard_checks():
    coords = torch.tensor([[[0.0, 0, 0], [1.2, 0, 0], [0, 1.2, 0]]]).repeat(4, 1, 1)
    coords[1, 2] = float("nan")
    coords[2, 2] = torch.tensor([500.0, 0, 0])
    coords[3, 2] = torch.tensor([1.3, 0, 0])
    reasons = forecast_problems({"coords": coords, "atom_logits": torch.zeros(4, 3, 2)})
    assert reasons[0] is None
    assert "non-finite" in reasons[1] and "'coords'" in reasons[1]
    assert "exploding" in reasons[2]
    assert "collapsing" in reasons[3]
    # padded atoms do not count, and the checks do not move with the molecule
    m = torch.tensor([[True, True, True]] * 3 + [[True, True, False]])
    assert forecast_problems({"coords": coords[[0, 0, 0, 3]] + 1000.0}, m) == [None] * 4
    assert forecast_problem({"coords": coords}).startswith("molecule 1: non-finite")
    # a collapse is measured against the reference geometry: already that close is not a new collapse
    close = {"coords": coords[3:]}
    assert forecast_problems(close, reference=coords[3:].clone()) == [None]
    assert "collapsing" in forecast_problems(close, reference=coords[:1])[0]
    assert MoleculeGuard()(close, {"coords": coords[3:], "cond": {"coords": coords[:1]}})[0] is not None
    assert MoleculeGuard()(close, {"coords": coords[:1], "cond": {"coords": coords[3:]}}) == [None]  # cond first
    guard = MoleculeGuard(min_distance=0.05)
    assert guard({"coords": coords[3:]}, {"mask": None}) == [None]
    with pytest.raises(ValueError, match="MoleculeGuard.min_distance"):
        MoleculeGuard(min_distance=-1.0)


def test_policy_describes_its_guard_and_validates():
    d = ab_forecast().describe()
    assert d["where"][0]["guard"] == "MoleculeGuard" and d["what"] == {"type": "AdamsBashforth", "order": 2, "basis": "index", "points": None}
    with pytest.raises(ValueError, match="Interval.interval"):
        ab_forecast(interval=0)
    with pytest.raises(ValueError, match="ModelOutput.guard"):
        fc.Policy(where=fc.ModelOutput(guard=3), when=ab_forecast().when)


def test_block_level_policy_forecasts_the_layer_stack():
    # the EGNN layers take and return (h, x, e): the adapter's BlockIO names them, so a Blocks() span runs
    model, m = egnn(), mask()
    with torch.no_grad():
        ref = sample(model, m, steps=8, noise=egnn_noise(m))
        runs = {}
        for label, policy in (("replace", ab_forecast(interval=2).replace(where=fc.Blocks())),
                              ("where", ab_forecast(interval=2, where="layers"))):
            handle = cache_model(model, policy)
            runs[label] = sample(model, m, steps=8, noise=egnn_noise(m), handle=handle)
            handle.remove()
            assert handle.stats().hit_rate > 0
    out = runs["where"]
    assert all(torch.isfinite(v).all() for v in out.state.values())
    assert not torch.equal(ref.state["coords"], out.state["coords"])
    assert all(torch.equal(out.state[k], runs["replace"].state[k]) for k in out.state)


def test_where_names_its_choices_and_layers_refuses_a_guard():
    assert isinstance(ab_forecast(where="layers").where, fc.Blocks)
    assert isinstance(taylor_forecast(where="layers").where, fc.Blocks)
    with pytest.raises(ValueError, match="where='blocks' is unknown"):
        ab_forecast(where="blocks")
    with pytest.raises(ValueError, match="pass guard=None or where='output'"):
        ab_forecast(where="layers", guard=MoleculeGuard(max_radius=50.0))
