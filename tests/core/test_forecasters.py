"""Forecasters: exactness on polynomials of their order, hand-computed values, dtype and config checks."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from forecache.core.forecasters import (
    AdamsBashforth,
    FoCa,
    Forecaster,
    FrequencySplit,
    Hermite,
    Reuse,
    Taylor,
    derivatives,
    lagrange_weights,
    least_squares_weights,
    taylor_weights,
)
from forecache.core.forecasters.hermite import hermite

SHAPE = (2, 5, 3)


def schedule(n: int, seed: int) -> list[float]:
    """A non-uniform decreasing schedule 1.0 -> 0.0, like a diffusion sampler's timesteps."""
    g = torch.Generator().manual_seed(seed)
    gaps = torch.rand(n - 1, generator=g, dtype=torch.float64) + 0.3
    return (1.0 - torch.cat([torch.zeros(1, dtype=torch.float64), gaps.cumsum(0) / gaps.sum()])).tolist()


def poly(degree: int, seed: int, dtype=torch.float64):
    """F(t) = sum_p a_p t^p with random tensor-valued coefficients a_p."""
    g = torch.Generator().manual_seed(seed)
    coefs = [torch.randn(SHAPE, generator=g, dtype=torch.float64) for _ in range(degree + 1)]
    return lambda t: sum(a * t**p for p, a in enumerate(coefs)).to(dtype)


def run(forecaster: Forecaster, f, times: list[float], n_hist: int, n_ahead: int = 3):
    """Forecast the ``n_ahead`` steps after the first ``n_hist`` points, one gap, one shared state.

    Returns a list of (forecast, exact) pairs.
    """
    hist_t, targets = times[:n_hist], times[n_hist : n_hist + n_ahead]
    hist_v = [f(t) for t in hist_t]
    state: dict = {}
    return [(forecaster.predict(hist_t, hist_v, t, state), f(t)) for t in targets]


def max_err(pairs) -> float:
    return max((p - e).abs().max().item() for p, e in pairs)


# --- exactness on polynomials ---------------------------------------------------------------


@pytest.mark.parametrize("m", [0, 1, 2, 3])
@pytest.mark.parametrize("make", [lambda m: Taylor(m), lambda m: AdamsBashforth(m + 1)], ids=["taylor", "ab"])
def test_exact_on_polynomials_of_its_order_and_not_above(make, m):
    times = schedule(12, seed=m)
    forecaster = make(m)
    for degree in range(m + 1):
        assert max_err(run(forecaster, poly(degree, seed=10 + degree), times, m + 1)) < 1e-9
    assert max_err(run(forecaster, poly(m + 1, seed=99), times, m + 1)) > 1e-4


@pytest.mark.parametrize("m", [1, 2, 3])
def test_foca_exact_on_lines_for_any_derivative_order_over_a_chain(m):
    times = schedule(10, seed=3)
    foca = FoCa(derivative_order=m)
    assert max_err(run(foca, poly(1, seed=4), times, foca.max_history, n_ahead=4)) < 1e-9
    assert max_err(run(foca, poly(2, seed=5), times, foca.max_history, n_ahead=4)) > 1e-4


def test_exact_in_float32_too():
    times = schedule(8, seed=1)
    pairs = run(Taylor(2), poly(2, seed=2, dtype=torch.float32), times, 3)
    assert all(p.dtype == torch.float32 for p, _ in pairs)
    assert max_err(pairs) < 1e-4


# --- agreement between forecasters ------------------------------------------------------------


@pytest.mark.parametrize("m", [0, 1, 2, 3])
def test_taylor_m_equals_adams_bashforth_m_plus_1_on_any_data(m):
    g = torch.Generator().manual_seed(m)
    times = schedule(6, seed=7)
    values = [torch.randn(SHAPE, generator=g, dtype=torch.float64) for _ in times[:4]]
    for k in range(1, 5):  # full history and the short history of the first steps
        for t in times[4:]:
            a = Taylor(m).predict(times[:k], values[:k], t, {})
            b = AdamsBashforth(m + 1).predict(times[:k], values[:k], t, {})
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_order_1_is_taylorseer_on_a_uniform_grid():
    # TaylorSeer: F + (Δ F / N) * k with the difference over the last interval N (in steps).
    f0, f1 = torch.tensor([1.0, -2.0]), torch.tensor([1.5, -1.0])
    times = [0.8, 0.6]  # interval N = 2 steps of 0.1
    for k in (1, 2, 3):
        expected = f1 + (f1 - f0) / 2 * k
        torch.testing.assert_close(Taylor(1).predict(times, [f0, f1], 0.6 - 0.1 * k, {}), expected)


def test_adams_bashforth_weights_are_binomial_one_step_ahead_on_a_uniform_grid():
    assert lagrange_weights([0.4, 0.3], 0.2) == pytest.approx([-1.0, 2.0])
    assert lagrange_weights([0.4, 0.3, 0.2], 0.1) == pytest.approx([1.0, -3.0, 3.0])
    assert lagrange_weights([0.4, 0.3, 0.2, 0.1], 0.0) == pytest.approx([-1.0, 4.0, -6.0, 4.0])


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_least_squares_adams_bashforth_is_exact_on_polynomials_of_its_order(order):
    times = schedule(12, seed=order)
    f = poly(order - 1, seed=10 + order)
    assert max_err(run(AdamsBashforth(order, points=order + 3), f, times, n_hist=order + 5)) < 1e-8
    # and is the plain interpolating forecast when the history holds no more than `order` points
    hist = times[:order]
    for t in times[order:order + 2]:
        a = AdamsBashforth(order, points=order + 3).predict(hist, [f(x) for x in hist], t, {})
        b = AdamsBashforth(order).predict(hist, [f(x) for x in hist], t, {})
        torch.testing.assert_close(a, b)


def test_least_squares_weights_interpolate_when_the_points_just_suffice():
    times = [0.9, 0.75, 0.5, 0.4]
    assert least_squares_weights(times, 0.2, 3) == pytest.approx(lagrange_weights(times, 0.2))
    # a constant fitted over n points is their mean
    assert least_squares_weights(times, 0.2, 0) == pytest.approx([0.25] * 4)
    with pytest.raises(ValueError, match="degree=4"):
        least_squares_weights(times, 0.2, 4)


def test_least_squares_damps_an_alternation_that_interpolation_extrapolates():
    # a line plus a period-2 alternation, computed every 3 steps (so the computed points alternate
    # in phase), as a self-conditioned model's late outputs do; forecast the next two steps
    def f(n: int) -> torch.Tensor:
        return torch.tensor(0.1 * n + 0.05 * (-1) ** n, dtype=torch.float64)

    computed = list(range(0, 30, 3))
    values = [f(n) for n in computed]
    for n in (30, 31):
        trend = 0.1 * n
        interpolated = AdamsBashforth(2, basis="index").predict(computed, values, n, {}).item()
        fitted = AdamsBashforth(2, basis="index", points=6).predict(computed[-6:], values[-6:], n, {}).item()
        # 2 F_n - F_(n-3) and its extension carry 2 to 3 times the alternation; the fit less than it
        assert abs(interpolated - trend) >= 0.1 - 1e-12
        assert abs(fitted - trend) < 0.05


def test_derivatives_are_exact_for_a_cubic_on_a_non_uniform_grid():
    times = [1.0, 0.7, 0.55, 0.2]
    values = [torch.tensor(t**3 - 2 * t, dtype=torch.float64) for t in times]
    d = derivatives(times, values, 3)
    t = 0.2
    expected = [t**3 - 2 * t, 3 * t**2 - 2, 6 * t, 6.0]
    assert [x.item() for x in d] == pytest.approx(expected, abs=1e-9)
    assert len(derivatives(times[:2], values[:2], 3)) == 2  # highest order the history supports


def test_weights_reject_repeated_times():
    with pytest.raises(ValueError, match="distinct"):
        taylor_weights([0.5, 0.5])
    with pytest.raises(ValueError, match="distinct"):
        lagrange_weights([0.5, 0.5], 0.1)


# --- Hermite --------------------------------------------------------------------------------


def test_physicists_hermite_polynomials():
    x = 0.7
    assert [hermite(n, x) for n in range(4)] == pytest.approx([1, 2 * x, 4 * x**2 - 2, 8 * x**3 - 12 * x])


def test_hermite_hand_computed_two_step_forecast():
    # F = t^2 at t = 1.0, 0.8, 0.6: F = 0.36, F' = 1.2, F'' = 2 at 0.6; the first forecast
    # (t = 0.5) fixes the step s = -0.1, so x = 1 then 2; σ = 0.5, H_1(y) = 2y, H_2(y) = 4y² - 2.
    times, values = [1.0, 0.8, 0.6], [torch.tensor(t * t) for t in (1.0, 0.8, 0.6)]
    h, state = Hermite(order=2, sigma=0.5), {}
    # x=1: 0.36 + 1.2(-0.1)(0.5)H_1(0.5) + (2/2)(0.01)(0.25)H_2(0.5) = 0.36 - 0.06 - 0.0025
    assert h.predict(times, values, 0.5, state).item() == pytest.approx(0.2975, abs=1e-6)
    # x=2: 0.36 + 1.2(-0.1)(0.5)H_1(1) + (0.01)(0.25)H_2(1) = 0.36 - 0.12 + 0.005
    assert h.predict(times, values, 0.4, state).item() == pytest.approx(0.245, abs=1e-6)
    # Without the state of the gap every call is "one step": x = 1 at t = 0.4 with s = -0.2.
    assert h.predict(times, values, 0.4, {}).item() == pytest.approx(0.36 - 0.12 - 0.01, abs=1e-6)


def test_hermite_at_inverse_sqrt2_is_exact_on_lines_and_equals_taylor_1():
    times = schedule(8, seed=11)
    herm = Hermite(order=1, sigma=2**-0.5)
    assert max_err(run(herm, poly(1, seed=12), times, 2)) < 1e-9
    g = torch.Generator().manual_seed(0)
    values = [torch.randn(SHAPE, generator=g, dtype=torch.float64) for _ in range(2)]
    state_h: dict = {}
    for t in times[2:5]:
        torch.testing.assert_close(
            herm.predict(times[:2], values, t, state_h), Taylor(1).predict(times[:2], values, t, {})
        )


def test_hermite_contraction_damps_the_slope_and_the_curvature():
    times = [0.9, 0.8]
    line = [torch.tensor(3.0 * t) for t in times]
    # σ = 0.5: σ H_1(σ x) = 2σ² x = x / 2, so half the linear step.
    assert Hermite(order=1, sigma=0.5).predict(times, line, 0.7, {}).item() == pytest.approx(2.4 - 0.15)
    # σ = 1/√2, order 2: the He_2(x) = x² - 1 basis leaves -F'' s² / 2 on a quadratic.
    times3 = [1.0, 0.8, 0.6]
    quad = [torch.tensor(t * t, dtype=torch.float64) for t in times3]
    got = Hermite(order=2, sigma=2**-0.5).predict(times3, quad, 0.5, {}).item()
    assert got == pytest.approx(0.25 - 2 * 0.01 / 2, abs=1e-12)


# --- FoCa -----------------------------------------------------------------------------------


def test_foca_hand_computed_chain():
    # F = t^2 at 1.0, 0.8, 0.6, derivative_order=2 (slope of the quadratic through the chain).
    times, values = [1.0, 0.8, 0.6], [torch.tensor(t * t, dtype=torch.float64) for t in (1.0, 0.8, 0.6)]
    foca, state = FoCa(derivative_order=2), {}
    # Step to 0.5: h=-0.1, H=-0.2, ω=0.5; F'=1.2; BDF2: 1.125*0.36 - 0.125*0.64 - 0.075*1.2 = 0.235;
    # slope to forecast (0.235-0.36)/-0.1 = 1.25; Heun: 0.36 - 0.05*(1.2 + 1.25) = 0.2375.
    assert foca.predict(times, values, 0.5, state).item() == pytest.approx(0.2375, abs=1e-12)
    # Step to 0.4 from the chain (0.8, 0.64), (0.6, 0.36), (0.5, 0.2375): F' = 1.225 - 0.1*0.175/0.3;
    # ω=1: BDF2 = 4/3*0.2375 - 1/3*0.36 + 2/3*(-0.1)*F'; Heun with the slope to it.
    d = 1.225 - 0.1 * 0.175 / 0.3
    bdf2 = 4 / 3 * 0.2375 - 0.36 / 3 - 0.2 / 3 * d
    heun = 0.2375 - 0.05 * (d + (bdf2 - 0.2375) / -0.1)
    assert foca.predict(times, values, 0.4, state).item() == pytest.approx(heun, abs=1e-12)
    assert heun == pytest.approx(0.1198611, abs=1e-7)


def test_foca_with_first_order_differences_is_linear_extrapolation():
    g = torch.Generator().manual_seed(1)
    times = schedule(8, seed=2)
    values = [torch.randn(SHAPE, generator=g, dtype=torch.float64) for _ in range(2)]
    state: dict = {}
    for t in times[2:6]:
        torch.testing.assert_close(
            FoCa().predict(times[:2], values, t, state), Taylor(1).predict(times[:2], values, t, {})
        )


def test_foca_restarts_its_chain_when_the_history_changes():
    f = poly(2, seed=6)
    times = schedule(8, seed=6)
    foca, state = FoCa(derivative_order=2), {}
    foca.predict(times[:3], [f(t) for t in times[:3]], times[3], state)
    fresh = foca.predict(times[1:4], [f(t) for t in times[1:4]], times[4], {})
    reused = foca.predict(times[1:4], [f(t) for t in times[1:4]], times[4], state)
    torch.testing.assert_close(reused, fresh)


# --- FrequencySplit -------------------------------------------------------------------------

SPLITS = [
    FrequencySplit(),
    FrequencySplit(transform="dct"),
    FrequencySplit(grid=(8, 8)),
    FrequencySplit(grid=(4, 16), transform="fft", cutoff=0.3),
]


@pytest.mark.parametrize("split", SPLITS, ids=["fft1d", "dct1d", "dct2d", "fft2d"])
def test_frequency_split_is_lossless_and_orthogonal(split):
    x = torch.randn(2, 64, 8, generator=torch.Generator().manual_seed(0))
    low, high = split.split(x)
    torch.testing.assert_close(low + high, x, rtol=0, atol=1e-5)
    assert low.abs().max() > 1e-3 and high.abs().max() > 1e-3
    assert abs((low * high).sum().item()) < 1e-3 * (x * x).sum().item()  # a projection, not a guess


@pytest.mark.parametrize("split", SPLITS, ids=["fft1d", "dct1d", "dct2d", "fft2d"])
def test_frequency_split_is_exact_when_both_bands_are(split):
    split = dataclasses.replace(split, low=Taylor(2), high=Taylor(2))
    g = torch.Generator().manual_seed(3)
    coefs = [torch.randn(1, 64, 4, generator=g, dtype=torch.float64) for _ in range(3)]
    f = lambda t: coefs[0] + coefs[1] * t + coefs[2] * t * t
    times = schedule(7, seed=3)
    assert max_err(run(split, f, times, 3)) < 1e-9
    default_bands = dataclasses.replace(split, low=Reuse(), high=Hermite(order=2, sigma=0.71))
    assert max_err(run(default_bands, f, times, 3)) > 1e-4


def test_frequency_bands_separate_slow_and_fast_token_patterns():
    s = torch.arange(64, dtype=torch.float64)
    slow = torch.cos(2 * math.pi * 1 * s / 64)  # 1/64 cycles per token, under 0.1 * 0.5
    fast = torch.cos(2 * math.pi * 20 * s / 64)
    low, high = FrequencySplit().split((slow + fast).reshape(64, 1))
    torch.testing.assert_close(low.flatten(), slow)
    torch.testing.assert_close(high.flatten(), fast)


def test_low_band_reused_behaves_as_reuse_on_a_pure_low_frequency_signal():
    times = schedule(6, seed=4)
    base = torch.randn(1, 1, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    f = lambda t: (1 + t + 3 * t * t) * base.expand(1, 64, 8)
    got = run(FrequencySplit(), f, times, 3)
    want = run(Reuse(), f, times, 3)
    for (a, _), (b, _) in zip(got, want):
        torch.testing.assert_close(a, b)


def test_static_low_band_plus_moving_high_band_is_caught_by_the_split_not_by_reuse():
    s = torch.arange(64, dtype=torch.float64).reshape(1, 64, 1)
    f = lambda t: 2.0 + (0.5 + 3 * t) * torch.cos(2 * math.pi * 20 * s / 64)
    times = schedule(6, seed=5)
    assert max_err(run(FrequencySplit(low=Reuse(), high=Taylor(1)), f, times, 2)) < 1e-9
    assert max_err(run(Reuse(), f, times, 2)) > 1e-2


def test_frequency_split_token_axis_and_grid_checks():
    x = torch.randn(4, 16)
    torch.testing.assert_close(
        FrequencySplit(dim=0).split(x)[0], FrequencySplit(dim=-1).split(x.T.contiguous())[0].T
    )
    with pytest.raises(ValueError, match="grid"):
        FrequencySplit(grid=(3, 3)).split(torch.randn(1, 16, 2))


def test_frequency_split_binds_its_band_forecasters():
    class Unit(Reuse):
        def bind(self, adapter):
            return Taylor(adapter)

    split = FrequencySplit(low=Unit(), high=Reuse())
    bound = split.bind(1)
    assert bound.low == Taylor(1) and bound.high == Reuse() and bound.cutoff == split.cutoff
    assert FrequencySplit().bind(object()) == FrequencySplit()


def test_frequency_split_describe_nests_the_band_forecasters():
    d = FrequencySplit(grid=(8, 8)).describe()
    assert d["low"] == {"type": "Reuse"}
    assert d["high"] == {"type": "Hermite", "order": 2, "sigma": 0.71}
    assert d["transform"] == "dct" and d["cutoff"] == 0.1 and d["grid"] == [8, 8]


# --- dtype, shape, history, validation ------------------------------------------------------

ALL = [
    Reuse(),
    Taylor(2),
    Hermite(),
    AdamsBashforth(3),
    FoCa(),
    FoCa(2),
    FrequencySplit(),
    FrequencySplit(grid=(4, 4)),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("forecaster", ALL, ids=lambda f: repr(f))
def test_output_keeps_dtype_and_shape_and_inputs_are_untouched(forecaster, dtype):
    times = [1.0, 0.9, 0.75, 0.6]
    values = [torch.randn(1, 16, 4).to(dtype) for _ in times]
    before = [v.clone() for v in values]
    n = forecaster.max_history
    out = forecaster.predict(times[-n:], values[-n:], 0.5, {})
    assert out.dtype == dtype and out.shape == values[-1].shape
    assert torch.isfinite(out.float()).all()
    assert all(torch.equal(a, b) for a, b in zip(values, before))


def test_reuse_returns_a_copy():
    v = torch.ones(3)
    out = Reuse().predict([1.0], [v], 0.5, {})
    out.add_(1)
    assert torch.equal(v, torch.ones(3))


@pytest.mark.parametrize(
    ("forecaster", "lo", "hi"),
    [
        (Reuse(), 1, 1),
        (Taylor(0), 1, 1),
        (Taylor(2), 1, 3),
        (Hermite(order=2), 1, 3),
        (AdamsBashforth(3), 1, 3),
        (AdamsBashforth(3, points=7), 1, 7),
        (FoCa(), 2, 2),
        (FoCa(derivative_order=3), 2, 4),
        (FrequencySplit(), 1, 3),
        (FrequencySplit(low=FoCa(), high=Reuse()), 2, 2),
    ],
)
def test_history_bounds(forecaster, lo, hi):
    assert (forecaster.min_history, forecaster.max_history) == (lo, hi)


def test_short_history_uses_the_highest_order_it_supports():
    times, values = [0.9, 0.8], [torch.tensor(1.0), torch.tensor(2.0)]
    assert Taylor(3).predict(times, values, 0.7, {}).item() == pytest.approx(3.0)
    assert AdamsBashforth(4).predict(times, values, 0.7, {}).item() == pytest.approx(3.0)
    assert Taylor(3).predict(times[1:], values[1:], 0.7, {}).item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="FoCa needs 2"):
        FoCa().predict(times[1:], values[1:], 0.7, {})


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: Taylor(-1), "Taylor.order"),
        (lambda: Taylor(1.5), "Taylor.order"),
        (lambda: Taylor(True), "Taylor.order"),
        (lambda: Hermite(order=-1), "Hermite.order"),
        (lambda: Hermite(sigma=0.0), "Hermite.sigma"),
        (lambda: Hermite(sigma=-0.5), "Hermite.sigma"),
        (lambda: Hermite(sigma=float("nan")), "Hermite.sigma"),
        (lambda: Hermite(sigma="0.5"), "Hermite.sigma"),
        (lambda: AdamsBashforth(0), "AdamsBashforth.order"),
        (lambda: AdamsBashforth(4, points=3), "AdamsBashforth.points"),
        (lambda: AdamsBashforth(2, points=True), "AdamsBashforth.points"),
        (lambda: AdamsBashforth(2, points=5.0), "AdamsBashforth.points"),
        (lambda: FoCa(derivative_order=0), "FoCa.derivative_order"),
        (lambda: FrequencySplit(cutoff=0.0), "FrequencySplit.cutoff"),
        (lambda: FrequencySplit(cutoff=1.0), "FrequencySplit.cutoff"),
        (lambda: FrequencySplit(cutoff=1.5), "FrequencySplit.cutoff"),
        (lambda: FrequencySplit(grid=(0, 4)), "FrequencySplit.grid"),
        (lambda: FrequencySplit(grid=[8, 8]), "FrequencySplit.grid"),
        (lambda: FrequencySplit(transform="wavelet"), "FrequencySplit.transform"),
        (lambda: FrequencySplit(low="reuse"), "FrequencySplit.low"),
        (lambda: FrequencySplit(dim=1.0), "FrequencySplit.dim"),
    ],
)
def test_bad_configs_name_the_field(build, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        build()


def test_validate_passes_on_defaults_and_describe_lists_the_knobs():
    for f in ALL:
        f.validate()
    assert Taylor(2).describe() == {"order": 2}
    assert Hermite().describe() == {"order": 2, "sigma": 0.5}
    assert AdamsBashforth().describe() == {"order": 2, "basis": "time", "points": None}
    assert FoCa().describe() == {"derivative_order": 1}
    assert Reuse().describe() == {}
