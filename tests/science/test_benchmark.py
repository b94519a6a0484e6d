"""`forecache bench science`: a full run on a random tiny model gives schema-2 rows with honest NFE."""

import json
import math

import pytest
import torch
from forecache.core.bench.discovery import benchmarks
from forecache.core.bench.runner import run_benchmark
from forecache.science.benchmark import WARMUP, MoleculeBenchmark, schedule_nfe
from forecache.science.model import MoleculeEGNN

from .tiny import TINY

STEPS = 12


@pytest.fixture(scope="module")
def result():
    torch.manual_seed(0)
    bench = MoleculeBenchmark(model=MoleculeEGNN(TINY), sizes={3: 1, 4: 2, 5: 1}, samples=(5, 5), steps=STEPS,
                              batch=3)
    return bench, run_benchmark(bench, quick=False, repeats=1, progress=False)


def test_quick_rows_are_a_subset(result):
    bench, _ = result
    quick = [(m.name, m.params) for m in bench.methods(quick=True)]
    assert {name for name, _ in quick} == {"ab_forecast", "fewer_steps"}
    assert all(row in [(m.name, m.params) for m in bench.methods(quick=False)] for row in quick)


@pytest.mark.parametrize("interval, steps, quick, label", [
    # warm-up 1, then one step in 3 of 100: steps 0, 3, ..., 99, the last, at the NFE of a warm-up of 2
    (3, 100, False, "ab_forecast(interval=3,order=4,points=7,warmup=1)"),
    # one step in 6 of 199: steps 0, 6, ..., 198, the last, as many as interval 3 on 100
    (6, 199, True, "ab_forecast(interval=6,order=4,points=7,warmup=1,steps=199)"),
])
def test_warmup_one_rows_compute_the_last_step_at_the_nfe_of_interval_three(interval, steps, quick, label):
    assert schedule_nfe(interval, steps, warmup=1) == schedule_nfe(3, 100) == 34 and (steps - 1) % interval == 0
    bench = MoleculeBenchmark(model=MoleculeEGNN(TINY), sizes={3: 1})
    assert label in [m.label for m in bench.methods(quick=quick)]


def test_fine_grid_row_samples_its_own_steps_and_restores_the_baseline(result):
    bench, r = result
    fine = [row for row in r["runs"] if row["params"].get("steps") and row["method"] == "ab_forecast"]
    assert {row["params"]["steps"] for row in fine} == {2 * STEPS - 1} and len(fine) == 2
    for row in fine:  # the handle saw every one of the finer grid's steps, and computed only its schedule
        assert row["stats"]["calls"] == row["stats"]["generations"] * (2 * STEPS - 1)
        assert row["metrics"]["nfe"] == pytest.approx(schedule_nfe(6, 2 * STEPS - 1, warmup=1))
    assert bench.sampling.steps == STEPS and bench.sampling.handle is None


def test_run_has_the_schema(result):
    _, r = result
    assert r["schema"] == 2 and r["domain"] == "science" and r["benchmark"] == "molecules"
    assert {"device", "threads"} <= set(r["hardware"]) and "torch" in r["versions"]
    base = r["baseline"]
    assert base["flops"] > 0 and base["wall_s"] > 0 and base["units"] == 5 and base["unit"] == "molecule"
    assert base["metrics"]["nfe"] == STEPS
    assert {"validity", "atom_stability", "molecule_stability", "uniqueness", "energy_median",
            "strain_median"} <= set(base["metrics"])
    names = {row["method"] for row in r["runs"]}
    assert names == {"ab_forecast", "ab_forecast_timed", "taylor_forecast", "fewer_steps"}
    for row in r["runs"]:
        assert {"method", "params", "peer", "wall_s", "flops", "speedup_wall", "speedup_flops", "fidelity",
                "metrics", "peak_cache_bytes"} <= set(row)
        assert row["peer"] is False and row["flops"] > 0
        assert {"coord_rmsd_mean", "atom_type_agreement", "bond_agreement"} <= set(row["fidelity"])
    json.dumps(r)  # serialisable


def test_equal_nfe_rows_have_the_nfe_they_claim(result):
    _, r = result
    base_flops = r["baseline"]["flops"]
    for row in r["runs"]:
        nfe = row["metrics"]["nfe"]
        if row["method"] == "fewer_steps":
            assert nfe == row["params"]["steps"] in {schedule_nfe(k, STEPS) for k in (2, 3, 4, 5)}
            assert math.isclose(row["flops"], base_flops * nfe / STEPS, rel_tol=1e-9)
        elif row["params"].get("where") == "layers":  # the first layer runs at every step, the stack does not
            assert nfe == STEPS
            assert base_flops * schedule_nfe(row["params"]["interval"], STEPS) / STEPS < row["flops"] < base_flops
        else:  # a cached row computes at least its schedule (the guard may add computes)
            steps = row["params"].get("steps", STEPS)
            assert nfe >= schedule_nfe(row["params"]["interval"], steps, row["params"].get("warmup", WARMUP))
            assert row["metrics"]["nfe"] * base_flops / STEPS == pytest.approx(row["flops"], rel=1e-6)
    ab = next(row for row in r["runs"] if row["method"] == "ab_forecast" and row["params"] == {"interval": 3, "order": 2})
    fewer = next(row for row in r["runs"] if row["method"] == "fewer_steps"
                 and row["params"]["steps"] == schedule_nfe(3, STEPS))
    assert ab["metrics"]["nfe"] == fewer["metrics"]["nfe"] or ab["stats"]["guarded_forecasts"] > 0


def test_same_noise_for_every_row(result):
    bench, _ = result
    first, second = bench.generate(), bench.generate()
    for a, b in zip(first.molecules, second.molecules):
        assert torch.equal(a.coords, b.coords) and torch.equal(a.atom_types, b.atom_types)


def test_schedule_nfe():
    assert [schedule_nfe(k) for k in (1, 2, 3, 4, 5)] == [100, 51, 34, 26, 21]


def test_missing_model_folder_is_a_clear_error(tmp_path):
    bench = MoleculeBenchmark(tmp_path / "molecule-flow")
    with pytest.raises(FileNotFoundError, match="python -m forecache.science.train"):
        bench.prepare(quick=True)


def test_registered_under_the_entry_point():
    found = benchmarks("science")
    assert [b.name for b in found] == ["molecules"] and found[0].domain == "science"
