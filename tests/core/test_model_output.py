"""ModelOutput: the whole model output (dict included) as a cached site, its guard, per-call times
of multi-call solvers, and Adams-Bashforth on the step-index basis."""

import forecache.core as fc
import pytest
import torch
from forecache.core.forecasters import AdamsBashforth
from forecache.core.sites.module import flatten, rebuild
from forecache.core.triggers.interval import Interval


class Heads(torch.nn.Module):
    """Returns a dict whose tensors are linear in t (and an entry that is not a tensor)."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.randn(3))
        self.calls = 0

    def forward(self, x, t):
        self.calls += 1
        tt = t.view(-1, 1)
        return {"y": x * self.a + tt, "z": (x.sum(-1, keepdim=True) * tt).repeat(1, 2), "note": None}


def run(model, times, handle=None, call_times=None):
    x = torch.arange(6.0).view(2, 3)
    outs = []
    for i, t in enumerate(times):
        if handle is not None:
            handle.step(t, None if call_times is None else call_times[i])
        outs.append(model(x, torch.full((2,), t)))
    return outs


def test_dict_outputs_flatten_and_rebuild():
    out = {"a": torch.ones(1), "b": None, "c": torch.zeros(2)}
    parts, template = flatten(out)
    assert len(parts) == 2
    back = rebuild(template, (parts[0] * 2, parts[1]))
    assert list(back) == ["a", "b", "c"] and back["b"] is None and torch.equal(back["a"], torch.full((1,), 2.0))


def test_interval_one_is_identical_and_linear_outputs_are_forecast_exactly():
    torch.manual_seed(0)
    model = Heads()
    times = [0.0, 0.1, 0.3, 0.4, 0.7, 0.9]
    ref = run(model, times)
    handle = fc.apply(model, fc.Policy(where=fc.ModelOutput(), when=Interval(1), what=AdamsBashforth(2)), fc.Adapter())
    same = run(model, times, handle)
    assert all(torch.equal(a["y"], b["y"]) and b["note"] is None for a, b in zip(ref, same))
    handle.remove()
    handle = fc.apply(model, fc.Policy(where=fc.ModelOutput(), when=Interval(3, warmup=2), what=AdamsBashforth(2)), fc.Adapter())
    model.calls = 0
    out = run(model, times, handle)
    assert model.calls == 3  # steps 0, 1 and 4
    for a, b in zip(ref, out):
        torch.testing.assert_close(a["y"], b["y"])
        torch.testing.assert_close(a["z"], b["z"])
    handle.remove()


def test_guard_vetoes_rows_and_the_trace_says_why():
    model = Heads()
    seen = []

    def guard(output, arguments):
        seen.append((set(output), tuple(arguments["x"].shape)))
        return ["too far" if float(output["y"][i].abs().max()) > 4 else None for i in range(output["y"].shape[0])]

    policy = fc.Policy(where=fc.ModelOutput(guard=guard), when=Interval(2, warmup=2), what=AdamsBashforth(2))
    handle = fc.apply(model, policy, fc.Adapter())
    with torch.no_grad():
        model.a.copy_(torch.tensor([1.0, 1.0, 1.0]))
    run(model, [0.0, 0.5, 1.0, 1.5], handle)
    guarded = [d for d in handle.trace() if d.action == "guarded"]
    # row 1 (x = 3..5) is vetoed at each of its forecasts; row 0 is forecast at step 2, computes at 3
    assert [(d.step, d.row, d.note) for d in guarded] == [(2, 1, "too far"), (3, 1, "too far")]
    assert seen == [({"y", "z", "note"}, (2, 3)), ({"y", "z", "note"}, (1, 3))]  # the forecast rows only
    stats = handle.stats()
    assert stats.guarded_forecasts == 2 and stats.sites["output"]["cached"] == 1
    handle.remove()
    with pytest.raises(ValueError, match="ModelOutput.guard"):
        fc.ModelOutput(guard="no").validate()


def test_call_times_give_each_branch_its_own_times():
    model = Heads()
    handle = fc.apply(model, fc.Policy(where=fc.ModelOutput(), when=Interval(1), what=AdamsBashforth(2)), fc.Adapter())
    x = torch.ones(2, 3)
    for t, t2 in ((0.0, 0.2), (0.2, 0.5)):
        handle.step(t, (t, t2))
        model(x, torch.full((2,), t))
        model(x, torch.full((2,), t2))
    assert [(d.step, d.branch, d.t) for d in handle.trace() if d.row == 0] == [(0, 0, 0.0), (0, 1, 0.2), (1, 0, 0.2), (1, 1, 0.5)]
    handle.remove()


def test_adams_bashforth_index_basis():
    ab = AdamsBashforth(3, basis="index")
    values = [torch.tensor([float(i * i)]) for i in (1, 2, 3)]
    # binomial weights (3, -3, 1) whatever the times, since the basis is the step index
    assert float(ab.predict([1.0, 2.0, 3.0], values, 4.0, {})) == pytest.approx(16.0)
    with pytest.raises(ValueError, match="AdamsBashforth.basis"):
        AdamsBashforth(2, basis="sigma")
