"""Health: a non-finite forecast recomputes its own row, a non-finite metric computes its row, and the
stats say what they could not count."""

import torch

import forecache.core as fc
from forecache.core.forecasters import Forecaster
from forecache.core.testing.toy import sample, toy_inputs
from forecache.core.triggers import Interval

from .conftest import STEPS


class NaNForLoudRows(Forecaster):
    """Reuse, except that a row whose features are loud gets a NaN forecast."""

    min_history = 1
    max_history = 1
    rowwise = False  # it judges the loudness of the rows it is given together

    def predict(self, times, values, t, state):
        v = values[-1]
        return torch.full_like(v, float("nan")) if v.abs().mean() > 5 else v.clone()


def test_a_nonfinite_forecast_recomputes_its_row_and_the_others_keep_caching(toy, adapter):
    inputs = toy_inputs(batch=2)
    inputs["hidden_states"][1] *= 100  # row 1's features are loud
    ref = sample(toy, inputs, STEPS)
    policy = fc.Policy(where=fc.Submodules(("attn", "mlp")), when=Interval(3), what=NaNForLoudRows())
    handle = fc.apply(toy, policy, adapter)
    out = sample(toy, inputs, STEPS)
    assert torch.isfinite(out).all()
    trace = handle.trace()
    bad = [d for d in trace if d.action == "nonfinite"]
    assert bad and {d.row for d in bad} == {1}
    undone = {(d.site, d.step, d.row) for d in bad}
    kept = [d for d in trace if d.action == "cached" and d.row == 0 and (d.site, d.step, 0) not in undone]
    assert kept, "row 0 stopped caching"
    # row 1 computed wherever its forecast failed; row 0 reused: the rows' outputs part ways
    torch.testing.assert_close(out[1:], ref[1:], rtol=1e-5, atol=1e-5)
    assert not torch.equal(out[:1], ref[:1])
    handle.remove()


def test_a_nonfinite_metric_computes_its_row_and_says_so(toy, adapter):
    inputs = toy_inputs(batch=2)
    inputs["hidden_states"][1, 0, 0] = float("nan")  # row 1's TeaCache metric is NaN at every step
    ref = sample(toy, inputs, STEPS)
    handle = fc.apply(toy, fc.teacache(0.3), adapter)
    out = sample(toy, inputs, STEPS)
    trace = handle.trace()
    row1 = [d for d in trace if d.row == 1]
    assert all(d.computed for d in row1)  # NaN >= threshold is False, yet the row never skips
    assert sum(d.note == "non-finite metric" for d in row1) == len(STEPS) - 1  # all but the first (warm-up)
    assert any(not d.computed for d in trace if d.row == 0)  # the other row keeps caching
    assert torch.isnan(out[1]).all() and torch.isnan(ref[1]).all()  # the NaN input is not hidden
    handle.remove()


def test_stats_say_when_flops_were_not_counted(toy, inputs, adapter):
    handle = fc.apply(toy, fc.fora(interval=3), adapter, count_flops=False)
    sample(toy, inputs, STEPS)
    text = str(handle.stats())
    assert "FLOPs not counted" in text and "nan" not in text
    handle.remove()
