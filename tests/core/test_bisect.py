"""The one bracket-and-bisect search (forecache.core.calibration.bisect) on step functions worked by hand."""

from __future__ import annotations

import math

import pytest
from forecache.core.calibration.bisect import Bracket, bracket_and_bisect


def recorder(outcome):
    """A probe that logs the values asked for and returns ``outcome(value)``."""
    asked: list[float] = []

    def probe(value: float):
        asked.append(value)
        return outcome(value)

    return probe, asked


def test_a_threshold_grows_by_doubling_then_bisects_geometrically():
    probe, asked = recorder(lambda v: v)  # aggressive from 0.7 on
    out = bracket_and_bisect(probe, lambda v: v >= 0.7, start=0.1, max_probes=16, resolution=0.25)
    # 0.1, 0.2, 0.4 are not aggressive, 0.8 is; then sqrt(0.4 * 0.8) = 0.566 (not), sqrt(0.566 * 0.8) = 0.673
    # (not), and 0.8 / 0.673 <= 1.25 ends it
    assert asked[:4] == [0.1, 0.2, 0.4, 0.8]
    assert asked[4] == pytest.approx(math.sqrt(0.4 * 0.8))
    assert asked[5] == pytest.approx(math.sqrt(asked[4] * 0.8))
    assert len(asked) == 6 and out.far / out.near <= 1.25 and out.near < 0.7 <= out.far


def test_an_aggressive_start_is_halved_from_zero_then_bisected():
    probe, asked = recorder(lambda v: v)
    out = bracket_and_bisect(probe, lambda v: v >= 0.3, start=1.0, max_probes=16, resolution=0.1)
    assert asked[:3] == [1.0, 0.5, 0.25]  # near is 0 (never probed): halve until a probe is not aggressive
    assert asked[3] == pytest.approx(math.sqrt(0.25 * 0.5))
    assert out.near < 0.3 <= out.far and out.far / out.near <= 1.1


def test_a_shrink_factor_brackets_downwards_first():
    probe, asked = recorder(lambda v: v)
    out = bracket_and_bisect(probe, lambda v: v >= 0.03, start=1.0, max_probes=16, grow=4.0, shrink=4.0,
                             resolution=0.5)
    assert asked[:4] == [1.0, 0.25, 0.0625, 0.015625]
    assert asked[4] == pytest.approx(math.sqrt(0.015625 * 0.0625))
    assert out.near < 0.03 <= out.far


def test_an_integer_knob_grows_by_at_least_one_stops_at_its_limit_and_halves_the_gap():
    probe, asked = recorder(lambda v: v)
    out = bracket_and_bisect(probe, lambda v: v >= 6, start=1, max_probes=16, lower=1, upper=64, integer=True)
    assert asked == [1, 2, 4, 8, 6, 5] and out == Bracket(5, 6)
    probe, asked = recorder(lambda v: v)
    out = bracket_and_bisect(probe, lambda v: False, start=3, max_probes=16, lower=1, upper=10, integer=True)
    assert asked == [3, 6, 10] and out == Bracket(10, None)  # the limit, never past it


def test_close_and_the_budget_end_the_search():
    probe, asked = recorder(lambda v: v)
    bracket_and_bisect(probe, lambda v: v >= 0.7, start=0.1, max_probes=16, close=lambda v: v == 0.4)
    assert asked == [0.1, 0.2, 0.4]
    probe, asked = recorder(lambda v: v)
    bracket_and_bisect(probe, lambda v: v >= 0.7, start=0.1, max_probes=3)
    assert asked == [0.1, 0.2, 0.4]  # out of budget before the target was bracketed
    probe, asked = recorder(lambda v: v)
    bracket_and_bisect(probe, lambda v: v >= 0.7, start=0.1, max_probes=16, used=lambda: 16)
    assert asked == [0.1]  # the caller's own count of what it spent rules


def test_saturation_and_clamping_stop_the_bracket():
    # every value above 0.5 gives the outcome of 0.5: no larger value can change it
    probe, asked = recorder(lambda v: min(v, 0.5))
    out = bracket_and_bisect(probe, lambda v: v >= 0.7, start=0.1, max_probes=16, no_higher=lambda v: v >= 0.5)
    assert asked == [0.1, 0.2, 0.4, 0.8] and out.far is None
    probe, asked = recorder(lambda v: v)
    out = bracket_and_bisect(probe, lambda v: True, start=1.0, max_probes=16, shrink=2.0, no_lower=lambda v: v < 0.2)
    assert asked == [1.0, 0.5, 0.25, 0.125] and out == Bracket(0.0, 0.125)  # unbracketed: nothing below changes
    # a probe that clamps (an interval at the step count): growth stops when the value run does not grow
    probe, asked = recorder(lambda v: min(v, 5))
    out = bracket_and_bisect(probe, lambda v: False, start=2, max_probes=16, lower=1, upper=64, integer=True,
                             value_of=lambda v: v)
    assert asked == [2, 4, 8, 10] and out == Bracket(5, None)  # 8 ran as 5; 10 would too


@pytest.mark.parametrize("kwargs, message", [
    ({"max_probes": 0}, "max_probes"),
    ({"grow": 1.0}, "grow"),
    ({"shrink": 0.5}, "shrink"),
    ({"shrink": 2.0, "integer": True}, "shrink"),
    ({"resolution": 0.0}, "resolution"),
    ({"start": math.inf}, "start"),
])
def test_bad_arguments_raise(kwargs, message):
    args = {"start": 1.0, "max_probes": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        bracket_and_bisect(lambda v: v, lambda v: True, **args)
