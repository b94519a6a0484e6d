"""The custom site of examples/custom_site.py (docs/writing-a-site.md), written against the public
site contract only: exact under a never-skip trigger, skipping under Interval(3), rows deciding
apart, and remove() restoring the model."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from forecache.core import Policy, apply
from forecache.core.testing.toy import sample, toy_inputs
from forecache.core.triggers import Interval, Trigger

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "custom_site.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("custom_site_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_never_skipping_is_bit_identical_to_the_uncached_model(example):
    model, adapter, inputs = example.toy()
    reference = sample(model, inputs, example.STEPS)
    handle = apply(model, Policy(where=example.Named(example.NAMES), when=Interval(1)), adapter)
    out = sample(model, inputs, example.STEPS)
    assert torch.equal(out, reference)
    assert {d.action for d in handle.trace()} <= {"warmup", "compute"}
    assert handle.stats().compute_ratio == pytest.approx(1.0)
    handle.remove()


def test_interval_three_skips_and_traces_its_decisions(example):
    model, adapter, inputs = example.toy()
    handle = apply(model, Policy(where=example.Named(example.NAMES), when=Interval(3)), adapter)
    sample(model, inputs, example.STEPS)
    stats, trace = handle.stats(), handle.trace()
    assert stats.compute_ratio < 1
    assert {d.site for d in trace} == set(example.NAMES)
    for name in example.NAMES:
        actions = [d.action for d in trace if d.site == name and d.row == 0]
        assert len(actions) == len(example.STEPS)
        assert actions[:4] == ["warmup", "cached", "cached", "compute"]
        assert stats.sites[name]["cached"] > 0
    handle.remove()


def test_remove_restores_the_model_exactly(example):
    model, adapter, inputs = example.toy()
    reference = sample(model, inputs, example.STEPS)
    handle = apply(model, Policy(where=example.Named(example.NAMES), when=Interval(3)), adapter)
    assert not torch.equal(sample(model, inputs, example.STEPS), reference)
    handle.remove()
    assert not any("forward" in m.__dict__ for m in model.modules())
    assert torch.equal(sample(model, inputs, example.STEPS), reference)
    apply(model, Policy(where=example.Named(example.NAMES), when=Interval(3)), adapter).remove()  # re-applicable


class Loud(Trigger):
    """Loud rows (mean |input| above 2) compute every step, the others every third step."""

    signal = "input"

    def decide(self, state, obs, metric):
        return bool(obs.signal.abs().mean() > 2.0) or obs.since_compute >= 3


def test_rows_decide_apart_and_match_their_standalone_run(example):
    model, adapter, _ = example.toy()
    a, b = toy_inputs(batch=1, seed=1), toy_inputs(batch=1, seed=2)
    b["hidden_states"] = b["hidden_states"] * 50
    batch = {k: torch.cat([a[k], b[k]]) for k in a}
    policy = Policy(where=example.Named(example.NAMES), when=Loud())
    handle = apply(model, policy, adapter)
    together = sample(model, batch, example.STEPS)
    cached = {d.row for d in handle.trace() if d.action == "cached"}
    handle.remove()
    assert cached == {0}
    for r, alone_inputs in ((0, a), (1, b)):
        handle = apply(model, policy, adapter)
        alone = sample(model, alone_inputs, example.STEPS)
        handle.remove()
        torch.testing.assert_close(together[r : r + 1], alone, rtol=1e-5, atol=1e-5)


def test_a_trigger_needing_another_signal_is_refused(example):
    from forecache.core.triggers import RelativeL1

    model, adapter, _ = example.toy()
    with pytest.raises(ValueError, match="signal"):
        apply(model, Policy(where=example.Named(example.NAMES), when=RelativeL1(0.3)), adapter)
    assert not any("forward" in m.__dict__ for m in model.modules())
