"""Flow-matching training of the molecule model: the noise convention is the sampler's, the loss falls,
checkpoints (weights, sizes, log) round-trip and --init continues."""

import json

import pytest
import torch
from forecache.science.model import MoleculeEGNN
from forecache.science.molecule import Molecule, collate
from forecache.science.sampler import _initial_state, sample
from forecache.science.sizes import (
    atom_mask,
    draw_sizes,
    load_sizes,
    save_sizes,
    size_histogram,
)
from forecache.science.train import (
    PaddedSet,
    clean_state,
    flow_loss,
    interpolate,
    kabsch_onto,
    parse_args,
    perturb_condition,
    self_condition,
    train,
)

from .tiny import TINY


def molecules(count=6, seed=0):
    """Small random molecules: chains of C/O with single bonds, hydrogens-free (shape matters, not chemistry)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(count):
        n = 3 + i % 4
        bonds = torch.zeros(n, n, dtype=torch.long)
        for j in range(n - 1):
            bonds[j, j + 1] = bonds[j + 1, j] = 1 + (j % 2)
        out.append(Molecule(torch.randn(n, 3, generator=g) * 1.5, torch.randint(1, 4, (n,), generator=g),
                            torch.full((n,), 1), bonds))
    return out


def test_noise_and_interpolant_follow_the_sampler():
    # x_t = (1 - t) x0 + t x1 with the sampler's x0; a model predicting x1 perfectly makes the sampler's
    # velocity (x1_hat - x_t) / (1 - t) point at x1, so one Euler step of size 1 - t lands on x1
    mols = molecules(4)
    batch = collate(mols)
    mask = batch["mask"]
    x1 = clean_state(batch, TINY)
    t = torch.tensor([0.1, 0.4, 0.7, 0.95])
    xt, _, _ = interpolate(x1, mask, t, TINY, torch.Generator().manual_seed(3), align=False)
    x0 = _initial_state(mask, {"atoms": 10, "charges": 3, "bonds": 4}, None, torch.Generator().manual_seed(3))
    for k in x1:
        tk = t.view(-1, *([1] * (x1[k].dim() - 1)))
        assert torch.allclose(xt[k], (1 - tk) * x0[k] + tk * x1[k], atol=1e-6)
    # the sampler's noise: zero centre of mass coordinates, symmetric bonds, zero padding
    count = mask.sum(1, keepdim=True).unsqueeze(-1)
    assert torch.allclose(x0["coords"].sum(1) / count.squeeze(-1), torch.zeros(4, 3), atol=1e-5)
    assert torch.equal(x0["bonds"], x0["bonds"].transpose(1, 2))
    assert float(x0["atoms"][~mask].abs().sum()) == 0.0
    # data centred too
    assert torch.allclose(x1["coords"].sum(1), torch.zeros(4, 3), atol=1e-4)

    class Oracle(torch.nn.Module):
        """Predicts x1 exactly: coordinates, and logits whose softmax is (numerically) the one-hot."""

        config = TINY

        def forward(self, coords, atoms, mask, t, charges=None, bonds=None, cond=None):
            return {"coords": x1["coords"], "atom_logits": 50 * x1["atoms"], "charge_logits": 50 * x1["charges"],
                    "bond_logits": 50 * x1["bonds"]}

    for i, ti in enumerate(t.tolist()):
        # the sampler, started at x_t of molecule i with a two-point grid (ti, 1), must return x1
        state = {k: v.clone() for k, v in xt.items()}
        from forecache.science import sampler as s

        flow = s._Flow(Oracle(), mask, {"atoms": 10, "charges": 3, "bonds": 4}, True, False)
        v = flow.velocity(state, ti)
        landed = s._axpy(state, 1 - ti, v, flow.masks)
        assert torch.allclose(landed["coords"][i], x1["coords"][i], atol=1e-4)
        assert torch.equal(landed["atoms"][i].argmax(-1)[mask[i]], batch["atom_types"][i][mask[i]])


def test_kabsch_rotation_is_proper_and_aligns():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(2, 5, 3, generator=g)
    y = y - y.mean(1, keepdim=True)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g))
    q = q * torch.sign(torch.linalg.det(q))  # a proper rotation
    x = y @ q
    mask = torch.ones(2, 5, dtype=torch.bool)
    assert torch.allclose(kabsch_onto(x, y, mask), y, atol=1e-5)
    # distances are kept (a rotation, never a reflection of a chiral molecule)
    z = kabsch_onto(torch.randn(2, 5, 3, generator=g), y, mask)
    assert z.shape == y.shape


def test_a_few_steps_reduce_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    model = MoleculeEGNN(TINY).train()
    batch = collate(molecules(6))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def fixed_loss():
        return flow_loss(model, batch, torch.Generator().manual_seed(5), self_cond=0.0,
                         t=torch.full((6,), 0.6))[0]

    with torch.no_grad():
        before = float(fixed_loss())
    for step in range(25):
        loss, parts = flow_loss(model, batch, torch.Generator().manual_seed(step % 3), self_cond=0.5)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert set(parts) == {"coords", "atoms", "charges", "bonds"}
    with torch.no_grad():
        after = float(fixed_loss())
    assert after < 0.7 * before


def spied_model():
    """A tiny model that records each call's ``(t, cond)`` in the returned list."""
    torch.manual_seed(0)
    model = MoleculeEGNN(TINY).train()
    calls = []
    original = model.forward

    def spy(*args, **kwargs):
        calls.append((kwargs["t"].clone(), kwargs.get("cond")))
        return original(*args, **kwargs)

    model.forward = spy
    return model, calls


def test_self_conditioning_feeds_the_first_pass_prediction():
    model, calls = spied_model()
    flow_loss(model, collate(molecules(3)), torch.Generator().manual_seed(0), self_cond=1.0)
    seen = [cond for _, cond in calls]
    assert seen[0] is None and isinstance(seen[1], dict)
    probs = seen[1]["atoms"]
    assert torch.allclose(probs.sum(-1)[collate(molecules(3))["mask"]], torch.ones(1), atol=1e-5)


def test_sizes_round_trip_and_draw(tmp_path):
    hist = size_histogram(molecules(6))
    assert hist == {3: 2, 4: 2, 5: 1, 6: 1}
    save_sizes(tmp_path, hist)
    assert load_sizes(tmp_path) == hist
    drawn = draw_sizes(hist, 200, torch.Generator().manual_seed(0))
    assert set(drawn) <= set(hist) and len(drawn) == 200
    mask = atom_mask([3, 5])
    assert mask.tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    with pytest.raises(FileNotFoundError, match="sizes.json"):
        load_sizes(tmp_path / "nowhere")


def test_padded_set_trims_to_the_batch():
    data = PaddedSet(molecules(6))
    b = data.batch(torch.tensor([0, 4]))  # sizes 3 and 3
    assert b["mask"].shape == (2, 3) and b["bonds"].shape == (2, 3, 3)


def test_train_saves_a_loadable_checkpoint_and_init_continues(tmp_path, capsys):
    data = (molecules(8), molecules(3, seed=1))
    config = json.dumps({"hidden": 16, "layers": 2, "message": 8, "edge_hidden": 4, "rbf": 4,
                         "time_features": 4, "max_atoms": 8})
    out = tmp_path / "flow"
    args = parse_args(["--out", str(out), "--steps", "4", "--batch", "4", "--warmup", "2", "--config", config,
                       "--val-every", "2", "--eval-samples", "0"])
    summary = train(args, data)
    assert summary["steps"] == 4
    model = MoleculeEGNN.load(out)
    assert model.config.hidden == 16
    assert load_sizes(out) == size_histogram(data[0])
    log = json.loads((out / "train_log.json").read_text())
    assert len(log["log"]) == 4 and {"coords", "atoms", "charges", "bonds"} <= set(log["log"][0])
    assert (out / "loss.png").is_file()
    # the saved (EMA) model samples molecules of the drawn sizes
    sizes = draw_sizes(load_sizes(out), 3, torch.Generator().manual_seed(0))
    result = sample(model, atom_mask(sizes), steps=3, generator=torch.Generator().manual_seed(0))
    assert result.batch["mask"].sum(1).tolist() == sizes
    # --init continues: the log grows, the stages are recorded
    args = parse_args(["--out", str(out), "--steps", "2", "--batch", "4", "--init", str(out), "--eval-samples", "0"])
    train(args, data)
    log = json.loads((out / "train_log.json").read_text())
    assert [e["step"] for e in log["log"]] == [0, 1, 2, 3, 4, 5]
    assert [s["first_step"] for s in log["stages"]] == [0, 4]


def test_chained_self_conditioning_runs_passes_along_the_path_one_gap_apart():
    # cond_passes=3, cond_lag=0.2: a chain of k in 1..3 no-grad passes at t - k d, ..., t - d, each
    # conditioned on the one before (the first on nothing), and the training pass at t after them (t > 3 * 0.2:
    # no pass is clamped at t = 0)
    model, calls = spied_model()
    lengths = set()
    for seed in range(20):
        calls.clear()
        flow_loss(model, collate(molecules(3)), torch.Generator().manual_seed(seed), self_cond=1.0,
                  cond_passes=3, cond_lag=0.2, t=torch.tensor([0.7, 0.8, 0.9]))
        *chain, last = calls
        lengths.add(len(chain))
        assert torch.equal(last[0], torch.tensor([0.7, 0.8, 0.9])) and isinstance(last[1], dict)
        assert chain[0][1] is None and all(isinstance(c, dict) for _, c in chain[1:])
        gaps = [last[0] - t for t, _ in reversed(chain)]  # d, 2d, ..., k d per row
        for j, gap in enumerate(gaps, start=1):
            assert torch.allclose(gap, j * gaps[0], atol=1e-6)
        assert bool((gaps[0] >= 0).all() and (gaps[0] < 0.2).all())
    assert lengths == {1, 2, 3}


def test_chained_self_conditioning_rejects_bad_settings():
    model = MoleculeEGNN(TINY)
    batch = collate(molecules(2))
    x1 = clean_state(batch, TINY)
    t = torch.tensor([0.3, 0.7])
    xt, x1, x0 = interpolate(x1, batch["mask"], t, TINY, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="cond_passes"):
        self_condition(model, x0, x1, batch["mask"], t, torch.Generator(), passes=0)
    with pytest.raises(ValueError, match="cond_lag"):
        self_condition(model, x0, x1, batch["mask"], t, torch.Generator(), lag=1.5)


def test_one_pass_self_conditioning_draws_no_random_numbers():
    # the defaults are Chen et al.'s recipe, and leave the training's random stream as it was before the chain
    model = MoleculeEGNN(TINY)
    batch = collate(molecules(2))
    t = torch.tensor([0.3, 0.7])
    xt, x1, x0 = interpolate(clean_state(batch, TINY), batch["mask"], t, TINY, torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(1)
    state = generator.get_state()
    self_condition(model, x0, x1, batch["mask"], t, generator)
    assert torch.equal(generator.get_state(), state)


def test_condition_noise_is_masked_centred_and_bounded_per_molecule():
    batch = collate(molecules(3))
    mask = batch["mask"]
    state = _initial_state(mask, {"atoms": 4, "charges": 3, "bonds": 5}, None, torch.Generator().manual_seed(0))
    cond = {k: v.abs() if k != "coords" else v for k, v in state.items()}
    noisy = perturb_condition(cond, mask, 0.05, torch.Generator().manual_seed(2))
    node, pair = mask.unsqueeze(-1), (mask.unsqueeze(1) & mask.unsqueeze(2)).unsqueeze(-1)
    for key, value in noisy.items():
        delta = value - cond[key]
        where = node if key != "bonds" else pair
        assert bool((value[~where.expand_as(value)] == 0).all()), key  # padding stays zero
        assert float(delta.abs().max()) > 0, key
        # the std is drawn per molecule below 0.05: 6 sigma bounds every entry
        assert float(delta.abs().max()) < 0.3, key
    shift = (noisy["coords"] - cond["coords"]).sum(1)  # no net translation of the molecule
    assert torch.allclose(shift, torch.zeros_like(shift), atol=1e-5)
    unchanged = perturb_condition(cond, mask, 0.0, torch.Generator())
    assert all(torch.equal(unchanged[k], cond[k] * (node if k != "bonds" else pair)) for k in cond)
    with pytest.raises(ValueError, match="cond_noise"):
        perturb_condition(cond, mask, -0.1, torch.Generator())


def test_condition_noise_reaches_the_training_pass():
    # with cond_noise the training pass sees a cond that differs from the first pass's prediction
    model, calls = spied_model()
    batch = collate(molecules(2))
    t = torch.tensor([0.4, 0.8])
    conds = []
    for noise in (0.0, 0.05):
        calls.clear()
        flow_loss(model, batch, torch.Generator().manual_seed(3), self_cond=1.0, t=t, cond_noise=noise)
        conds.append(calls[-1][1])
    assert set(conds[0]) == set(conds[1])
    assert any(not torch.allclose(conds[0][k], conds[1][k]) for k in conds[0])
    with pytest.raises(ValueError, match="cond_noise"):
        flow_loss(model, batch, torch.Generator().manual_seed(3), self_cond=1.0, t=t, cond_noise=-0.05)
