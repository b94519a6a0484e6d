"""Every preset: bit-identical to the uncached model at its never-skip setting, really skipping at
its defaults, and gone without a trace after remove()."""

import pytest
import torch

import forecache.core as fc
from forecache.core.forecasters import Taylor
from forecache.core.triggers import RelativeL1
from forecache.core.testing.toy import sample

from .conftest import STEPS

NEVER_SKIP = {
    "fora": dict(interval=1),
    "delta_dit": dict(interval=1),
    "pab": dict(spatial=1, temporal=1, cross=1),
    "toca": dict(interval=1),
    "fastercache": dict(attention_interval=1, uncond_interval=1),
    "teacache": dict(threshold=0.0),
    "magcache": dict(max_skip=0, ratios=[1.0] * 12),
    "easycache": dict(threshold=0.0),
    "fbcache": dict(threshold=0.0),
    "dbcache": dict(threshold=0.0, fn=1),
    "foresight": dict(gamma=0.0),
    "taylorseer": dict(interval=1),
    "hicache": dict(interval=1),
    "abcache": dict(interval=1),
    "foca": dict(interval=1),
    "freqca": dict(interval=1),
    "speca": dict(threshold=0.0),
}

# settings that must skip on the toy model within 12 steps
SKIPPING = {
    "magcache": dict(ratios=[0.98] * 12, retention=0.2),
    "dbcache": dict(fn=1, warmup=2),
    "foresight": dict(warmup=3, gamma=2.0),
    "easycache": dict(warmup=3, threshold=0.2),
}


def run(model, inputs, policy, adapter):
    handle = fc.apply(model, policy, adapter)
    handle.set_schedule(STEPS)
    out = sample(model, inputs, STEPS, guidance=3.0)
    return out, handle


def test_every_preset_has_a_never_skip_setting():
    assert set(NEVER_SKIP) == set(fc.PRESETS) - {"deepcache"}  # deepcache: tested on a UNet


@pytest.mark.parametrize("name", sorted(NEVER_SKIP))
def test_never_skip_is_bit_identical(name, toy, inputs, adapter):
    ref = sample(toy, inputs, STEPS, guidance=3.0)
    out, handle = run(toy, inputs, fc.PRESETS[name](**NEVER_SKIP[name]), adapter)
    assert torch.equal(out, ref)
    assert handle.stats().compute_ratio == pytest.approx(1.0)
    handle.remove()


@pytest.mark.parametrize("name", sorted(NEVER_SKIP))
def test_default_skips_and_remove_restores(name, toy, inputs, adapter):
    ref = sample(toy, inputs, STEPS, guidance=3.0)
    policy = fc.PRESETS[name](**SKIPPING.get(name, {}))
    out, handle = run(toy, inputs, policy, adapter)
    stats = handle.stats()
    assert stats.hit_rate > 0, f"{name} never used its cache"
    assert stats.compute_ratio < 1.0
    assert not torch.equal(out, ref)
    rel = float((out - ref).norm() / ref.norm())
    assert rel < 0.5, f"{name} drifted by {rel:.3f}"
    handle.remove()
    for module in toy.modules():
        assert "forward" not in module.__dict__
        assert "_forecache_owner" not in module.__dict__
    assert torch.equal(sample(toy, inputs, STEPS, guidance=3.0), ref)


def test_policies_compose(toy, inputs, adapter):
    """TeaCache's trigger with TaylorSeer's forecaster is one line, and it forecasts."""
    policy = fc.teacache(0.3).replace(what=Taylor(1))
    assert isinstance(policy.what, Taylor) and isinstance(policy.when, RelativeL1)
    out, handle = run(toy, inputs, policy, adapter)
    assert handle.stats().hit_rate > 0
    handle.remove()


def test_presets_cite_their_paper():
    for name, preset in fc.PRESETS.items():
        doc = preset.__doc__ or ""
        policy = preset(**NEVER_SKIP.get(name, {}))
        assert policy.name == name
        assert policy.paper, name
        assert ("arXiv" in doc) or ("cache-dit" in doc), name
