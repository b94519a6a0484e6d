"""Triggers driven through the measure/decide/observe protocol on a synthetic trajectory.

Every expected decision sequence below was worked out by hand from the table of feature values,
in the comments next to it; "C" is a compute, "-" a reuse/forecast.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from forecache.core.triggers import (
    FLUX_MAG_PROFILE,
    FLUX_MAG_RATIOS,
    FLUX_MAG_TIMES,
    Foresight,
    Interval,
    MagnitudeProfile,
    MagnitudeRatio,
    Observation,
    ProbeResidual,
    RelativeL1,
    Speculative,
    TransformRate,
    ask,
)
from forecache.core.triggers.magnitude import _flux_sigmas
from forecache.core.triggers.retarget import count_computes

# A decreasing, non-uniform schedule of 10 steps.
T = (1.0, 0.92, 0.8, 0.66, 0.5, 0.36, 0.24, 0.14, 0.06, 0.0)


def x_of(t: float) -> torch.Tensor:
    """x(t) = a + b t + c sin(3t), one row of two features."""
    a, b, c = torch.tensor([1.0, 2.0]), torch.tensor([2.0, -1.0]), torch.tensor([0.5, 0.3])
    return (a + b * t + c * math.sin(3 * t)).double().reshape(1, 2)


def v_of(t: float) -> torch.Tensor:
    """An output that moves with x: v(t) = 2 x(t) + [1, -0.5] t."""
    return 2 * x_of(t) + torch.tensor([[1.0, -0.5]], dtype=torch.float64) * t


X = [x_of(t) for t in T]
V = [v_of(t) for t in T]
# step  t     x(t)              v(t)
#  0   1.00  [3.0706, 1.0423]  [7.1411, 1.5847]
#  1   0.92  [3.0262, 1.1917]  [6.9724, 1.9234]
#  2   0.80  [2.9377, 1.4026]  [6.6755, 2.4053]
#  3   0.66  [2.7787, 1.6152]  [6.2174, 2.9005]
#  4   0.50  [2.4987, 1.7992]  [5.4975, 3.3485]
#  5   0.36  [2.1610, 1.9046]  [4.6820, 3.6292]
#  6   0.24  [1.8097, 1.9578]  [3.8594, 3.7956]
#  7   0.14  [1.4839, 1.9823]  [3.1078, 3.8947]
#  8   0.06  [1.2095, 1.9937]  [2.4790, 3.9574]
#  9   0.00  [1.0000, 2.0000]  [2.0000, 4.0000]


def drive(trigger, *, inputs=None, outputs=None, known=True, schedule=T):
    """Mimic a site: forced compute while the row has no history, ask, verify forecasts (the
    forecast is the last computed output, reused), observe. Returns (pattern, metrics, verdicts)."""
    trigger.validate()
    state = trigger.new_state()
    last, pattern, metrics, verdicts = None, "", [], {}
    for step, t in enumerate(schedule):
        x = None if inputs is None else inputs[step]
        obs = Observation(step, t, tuple(schedule) if known else None,
                          None if last is None else step - last, x if trigger.signal else None)
        compute, metric = ask(trigger, state, obs, must_compute=last is None)
        if not compute and trigger.verifies:
            pred, true = outputs[last], outputs[step]
            verdicts[step] = trigger.verify(state, obs, float((pred - true).norm() / true.norm()))
            compute = not verdicts[step]
        out = outputs[step] if compute and outputs is not None else None
        trigger.observe(state, obs, compute, x, out)
        last = step if compute else last
        pattern += "C" if compute else "-"
        metrics.append(metric)
    return pattern, metrics, verdicts


# -- Interval --------------------------------------------------------------------------------------
def test_interval_warmup_period_cooldown():
    # warm-up computes steps 0,1; then every 3rd step after the last compute: 4 (1+3), 7 (4+3);
    # cool-down computes the last two steps 8, 9.
    pattern, metrics, _ = drive(Interval(3, warmup=2, cooldown=2))
    assert pattern == "CC--C--CCC"
    assert metrics == [None, 1.0, 1.0, 2.0, 3.0, 1.0, 2.0, 3.0, 1.0, 1.0]
    assert drive(Interval(3))[0] == "C--C--C--C"  # FORA/DeepCache: 0, 3, 6, 9
    assert drive(Interval(1))[0] == "C" * 10


def test_interval_cooldown_needs_schedule():
    with pytest.raises(ValueError, match=r"cooldown.*set_schedule\(timesteps\)"):
        drive(Interval(3, cooldown=1), known=False)
    assert drive(Interval(2), known=False)[0] == "C-C-C-C-C-"  # no cool-down: no schedule needed


# -- RelativeL1 (TeaCache) ------------------------------------------------------------------------
def test_relative_l1_accumulates_rescaled_change_vs_previous_step():
    # d_n = mean|x_n - x_{n-1}| / mean|x_{n-1}|, always against the PREVIOUS STEP (even skipped):
    #  n   mean|dx|  mean|x_{n-1}|  d_n     4d^2+d
    #  1   0.0969    2.0564        0.0471  0.0560
    #  2   0.1497    2.1090        0.0710  0.0911
    #  3   0.1858    2.1702        0.0856  0.1149
    #  4   0.2320    2.1970        0.1056  0.1502
    #  5   0.2216    2.1490        0.1031  0.1456
    #  6   0.2023    2.0328        0.0995  0.1391
    #  7   0.1752    1.8838        0.0930  0.1276
    #  8   0.1429    1.7331        0.0824  0.1096
    #  9   0.1079    1.6016        0.0674  0.0855
    # poly (4, 1, 0) = 4d^2 + d, threshold 0.2: acc 0.0560, 0.1471 (skip, skip), 0.2620 >= 0.2
    # compute @3; 0.1502 skip, 0.2958 compute @5; 0.1391, 0.2667 @7; 0.1096 skip; step 9 is the
    # last step: compute although acc = 0.1951 < 0.2.
    pattern, metrics, _ = drive(RelativeL1(0.2, coefficients=(4.0, 1.0, 0.0)), inputs=X)
    assert pattern == "C--C-C-C-C"
    hand = [0.0560, 0.1471, 0.2620, 0.1502, 0.2958, 0.1391, 0.2667, 0.1096, 0.1951]
    assert metrics[0] is None and metrics[1:] == pytest.approx(hand, abs=3e-4)
    # without the schedule the last-step rule cannot apply: 0.1951 < 0.2 skips
    assert drive(RelativeL1(0.2, coefficients=(4.0, 1.0, 0.0)), inputs=X, known=False)[0] == "C--C-C-C--"
    # coefficients left unset take the adapter's published polynomial, else stay the identity
    bound = RelativeL1(0.2).bind(SimpleNamespace(teacache_coefficients=(4.0, 1.0, 0.0)))
    assert bound.coefficients == (4.0, 1.0, 0.0) and drive(bound, inputs=X)[0] == "C--C-C-C-C"
    assert RelativeL1(0.11).bind(SimpleNamespace(teacache_coefficients=None)).coefficients is None
    # identity rescaling, threshold 0.11: 0.0471 skip; 0.1181 compute @2; 0.0856 skip;
    # 0.1912 @4; 0.1031 skip; 0.2026 @6; 0.0930 skip; 0.1754 @8; last step @9
    assert drive(RelativeL1(0.11), inputs=X)[0] == "C-C-C-C-CC"


def test_relative_l1_reads_a_fitted_polynomial_only_inside_its_input_range():
    # d_n (table above) runs 0.047 to 0.106. A polynomial that turns negative above 0.08,
    # 1 - 12.5 d: clamping d into a fit range of (0.04, 0.08) floors every term at poly(0.08) = 0
    # and the accumulator never reaches the threshold from the large changes
    free = drive(RelativeL1(0.3, coefficients=(-12.5, 1.0)), inputs=X)[1]
    clamped = drive(RelativeL1(0.3, coefficients=(-12.5, 1.0), input_range=(0.04, 0.08)), inputs=X)[1]
    assert min(m for m in free[1:]) < 0  # unclamped, the fit extrapolates below zero
    assert all(m >= 0 for m in clamped[1:])
    hand = [1 - 12.5 * min(max(d, 0.04), 0.08) for d in (0.0471, 0.0710, 0.0856)]
    assert clamped[1] == pytest.approx(hand[0], abs=3e-3)
    inside = drive(RelativeL1(0.2, coefficients=(4.0, 1.0, 0.0), input_range=(0.0, 1.0)), inputs=X)
    assert inside[0] == "C--C-C-C-C"  # changes inside the range: exactly the reference rule


# -- ProbeResidual (FBCache / DBCache) ------------------------------------------------------------
def test_probe_residual_compares_to_last_computed_step():
    # r_n = x_n; d = mean|r_n - r_ref| / mean|r_ref|, r_ref = residual of the LAST COMPUTED step.
    # threshold 0.18, warm-up 2:
    #  0 C (no ref)            1 C (warm-up; ref := r1 = [3.0262, 1.1917], mean 2.1090)
    #  2 d = mean[0.0885, 0.2109]/2.1090 = 0.0710 -    3 d = mean[0.2475, 0.4235]/2.1090 = 0.1591 -
    #  4 d = mean[0.5275, 0.6075]/2.1090 = 0.2691 C (ref := r4 = [2.4987, 1.7992], mean 2.14895)
    #  5 d = mean[0.3377, 0.1054]/2.1490 = 0.1031 -    6 d = mean[0.6890, 0.1586]/2.1490 = 0.1972 C
    #  (ref := r6, mean 1.88375)  7 d = 0.0930 -  8 d = 0.1688 -  9 d = mean[0.8097, 0.0422]/1.8838
    #  = 0.2261 C
    pattern, metrics, _ = drive(ProbeResidual(0.18, warmup=2), inputs=X)
    assert pattern == "CC--C-C--C"
    assert metrics[2:7] == pytest.approx([0.0710, 0.1591, 0.2691, 0.1031, 0.1972], abs=2e-4)
    # at most one consecutive cached step: 3 computes (run 1 reached) although d = 0.1591; then
    # 4 d = 0.1056 -, 5 C (run), 6 d = 0.0995 -, 7 C, 8 d = 0.0824 -, 9 C
    assert drive(ProbeResidual(0.18, warmup=2, max_continuous_cached=1), inputs=X)[0] == "CC-C-C-C-C"
    # no warm-up, at most two cached steps in the generation: 1 d = 0.0471 -, 2 d vs r0 = 0.1199 -,
    # 3 d vs r0 = 0.2103 C, then the budget of 2 is spent: compute every step after
    assert drive(ProbeResidual(0.18, max_cached_steps=2), inputs=X)[0] == "C--CCCCCCC"
    assert drive(ProbeResidual(0.0), inputs=X)[0] == "C" * 10  # threshold 0 disables caching


# -- MagnitudeRatio (MagCache) --------------------------------------------------------------------
G = (1.0, 1.1, 1.05, 0.98, 0.95, 0.9, 0.85, 0.8, 0.7, 0.6)  # a calibrated profile on T


def test_magnitude_ratio_accumulated_error():
    # retention 0.2 of 10 steps: steps 0, 1 compute. Then R *= g, E += |1 - R|, skip iff
    # E <= 0.12 and steps since compute <= 2:
    #  2 R=1.05 E=0.05 -   3 R=1.029 E=0.079 -   4 R=0.97755 E=0.10145 but 3 steps > 2: C
    #  5 R=0.9 E=0.1 -     6 R=0.765 E=0.335 C   7 E=0.2 C   8 E=0.3 C   9 E=0.4 C
    pattern, metrics, _ = drive(MagnitudeRatio(0.12, max_skip=2, retention=0.2, ratios=G, times=T))
    assert pattern == "CC--C-CCCC"
    assert metrics[2:7] == pytest.approx([0.05, 0.079, 0.10145, 0.1, 0.335], abs=1e-9)
    # the same ratios on a position grid (no times) read at step/(n-1): identical here
    assert drive(MagnitudeRatio(0.12, 2, 0.2, ratios=list(G)))[0] == "CC--C-CCCC"
    # a magnitude callable m(t): g = m(t)/m(t_prev)
    m = dict(zip(T, np.cumprod(G)))
    assert drive(MagnitudeRatio(0.12, 2, 0.2, ratios=lambda t: m[t]))[0] == "CC--C-CCCC"


def test_magnitude_profile_reads_other_step_counts_by_time():
    # log-magnitude linear in t: every schedule must get exactly exp(kappa * (t_prev - t))
    kappa = 0.8
    grid = [(1 - i / 27) ** 1.3 for i in range(28)]  # a 28-step calibration, non-uniform
    ratios = [1.0] + [math.exp(kappa * (a - b)) for a, b in zip(grid, grid[1:])]
    prof = MagnitudeProfile(ratios, grid)
    for n in (20, 50):
        sched = [(1 - j / (n - 1)) ** 2 for j in range(n)]
        got = [prof.ratio(a, b) for a, b in zip(sched, sched[1:])]
        assert got == pytest.approx([math.exp(kappa * (a - b)) for a, b in zip(sched, sched[1:])], rel=1e-12)
    assert prof.ratio(1.1, 1.0) == pytest.approx(math.exp(kappa * 0.1), rel=1e-12)  # extrapolated

    # FLUX's published 28-step curve: exact on its own grid, products of pairs at 14 steps
    flux = [FLUX_MAG_PROFILE.ratio(a, b) for a, b in zip(FLUX_MAG_TIMES, FLUX_MAG_TIMES[1:])]
    assert flux == pytest.approx(FLUX_MAG_RATIOS[1:], rel=1e-9)
    t14 = FLUX_MAG_TIMES[::2]
    pairs = [FLUX_MAG_RATIOS[i] * FLUX_MAG_RATIOS[i + 1] for i in range(1, 27, 2)]
    assert [FLUX_MAG_PROFILE.ratio(a, b) for a, b in zip(t14, t14[1:])] == pytest.approx(pairs, rel=1e-9)
    # 20 and 50 steps over the same time span: the run's ratios multiply to the same total decay
    # (1.4022), bigger steps get ratios farther from 1 and smaller steps closer (28 steps: the
    # largest |log g| is log 1.21094 = 0.1914; 20 steps: 0.2381; 50 steps: 0.1055)
    total = float(np.prod(FLUX_MAG_RATIOS[1:]))
    largest = {}
    for n in (20, 50):
        sched = np.interp(np.linspace(0, 27, n), np.arange(28), FLUX_MAG_TIMES)
        got = [FLUX_MAG_PROFILE.ratio(a, b) for a, b in zip(sched, sched[1:])]
        assert float(np.prod(got)) == pytest.approx(total, rel=1e-9)
        assert got[0] > 1.0 and got[-1] < 1.0  # early growth and late decay, as in the curve
        largest[n] = max(abs(math.log(r)) for r in got)
    assert largest[50] < math.log(FLUX_MAG_RATIOS[1]) < largest[20]
    fine = np.interp(np.linspace(0, 27, 50), np.arange(28), FLUX_MAG_TIMES)

    # through the trigger, at 50 steps and without a schedule (retention 0 needs none)
    _, metrics, _ = drive(MagnitudeRatio(1.0, 5, 0.0, ratios=FLUX_MAG_PROFILE), known=False, schedule=tuple(fine))
    assert metrics[1] == pytest.approx(abs(1 - FLUX_MAG_PROFILE.ratio(fine[0], fine[1])), rel=1e-12)


def test_count_computes_runs_the_triggers_own_rule_on_a_modelled_trajectory():
    # identity polynomial, a change of 0.1 per step, threshold 0.25: acc 0.1, 0.2, 0.3 -> compute at 3,
    # 6, and the last step 9 computes by rule
    changes = [0.0] + [0.1] * 9
    assert count_computes(RelativeL1(0.25), T, changes) == 4
    assert drive(RelativeL1(0.25), inputs=[torch.full((1, 2), 1.1 ** i, dtype=torch.float64) for i in range(10)])[0] \
        == "C--C--C--C"
    # MagCache reads only its ratios: the count is the driven pattern's
    trigger = MagnitudeRatio(0.1, 5, 0.0, ratios=FLUX_MAG_PROFILE)
    assert count_computes(trigger, FLUX_MAG_TIMES) == drive(trigger, schedule=FLUX_MAG_TIMES)[0].count("C")


@pytest.mark.parametrize("threshold", [0.03, 0.06, 0.12, 0.24])
def test_a_retargeted_magcache_threshold_keeps_the_compute_ratio_at_other_step_counts(threshold):
    def computes(n, **kwargs):
        grid = _flux_sigmas(n)
        trigger = MagnitudeRatio(threshold, 5, 0.1, FLUX_MAG_PROFILE, time_grid=FLUX_MAG_TIMES, **kwargs)
        return drive(trigger, schedule=grid)[0].count("C"), trigger.threshold_for(Observation(0, grid[0], grid, None))

    on_28, same = computes(28)
    assert same == threshold  # the calibration grid: the paper's rule with the threshold as given
    for n in (20, 50):
        # the calibration grid's cadence (round(n * c / 28)), or the target the threshold was searched for
        assert computes(n)[0] == round(n * on_28 / 28)
        assert computes(n, compute_ratio=1 / 3)[0] == round(n / 3)
    assert computes(50, retarget=False)[1] == threshold


def test_a_retargeted_teacache_threshold_follows_the_recorded_changes():
    # the signal changes by 0.08 per calibration step (10 steps); at 19 steps each step moves half as far
    grid = tuple(np.linspace(1.0, 0.0, 10))
    trigger = RelativeL1(0.2, time_grid=grid, input_changes=[0.0] + [0.08] * 9, compute_ratio=0.4)
    assert trigger.threshold_for(Observation(0, 1.0, grid, None)) == 0.2
    fine = tuple(np.linspace(1.0, 0.0, 19))
    retargeted = trigger.threshold_for(Observation(0, 1.0, fine, None))
    assert trigger.signal_changes(fine) == [pytest.approx([0.0] + [0.04] * 18)]  # one recorded trajectory
    inputs = [torch.full((1, 2), 1.04 ** i, dtype=torch.float64) for i in range(19)]
    assert drive(trigger, inputs=inputs, schedule=fine)[0].count("C") == round(19 * 0.4)
    assert retargeted != 0.2
    # without recorded changes there is nothing to model the run with: the threshold stays
    assert RelativeL1(0.2, time_grid=grid, compute_ratio=0.4).threshold_for(Observation(0, 1.0, fine, None)) == 0.2


def test_a_teacache_step_over_several_calibration_steps_reads_each_at_its_recorded_change():
    # calibration at 5 points with a large first change: 0.4, then 0.1 per step; polynomial x^2.
    # A 3-point run's first step spans calibration steps 1 and 2 (f = 1, 1; expected change 0.5).
    # A live change of 0.5 is shared as 0.4 and 0.1, read as (0.4^2 + 0.1^2) / 2 = 0.085; reading
    # it evenly per calibration step (0.5 / 2 = 0.25) would give 0.0625
    cal = (1.0, 0.75, 0.5, 0.25, 0.0)
    trigger = RelativeL1(10.0, coefficients=(1.0, 0.0, 0.0), time_grid=cal, input_changes=[0.0, 0.4, 0.1, 0.1, 0.1])
    inputs = [torch.full((1, 2), v, dtype=torch.float64) for v in (1.0, 1.5, 1.5 * 1.2)]
    metrics = drive(trigger, inputs=inputs, schedule=(1.0, 0.5, 0.0))[1]
    assert metrics[1] == pytest.approx(0.085, rel=1e-7)
    # second step: expected 0.2, live 0.2: (0.1^2 + 0.1^2) / 2 = 0.01, accumulated
    assert metrics[2] == pytest.approx(0.085 + 0.01, rel=1e-7)
    assert trigger.signal_changes((1.0, 0.5, 0.0)) == [pytest.approx([0.0, 0.5, 0.2])]
    # on the calibration grid every step reads its own change: the reference rule
    on_grid = [torch.full((1, 2), 1.1 ** i, dtype=torch.float64) for i in range(5)]
    metrics = drive(trigger, inputs=on_grid, schedule=cal)[1]
    assert metrics[1:] == pytest.approx([0.1 ** 2 * k for k in range(1, 5)], rel=1e-6)


def test_two_step_changes_model_how_a_steps_change_grows_with_its_length():
    # 0.1 per calibration step, 0.16 over two (s = 0.16 / 0.2 = 0.8): a floor b = 0.04 every step pays
    # and a = 0.06 per calibration step. A step of 1.5 calibration steps changes b + 1.5 a = 0.13
    # (k = 1 + 2 * 0.2 * (1 / 1.5 - 1) = 0.8667 of the linear 0.15); one of 0.5 changes 0.07 (k = 1.4);
    # one of 2.5 is held at two steps' k = s = 0.8: 0.25 * 0.8 = 0.2
    cal = tuple(np.linspace(1.0, 0.0, 11))
    kwargs = dict(time_grid=cal, input_changes=[0.0] + [0.1] * 10, two_step_changes=[0.0, 0.0] + [0.16] * 9)
    trigger = RelativeL1(10.0, **kwargs)
    trigger.validate()
    assert trigger.signal_changes((1.0, 0.85, 0.7)) == [pytest.approx([0.0, 0.13, 0.13])]
    assert trigger.signal_changes((1.0, 0.95)) == [pytest.approx([0.0, 0.07])]
    assert trigger.signal_changes((1.0, 0.75)) == [pytest.approx([0.0, 0.2])]
    assert trigger.signal_changes(cal[:3]) == [pytest.approx([0.0, 0.1, 0.1])]  # the calibration grid
    # a live change equal to the modelled one reads as the calibration step's own change, 0.1
    inputs = [torch.full((1, 2), 1.13 ** i, dtype=torch.float64) for i in range(3)]
    assert drive(trigger, inputs=inputs, schedule=(1.0, 0.85, 0.7))[1][1:] == pytest.approx([0.1, 0.2], rel=1e-6)
    with pytest.raises(ValueError, match="two_step_changes"):
        RelativeL1(0.2, time_grid=cal, two_step_changes=[0.0] * 11).validate()


def test_magnitude_ratio_needs_ratios_and_schedule():
    MagnitudeRatio().validate()  # unset ratios are legal until bound to a model
    with pytest.raises(ValueError, match=r"ratios.*calibrate.*ratios="):
        MagnitudeRatio().bind(SimpleNamespace(magcache_ratios=None))
    with pytest.raises(ValueError, match=r"ratios.*calibrate.*ratios="):
        drive(MagnitudeRatio(retention=0.0), known=False)
    bound = MagnitudeRatio(0.12, 2, 0.2).bind(SimpleNamespace(magcache_ratios=MagnitudeProfile(G, T)))
    assert drive(bound)[0] == "CC--C-CCCC"
    with pytest.raises(ValueError, match=r"retention.*set_schedule"):
        drive(MagnitudeRatio(ratios=FLUX_MAG_PROFILE), known=False)
    with pytest.raises(ValueError, match="times"):
        MagnitudeProfile([1.0, 1.1, 0.9], [1.0, 0.5])
    with pytest.raises(ValueError, match="monotonic"):
        MagnitudeProfile([1.0, 1.1, 0.9], [1.0, 0.5, 0.7])
    with pytest.raises(ValueError, match="ratios"):
        MagnitudeProfile([1.0, 0.0, 0.9])


# -- TransformRate (EasyCache) --------------------------------------------------------------------
def test_transform_rate_accumulates_predicted_change():
    # warm-up 3 computes 0, 1, 2. After the computes at 1 and 2:
    #   k = mean|v2 - v1| / mean|x2 - x1| = mean[0.2969, 0.4819] / mean[0.0885, 0.2109]
    #     = 0.3894 / 0.1497 = 2.6012,  v_c = v2 (mean 4.5404)
    #  3 eps = 2.6012 * mean|x3 - x2| / 4.5404 = 2.6012 * 0.1858 / 4.5404 = 0.1064  < 0.15  -
    #  4 eps = 2.6012 * 0.2320 / 4.5404 = 0.1329, E = 0.2394 >= 0.15  C
    #    k = mean|v4 - v2| / mean|x4 - x2| = 1.0597 / 0.4175 = 2.5385, v_c = v4 (mean 4.4230)
    #  5 eps = 2.5385 * 0.2216 / 4.4230 = 0.1272  -
    #  6 E = 0.1272 + 2.5385 * 0.2023 / 4.4230 = 0.2432  C   k = 2.4601, v_c = v6 (mean 3.8275)
    #  7 eps = 2.4601 * 0.1752 / 3.8275 = 0.1126  -
    #  8 E = 0.1126 + 2.4601 * 0.1429 / 3.8275 = 0.2044  C   k = mean|v8 - v6| / mean|x8 - x6|
    #    = mean[1.3804, 0.1618] / mean[0.6002, 0.0359] = 0.7711 / 0.3180 = 2.4245, v_c = v8
    #  9 eps = 2.4245 * 0.1079 / 3.2182 = 0.0813  -, but it is the last step: C
    trig = TransformRate(0.15, warmup=3)
    pattern, metrics, _ = drive(trig, inputs=X, outputs=V)
    assert pattern == "CCC-C-C-CC"
    assert metrics[3:10] == pytest.approx([0.1064, 0.2394, 0.1272, 0.2432, 0.1126, 0.2044, 0.0813], abs=3e-4)
    pattern, _, _ = drive(trig, inputs=X, outputs=V, known=False)
    assert pattern == "CCC-C-C-C-"  # no schedule: no last-step rule


def test_transform_rate_rate_is_between_last_two_computes():
    trig = TransformRate(0.15, warmup=3)
    state = trig.new_state()
    last = None
    for step, t in enumerate(T):
        obs = Observation(step, t, None, None if last is None else step - last, X[step])
        compute, _ = ask(trig, state, obs, must_compute=last is None)
        trig.observe(state, obs, compute, X[step], V[step] if compute else None)
        last = step if compute else last
    assert state["k"] == pytest.approx(2.4245, abs=2e-4)  # from the computes at 6 and 8


# -- Foresight ------------------------------------------------------------------------------------
def test_foresight_thresholds_from_warmup():
    # outputs o = x. Warm-up W=4 computes 0..3 with MSE(o1,o0)=0.012142, MSE(o2,o1)=0.026157,
    # MSE(o3,o2)=0.035240, so lambda = 0.035240 + 0.1*0.026157 + 0.01*0.012142 = 0.037977 and
    # gamma*lambda = 1.55 * 0.037977 = 0.058864. recalculate=2: steps 4, 6, 8 always compute.
    #  4 C (delta := MSE(o4,o3) = 0.056123)   5 0.056123 <= 0.058864: reuse -
    #  6 C (delta := MSE(o6,o4) = 0.249970)   7 0.249970 > 0.058864: C (delta := MSE(o7,o6) = 0.053377)
    #  8 C (delta := MSE(o8,o7) = 0.037703)   9 0.037703 <= 0.058864: reuse -
    # (the reference code's lambda, the last MSE only, would compute at 5: 1.55*0.035240 = 0.054622)
    trig = Foresight(gamma=1.55, warmup=4, recalculate=2)
    pattern, metrics, _ = drive(trig, outputs=X)
    assert pattern == "CCCCC-CCC-"
    assert metrics[5] == pytest.approx(0.056123, abs=1e-6)
    assert metrics[7] == pytest.approx(0.249970, abs=1e-6)
    state = trig.new_state()
    for step in range(4):
        trig.observe(state, Observation(step, T[step], T, None, None), True, None, X[step])
    assert state["lam"] == pytest.approx(0.037977, abs=1e-6)


# -- Speculative (SpeCa) --------------------------------------------------------------------------
def test_speculative_forecast_then_verify():
    # tau_t = max(0.5 * 0.1**(step/10), 0.05); the forecast is the last computed output, reused;
    # e = ||o_c - o_n|| / ||o_n||. Warm-up 3 computes 0, 1, 2; at most 2 forecasts in a row.
    #  3 e(o2 vs o3) = 0.0826 <= tau 0.2506: accept    4 e(o2 vs o4) = 0.1921 <= 0.1991: accept
    #  5 two forecasts already: C without verifying
    #  6 e(o5 vs o6) = 0.1333 > 0.1256: reject, C       7 e = 0.1320 > 0.0998: reject
    #  8 e = 0.1178 > 0.0792: reject                    9 e = 0.0937 > 0.0630: reject
    trig = Speculative(threshold=0.5, max_forecast=2, decay=0.1, min_threshold=0.05, warmup=3)
    pattern, _, verdicts = drive(trig, outputs=X)
    assert pattern == "CCC--CCCCC"
    assert verdicts == {3: True, 4: True, 6: False, 7: False, 8: False, 9: False}
    # a constant threshold (decay 1) accepts what the decaying one rejected late in sampling
    assert drive(Speculative(0.5, 2, decay=1.0, warmup=3), outputs=X)[0] == "CCC--C--C-"


def test_speculative_verify_accepts_good_rejects_bad():
    trig = Speculative(threshold=0.1, max_forecast=5, decay=0.01, min_threshold=0.01)
    state = trig.new_state()
    obs = Observation(step=5, t=T[5], timesteps=T, since_compute=2)
    tau = 0.1 * 0.01**0.5  # = 0.01, at the floor exactly
    assert trig.tau(obs) == pytest.approx(tau)
    assert trig.verify(state, obs, 0.005) is True
    assert trig.verify(state, obs, 0.2) is False
    assert Speculative(min_forecast=2).verify(state, obs, 0.2) is True  # trusted, unverified
    with pytest.raises(ValueError, match="set_schedule"):
        trig.verify(state, Observation(5, T[5], None, 2), 0.005)


def test_zero_threshold_never_skips():
    flat = [torch.ones(1, 2, dtype=torch.float64)] * len(T)  # nothing changes: every metric is 0
    ones = (1.0,) * len(T)
    assert drive(RelativeL1(0.0, coefficients=(1.0, -0.5)), inputs=flat)[0] == "C" * 10
    assert drive(MagnitudeRatio(0.0, 5, 0.0, ratios=ones, times=T))[0] == "C" * 10
    assert drive(TransformRate(0.0, warmup=0), inputs=flat, outputs=flat)[0] == "C" * 10
    assert drive(Foresight(0.0, warmup=2), outputs=flat)[0] == "C" * 10
    assert drive(Speculative(0.0, warmup=0), outputs=flat)[0] == "C" * 10


# -- validation -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "trigger, knob",
    [
        (Interval(0), "interval"),
        (Interval(2.5), "interval"),
        (Interval(3, warmup=-1), "warmup"),
        (Interval(3, cooldown=-2), "cooldown"),
        (RelativeL1(-0.1), "threshold"),
        (RelativeL1(0.4, coefficients=(float("nan"), 1.0)), "coefficients"),
        (RelativeL1(0.4, input_range=(0.2, 0.1)), "input_range"),
        (RelativeL1(0.4, time_grid=T, input_changes=(0.1,) * 3), "input_changes"),
        (RelativeL1(0.4, compute_ratio=1.5), "compute_ratio"),
        (MagnitudeRatio(ratios=G, times=T, compute_ratio=0.0), "compute_ratio"),
        (ProbeResidual(-0.01), "threshold"),
        (ProbeResidual(0.1, warmup=-1), "warmup"),
        (ProbeResidual(0.1, max_cached_steps=-2), "max_cached_steps"),
        (ProbeResidual(0.1, max_continuous_cached=-3), "max_continuous_cached"),
        (MagnitudeRatio(-0.1, ratios=G, times=T), "threshold"),
        (MagnitudeRatio(max_skip=-1, ratios=G, times=T), "max_skip"),
        (MagnitudeRatio(retention=1.5, ratios=G, times=T), "retention"),
        (MagnitudeRatio(retention=-0.1, ratios=G, times=T), "retention"),
        (TransformRate(threshold=-0.05), "threshold"),
        (TransformRate(warmup=-1), "warmup"),
        (Foresight(gamma=-1.0), "gamma"),
        (Foresight(warmup=1), "warmup"),
        (Foresight(recalculate=0), "recalculate"),
        (Speculative(threshold=-0.1), "threshold"),
        (Speculative(max_forecast=0), "max_forecast"),
        (Speculative(decay=0.0), "decay"),
        (Speculative(decay=1.5), "decay"),
        (Speculative(min_threshold=-1.0), "min_threshold"),
        (Speculative(min_forecast=-1), "min_forecast"),
    ],
)
def test_validate_names_field_and_fix(trigger, knob):
    with pytest.raises(ValueError, match=rf"\.{knob}=.*invalid: .*; \w+"):
        trigger.validate()
