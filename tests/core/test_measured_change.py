"""MeasuredChange: compute at the step after the change measured while reusing rose above a threshold."""

from __future__ import annotations

import math

import pytest
import torch
from forecache.core.triggers import MeasuredChange, Observation, ask


def run(trigger: MeasuredChange, changes: list[float | None], must: set[int] = frozenset()):
    """Steps 0..n-1; ``changes[s]`` is what step ``s`` measured (None: nothing), handed to step ``s + 1``.
    Returns the computed steps and the metric of every step."""
    trigger.validate()
    state, signal, computed, metrics = trigger.new_state(), None, [], []
    for step, change in enumerate(changes):
        obs = Observation(step=step, t=float(step), timesteps=None, since_compute=None, signal=signal)
        compute, metric = ask(trigger, state, obs, step in must)
        trigger.observe(state, obs, compute, None, None)
        if compute:
            computed.append(step)
        metrics.append(metric)
        signal = None if compute else change  # a computing step measures nothing (it refreshed)
    return computed, metrics


def test_the_sum_since_the_last_compute_decides_the_next_step():
    changes = [None, 0.1, 0.2, 0.15, None, 0.05, 0.3, 0.1, 0.4]
    computed, metrics = run(MeasuredChange(0.25), changes, must={0})
    # by hand: steps 1-2 measured 0.1, 0.2 -> 0.3 > 0.25 after step 2: step 3 computes; step 4 gets no signal
    # (step 3 computed); step 4 measured nothing, step 5 measured 0.05; step 6's 0.3 makes 0.35: step 7 computes
    assert computed == [0, 3, 7]
    assert metrics[2] == pytest.approx(0.1) and metrics[3] == pytest.approx(0.3)
    assert metrics[4] is None and metrics[6] == pytest.approx(0.05) and metrics[7] == pytest.approx(0.35)


def test_without_accumulation_each_change_is_compared_alone():
    computed, _ = run(MeasuredChange(0.25, accumulate=False), [None, 0.1, 0.2, 0.15, 0.3, 0.1, 0.26, 0.0],
                      must={0})
    assert computed == [0, 5, 7]  # only a single change above 0.25 counts: 0.3 (step 4) and 0.26 (step 6)


def test_threshold_zero_inf_nan_and_tensor_signals():
    changes = [None, 0.0, 0.01, 0.0, 0.0]
    assert run(MeasuredChange(0.0), changes, must={0})[0] == [0, 3]  # strictly above: 0 does not, 0.01 does
    assert run(MeasuredChange(math.inf), [None, 5.0, math.inf, 1.0], must={0})[0] == [0]  # never past inf
    assert run(MeasuredChange(1e9), [None, float("nan"), 0.0], must={0})[0] == [0, 2]  # unreadable: stale
    assert run(MeasuredChange(0.5), [None, torch.tensor(0.7), 0.0], must={0})[0] == [0, 2]  # a 0-d tensor
    # no measure since the last compute keeps the cache, where Accumulating would compute
    assert run(MeasuredChange(0.5), [None, None, None], must={0})[0] == [0]


def test_a_forced_compute_restarts_the_sum():
    computed, metrics = run(MeasuredChange(0.25), [None, 0.2, 0.2, 0.2, 0.2], must={0, 2})
    assert computed == [0, 2] and metrics[4] == pytest.approx(0.2)  # 0.2 since step 2's compute, not 0.6


@pytest.mark.parametrize("kwargs, field", [
    ({"threshold": -0.1}, "threshold"), ({"threshold": float("nan")}, "threshold"),
    ({"threshold": True}, "threshold"), ({"threshold": 0.1, "accumulate": 1}, "accumulate"),
])
def test_bad_configuration_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"MeasuredChange.{field}"):
        MeasuredChange(**kwargs).validate()
