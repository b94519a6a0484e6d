"""Triggers that reduce tensors measure every row of a site call in one batched reduction, with the
metrics each row gets alone."""

import pytest
import torch
from forecache.core.triggers import Interval, Observation, ProbeResidual, RelativeL1
from forecache.core.triggers import _common


def rows_of(trigger, signals, refs):
    states, obs = [], []
    for i, (x, ref) in enumerate(zip(signals, refs)):
        state = trigger.new_state()
        state["prev" if "prev" in state else "ref"] = ref
        if "prev_t" in state:
            state["prev_t"], state["acc"] = 0.9, 0.05 * i
        states.append(state)
        obs.append(Observation(step=3, t=0.8, timesteps=None, since_compute=1, signal=x))
    return states, obs


@pytest.mark.parametrize("trigger", [RelativeL1(0.2, coefficients=(4.0, 1.0, 0.0)), RelativeL1(0.11),
                                     ProbeResidual(0.08)])
def test_one_reduction_gives_each_row_its_own_metric(trigger, monkeypatch):
    g = torch.Generator().manual_seed(0)
    signals = [torch.randn(1, 6, 8, generator=g) for _ in range(4)]
    refs = [torch.randn(1, 6, 8, generator=g), None, torch.randn(1, 6, 8, generator=g), torch.randn(1, 3, 8)]
    states, obs = rows_of(trigger, signals, refs)
    alone = [trigger.measure(s, o) for s, o in zip(states, obs)]
    reductions = []
    original = _common.relative_l1_rows
    monkeypatch.setattr(_common, "relative_l1_rows", lambda x, ref: reductions.append(len(x)) or original(x, ref))
    together = trigger.measure_rows(states, obs)
    assert together == alone  # bitwise: a row measures alike alone and in a batch
    assert together[1] is None and together[3] is None  # no reference, one of another shape: compute
    assert reductions == [2]  # one reduction over the rows with a reference of their signal's shape


def test_a_trigger_that_reads_no_tensor_measures_row_by_row():
    trigger = Interval(3)
    obs = [Observation(2, 0.5, None, since) for since in (None, 1, 4)]
    assert trigger.measure_rows([{}, {}, {}], obs) == [None, 1.0, 4.0]
