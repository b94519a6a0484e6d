"""Calibration: recording, TeaCache/MagCache fits, threshold search, profiles, step-count transfer."""

import itertools
import json
import math

import forecache.core as fc
import numpy as np
import pytest
import torch
from forecache.core.calibration import (
    PROFILE_VERSION,
    Profile,
    SearchConfig,
    calibrate,
    fit_magcache,
    fit_teacache,
    knob_for,
    psnr,
    record,
    search_knob,
)
from forecache.core.cli import main
from forecache.core.testing.toy import ToyAdapter, ToyTransformer, sample, toy_inputs
from forecache.core.triggers import MagnitudeRatio, RelativeL1
from forecache.core.triggers.step_scale import StepScale


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: a second intra-op thread only adds synchronisation, which costs
    seconds per generation on a shared, busy CPU. Restored after the module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def schedule(n: int) -> torch.Tensor:
    return torch.linspace(1.0, 0.05, n)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ToyTransformer().eval()


@pytest.fixture(scope="module")
def inputs():
    return toy_inputs(batch=1, seed=3)


def generation(model, inputs, steps=12, guidance=None):
    return lambda: sample(model, inputs, schedule(steps), guidance)


@pytest.fixture(scope="module")
def teacache_profile(model, inputs):
    return calibrate(model, generation(model, inputs), "teacache", target_ratio=0.5, adapter=ToyAdapter(),
                     search=SearchConfig(tolerance=0.05), progress=False)


@pytest.fixture(scope="module")
def magcache_profile(model, inputs):
    return calibrate(model, generation(model, inputs), "magcache", target_ratio=0.5, adapter=ToyAdapter(),
                     options={"retention": 0.0}, search=SearchConfig(tolerance=0.05), progress=False)


def run(model, inputs, policy, steps, known=False):
    """``known``: the handle is told the schedule, as a pipeline's is (triggers may use it)."""
    handle = fc.apply(model, policy, ToyAdapter())
    if known:
        handle.set_schedule(schedule(steps))
    out = sample(model, inputs, schedule(steps))
    ratio = handle.stats().compute_ratio
    computes = sum(d.computed for d in handle.trace())
    handle.remove()
    return out, ratio, computes


# -- recording -------------------------------------------------------------------------------------


def test_recorder_records_one_point_per_step_and_row_and_leaves_the_run_uncached(model):
    inputs = toy_inputs(batch=2, seed=1)
    expected = sample(model, inputs, schedule(12), guidance=2.0)
    rec = record(model, generation(model, inputs, 12, guidance=2.0), ToyAdapter(), progress=False)
    assert "forward" not in model.__dict__  # the handle is gone
    assert torch.equal(rec.outputs[0], expected)  # recording changes nothing
    assert rec.model_class == "ToyTransformer" and rec.generations == 1
    assert len(rec.trajectories) == 4  # 2 CFG branches x 2 rows
    for tr in rec.trajectories:
        assert [p.step for p in tr.points] == list(range(12))
        assert tr.points[0].input_change is None and tr.points[0].magnitude_ratio is None
        assert all(p.input_change > 0 and p.output_change > 0 and p.residual_norm > 0 for p in tr.points[1:])
    np.testing.assert_allclose(rec.time_grid, schedule(12).tolist())
    x, y = rec.pairs()
    assert x.shape == y.shape == (4 * 11,)


def test_recorded_changes_are_the_relative_l1_of_the_real_signals(model, inputs):
    rec = record(model, generation(model, inputs, 6), ToyAdapter(), progress=False)
    # recompute by hand: the first block's modulated input and the block stack's output per step
    seen = []
    hooks = [model.blocks[0].register_forward_hook(lambda m, a, out: seen.append(("in", m.modulate(a[0], a[2])))),
             model.blocks[-1].register_forward_hook(lambda m, a, out: seen.append(("out", out[1])))]
    first_in = []
    hooks.append(model.blocks[0].register_forward_pre_hook(lambda m, a: first_in.append(a[0])))
    try:
        sample(model, inputs, schedule(6))
    finally:
        for h in hooks:
            h.remove()
    sig = [v for k, v in seen if k == "in"]
    out = [v for k, v in seen if k == "out"]
    res = [o - i for o, i in zip(out, first_in)]

    def rel(a, b):
        return float((a - b).abs().mean() / b.abs().mean())

    points = rec.trajectories[0].points
    for n in range(1, 6):
        assert points[n].input_change == pytest.approx(rel(sig[n], sig[n - 1]), rel=1e-5)
        assert points[n].output_change == pytest.approx(rel(out[n], out[n - 1]), rel=1e-5)
        expect = float((res[n].norm(dim=-1) / res[n - 1].norm(dim=-1)).mean())
        assert points[n].magnitude_ratio == pytest.approx(expect, rel=1e-5)
        assert points[n].residual_norm == pytest.approx(float(res[n].norm()), rel=1e-5)
        if n >= 2:  # over two steps, against the signal of step n - 2
            assert points[n].input_change_2 == pytest.approx(rel(sig[n], sig[n - 2]), rel=1e-5)
    assert points[0].input_change_2 is None and points[1].input_change_2 is None
    assert rec.two_step_changes()[0] == pytest.approx([0.0, 0.0] + [points[n].input_change_2 for n in range(2, 6)])


# -- fits ------------------------------------------------------------------------------------------


def test_teacache_fit_recovers_a_known_polynomial():
    truth = (120.0, -40.0, 5.0, 0.7, 0.01)
    x = np.linspace(0.01, 0.3, 60)
    fit = fit_teacache((x, np.polyval(truth, x)))
    np.testing.assert_allclose(fit.coefficients, truth, rtol=1e-6, atol=1e-9)
    assert fit.degree == 4 and fit.rmse < 1e-9 and fit.points == 60
    noisy = np.polyval(truth, x) + np.random.default_rng(0).normal(0, 1e-4, x.size)
    assert np.abs(fit_teacache((x, noisy))(x) - np.polyval(truth, x)).max() < 1e-4
    with pytest.raises(ValueError, match="lower degree"):
        fit_teacache((x[:3], x[:3]))


def test_teacache_fit_on_a_recording_predicts_its_output_changes(model, inputs):
    rec = record(model, generation(model, inputs), ToyAdapter(), progress=False)
    fit = fit_teacache(rec)
    x, y = rec.pairs()
    assert np.abs(fit(x) - y).max() < 0.05 * y.max()


def test_magcache_profile_reproduces_the_recorded_ratios_on_its_grid(model, inputs):
    rec = record(model, generation(model, inputs, 10), ToyAdapter(), progress=False)
    profile = fit_magcache(rec)
    grid = rec.time_grid
    assert profile.times == grid
    recorded = [p.magnitude_ratio for p in rec.trajectories[0].points]
    for i in range(1, len(grid)):
        assert profile.ratio(grid[i - 1], grid[i]) == pytest.approx(recorded[i], rel=1e-9)


# -- threshold search ------------------------------------------------------------------------------


def test_threshold_search_reaches_a_target_compute_ratio(model, inputs, teacache_profile):
    search = teacache_profile.data["search"]
    assert search["knob"] == "threshold" and search["met"]
    assert abs(search["achieved"]["compute_ratio"] - 0.5) <= 0.05
    assert len(search["evaluations"]) <= 16
    # the profile gives back exactly the searched setting
    _, ratio, _ = run(model, inputs, fc.teacache(profile=teacache_profile), 12)
    assert ratio == pytest.approx(search["achieved"]["compute_ratio"], rel=1e-9)


def test_interval_search_is_integer_and_keeps_the_least_aggressive_value_that_reaches(model, inputs):
    result = search_knob(model, generation(model, inputs), "fora", compute_ratio=0.5, adapter=ToyAdapter(),
                         config=SearchConfig(tolerance=0.0), progress=False)
    assert isinstance(result.value, int) and result.met
    assert result.achieved.compute_ratio <= 0.5
    by_value = {e.value: e.compute_ratio for e in result.evaluations}
    assert by_value.get(result.value - 1, 1.0) > 0.5  # one step less aggressive misses the target


def test_interval_search_stops_at_the_step_count(model, inputs):
    """An interval past the step count computes as the step count does: the search does not probe one."""
    result = search_knob(model, generation(model, inputs, steps=6), "fora", compute_ratio=0.05,
                         adapter=ToyAdapter(), config=SearchConfig(max_generations=16), progress=False)
    assert not result.met
    assert max(e.value for e in result.evaluations) == 6
    assert len(result.evaluations) < 16


def test_fidelity_search_keeps_the_target_and_is_the_most_aggressive_that_does(model, inputs):
    result = search_knob(model, generation(model, inputs), "easycache", fidelity_target=60.0, fidelity=psnr,
                         adapter=ToyAdapter(), options={"warmup": 2}, config=SearchConfig(max_generations=10),
                         progress=False)
    assert result.met and result.achieved.fidelity >= 60.0
    assert result.achieved.compute_ratio < 1.0
    faster = [e for e in result.evaluations if e.compute_ratio < result.achieved.compute_ratio]
    assert all(e.fidelity < 60.0 for e in faster)


def test_re_searching_at_another_step_count_keeps_the_fit(model, inputs, teacache_profile):
    again = calibrate(model, generation(model, inputs, 20), "teacache", target_ratio=0.5, adapter=ToyAdapter(),
                      profile=teacache_profile, search=SearchConfig(tolerance=0.05), progress=False)
    assert again.data["coefficients"] == teacache_profile.data["coefficients"]
    assert again.fitted_on == teacache_profile.fitted_on and again.time_grid == teacache_profile.time_grid
    assert again.data["search"]["steps"] == 20 and again.data["search"]["met"]
    _, ratio, _ = run(model, inputs, fc.teacache(profile=again), 20)
    assert abs(ratio - 0.5) <= 0.05


def test_search_arguments_are_checked():
    with pytest.raises(ValueError, match="no single strength knob"):
        knob_for("pab")
    with pytest.raises(ValueError, match="exactly one target"):
        search_knob(None, lambda: None, "fora", compute_ratio=0.5, fidelity_target=30.0, fidelity=psnr)
    with pytest.raises(ValueError, match="needs fidelity="):
        search_knob(None, lambda: None, "fora", fidelity_target=30.0)
    assert knob_for("foresight").name == "gamma" and knob_for("taylorseer").integer


# -- profiles --------------------------------------------------------------------------------------


def test_profile_save_load_round_trip(tmp_path, model, inputs, teacache_profile):
    path = teacache_profile.save(tmp_path / "toy.json")
    on_disk = json.loads(path.read_text())
    assert on_disk["forecache_profile"] == PROFILE_VERSION
    assert on_disk["model_class"] == "ToyTransformer" and on_disk["method"] == "teacache"
    assert on_disk["fitted_on"] == {"steps": 12, "generations": 1}
    loaded = Profile.load(path)
    assert loaded.to_dict() == teacache_profile.to_dict()
    a, *_ = run(model, inputs, fc.teacache(profile=teacache_profile), 12)
    b, *_ = run(model, inputs, fc.teacache(profile=str(path)), 12)
    assert torch.equal(a, b)
    on_disk["forecache_profile"] = 99
    path.write_text(json.dumps(on_disk))
    with pytest.raises(ValueError, match="version 99"):
        Profile.load(path)


def test_preset_arguments_override_the_profile(teacache_profile, magcache_profile):
    policy = fc.teacache(0.9, profile=teacache_profile)
    assert policy.when.threshold == 0.9
    assert policy.when.coefficients == tuple(teacache_profile.data["coefficients"])
    assert policy.when.time_grid == teacache_profile.time_grid
    # the recorded dynamics a re-targeted threshold is modelled on: one row per recorded trajectory
    for key in ("input_changes", "two_step_changes"):
        assert getattr(policy.when, key) == tuple(tuple(row) for row in teacache_profile.data[key])
    assert policy.calibrated_for == "ToyTransformer"
    mag = fc.magcache(profile=magcache_profile)
    assert mag.when.retention == 0.0 and mag.when.threshold == magcache_profile.knob[1]
    assert fc.fora(profile=Profile("ToyTransformer", "fora", (1.0, 0.5), {"search": {
        "knob": "interval", "value": 4}})).when.interval == 4


def test_a_profile_for_another_model_class_or_method_is_refused(model, teacache_profile):
    class OtherTransformer(ToyTransformer):
        pass

    other = OtherTransformer().eval()
    with pytest.raises(ValueError, match="calibrated on ToyTransformer, but is applied to OtherTransformer"):
        fc.apply(other, fc.teacache(profile=teacache_profile), ToyAdapter())
    assert "forward" not in other.__dict__
    with pytest.raises(ValueError, match="calibrated for 'teacache'"):
        fc.magcache(profile=teacache_profile)


# -- step counts -----------------------------------------------------------------------------------


def test_step_scale_is_one_on_its_grid_and_the_step_ratio_elsewhere():
    grid = schedule(12).tolist()
    scale = StepScale(grid)
    assert all(scale.weight(a, b) == pytest.approx(1.0, abs=1e-6) for a, b in itertools.pairwise(grid))
    fine = schedule(23).tolist()  # exactly twice the steps: every step half as long
    assert all(scale.weight(a, b) == pytest.approx(0.5, rel=1e-5) for a, b in itertools.pairwise(fine))
    with pytest.raises(ValueError, match="monotonic"):
        StepScale([1.0, 0.5, 0.7])


def test_time_grid_triggers_equal_the_paper_rules_on_the_calibration_grid(model, inputs, teacache_profile):
    grid = teacache_profile.time_grid
    coefficients = teacache_profile.data["coefficients"]
    threshold = teacache_profile.knob[1]
    plain = fc.teacache(threshold, coefficients)
    timed = fc.teacache(threshold, coefficients, time_grid=grid)
    assert torch.equal(run(model, inputs, plain, 12)[0], run(model, inputs, timed, 12)[0])
    ratios = fit_magcache(record(model, generation(model, inputs), ToyAdapter(), progress=False))
    plain = fc.magcache(0.01, max_skip=2, retention=0.0, ratios=ratios)
    timed = fc.magcache(0.01, max_skip=2, retention=0.0, ratios=ratios, time_grid=grid)
    assert torch.equal(run(model, inputs, plain, 12)[0], run(model, inputs, timed, 12)[0])
    assert isinstance(timed.when, MagnitudeRatio) and isinstance(plain.when, MagnitudeRatio)
    assert isinstance(fc.teacache(0.1).when, RelativeL1)


@pytest.mark.parametrize("method", ["teacache", "magcache"])
def test_a_profile_fitted_at_12_steps_serves_8_and_20(model, inputs, method, request):
    profile = request.getfixturevalue(f"{method}_profile")
    preset = fc.PRESETS[method]
    assert profile.preset_kwargs()["compute_ratio"] == 0.5
    for steps in (8, 20):
        computes = run(model, inputs, preset(profile=profile), steps, known=True)[2]
        # the threshold is re-targeted to the profile's 2x target at this step count: MagCache's
        # modelled run is its real one, TeaCache's follows the recorded mean change (measured: exact
        # here, where the threshold as searched computes one step more with TeaCache)
        assert abs(computes - steps // 2) <= (0 if method == "magcache" else 1), (computes, steps)
        # without the schedule nothing can be re-targeted: the searched threshold runs as it is
        unknown = run(model, inputs, preset(profile=profile), steps)[2]
        assert unknown == run(model, inputs, preset(profile=profile, retarget=False), steps)[2]


# -- a real diffusers pipeline -----------------------------------------------------------------------


def test_calibration_on_the_tiny_flux_pipeline(teacache_profile):
    pytest.importorskip("diffusers")
    from forecache.core.testing.tiny_models import tiny_flux_pipeline

    pipe = tiny_flux_pipeline()

    def generate():
        return pipe("a red square", num_inference_steps=8, height=32, width=32, output_type="pt",
                    generator=torch.Generator().manual_seed(0)).images

    expected = generate()
    rec = record(pipe, generate, progress=False)
    assert rec.model_class == "FluxTransformer2DModel"
    assert torch.equal(rec.outputs[0], expected)
    assert [len(tr.points) for tr in rec.trajectories] == [8]
    sigmas = pipe.scheduler.sigmas[:-1].tolist()  # what FluxTransformer2DModel receives as timestep
    np.testing.assert_allclose(rec.time_grid, sigmas, rtol=1e-5)
    profile = fit_magcache(rec)
    policy = fc.magcache(0.1, profile=Profile(rec.model_class, "magcache", rec.time_grid,
                                              {"ratios": list(profile.ratios)}))
    handle = fc.apply(pipe, policy)
    generate()
    assert handle.stats().compute_ratio < 1.0
    handle.remove()
    with pytest.raises(ValueError, match="calibrated on ToyTransformer, but is applied to FluxTransformer2DModel"):
        fc.apply(pipe, fc.teacache(profile=teacache_profile))


# -- the command line ------------------------------------------------------------------------------

TASK = '''
import torch
from forecache.core.testing.toy import ToyAdapter, ToyTransformer, sample, toy_inputs

def toy(steps=12):
    torch.manual_seed(0)
    model = ToyTransformer().eval()
    inputs = toy_inputs(batch=1, seed=3)
    return model, lambda: sample(model, inputs, torch.linspace(1.0, 0.05, steps)), None, ToyAdapter()
'''


def test_cli_calibrate_writes_a_profile_the_preset_reads(tmp_path, capsys):
    task = tmp_path / "toy_task.py"
    task.write_text(TASK)
    out = tmp_path / "profile.json"
    code = main(["calibrate", "--model", f"{task}:toy", "--method", "magcache", "--target-ratio", "0.5",
                 "--steps", "12", "--tolerance", "0.05", "--option", "retention=0.0", "--out", str(out), "--quiet"])
    assert code == 0
    assert "magcache(profile=" in capsys.readouterr().out
    profile = Profile.load(out)
    assert profile.method == "magcache" and profile.fitted_on["steps"] == 12
    assert profile.data["search"]["options"] == {"retention": 0.0}
    assert len(profile.data["ratios"]) == 12
    assert math.isfinite(profile.knob[1])
