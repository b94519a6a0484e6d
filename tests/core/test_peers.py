"""Peers (diffusers' cache hooks, cache-dit) as benchmark methods: each changes the output at an aggressive
setting, repeats itself across generations, and its undo restores the model exactly; a peer and a forecache
handle never hold one model at once."""

import pytest
import torch
from torch import nn

from forecache.core import apply, fbcache, teacache
from forecache.core.bench.peers import (
    PeerUnsupported, available_peers, cache_dit_dbcache, diffusers_fastercache, diffusers_fbcache,
    diffusers_magcache, diffusers_pab, diffusers_taylorseer, skipped_peers,
)
from forecache.core.bench.peers_cache_dit import unavailable_reason
from forecache.core.testing.tiny_models import tiny_flux, tiny_flux_pipeline, tiny_inputs, tiny_wan

_TABLES = ("_parameters", "_buffers", "_modules", "_forward_hooks", "_forward_pre_hooks",
           "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs")

# settings strong enough to skip work on the tiny random Flux model in 20 steps
AGGRESSIVE = [
    diffusers_fbcache(threshold=0.3),
    diffusers_magcache(threshold=0.5, retention_ratio=0.1),
    diffusers_taylorseer(cache_interval=5),
    diffusers_pab(spatial_skip=3),
    diffusers_fastercache(spatial_skip=3),
]
CACHE_DIT = pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason()))


def _run(pipe):
    g = torch.Generator().manual_seed(0)
    return pipe("a red square", num_inference_steps=20, height=32, width=32, output_type="pt", generator=g,
                max_sequence_length=16).images


def _loop(model, steps=8):
    """A bare-transformer Euler loop, as a benchmark without a pipeline would run it."""
    inputs = tiny_inputs(model)
    x = inputs["hidden_states"]
    for sigma in torch.linspace(1.0, 1.0 / steps, steps):
        x = x - model(**{**inputs, "hidden_states": x, "timestep": sigma.expand(1)})[0] / steps
    return x


def _state(model: nn.Module):
    return [(name, dict(m.__dict__), {t: list(m.__dict__[t].items()) for t in _TABLES if t in m.__dict__})
            for name, m in model.named_modules()]


def _assert_same_state(before, after):
    assert [n for n, _, _ in before] == [n for n, _, _ in after]  # same modules, same order
    for (name, d0, t0), (_, d1, t1) in zip(before, after):
        assert d0.keys() == d1.keys(), (name, d0.keys() ^ d1.keys())
        assert all(d0[k] is d1[k] for k in d0), (name, [k for k in d0 if d0[k] is not d1[k]])
        for table, items in t0.items():
            assert [k for k, _ in items] == [k for k, _ in t1[table]], (name, table)
            assert all(a is b for (_, a), (_, b) in zip(items, t1[table])), (name, table)


@pytest.fixture(scope="module")
def pipe():
    return tiny_flux_pipeline()


@pytest.fixture(scope="module")
def ref(pipe):
    return _run(pipe)


@pytest.mark.parametrize("method", AGGRESSIVE, ids=lambda m: m.name)
def test_diffusers_peer_changes_output_and_undo_restores_exactly(pipe, ref, method):
    assert method.peer and method.note.startswith("diffusers ")
    before = _state(pipe.transformer)
    undo = method.enable(pipe)
    try:
        # diffusers replaces forward by an instance attribute; the transformer carries forecache's owner mark
        assert any("forward" in m.__dict__ for m in pipe.transformer.modules())
        assert "_forecache_owner" in pipe.transformer.__dict__
        out, again = _run(pipe), _run(pipe)
    finally:
        undo()
    assert not torch.equal(out, ref)
    assert torch.equal(out, again)  # the hooks' state starts afresh with every generation
    _assert_same_state(before, _state(pipe.transformer))
    assert torch.equal(_run(pipe), ref)
    undo()  # idempotent
    _assert_same_state(before, _state(pipe.transformer))


@pytest.mark.parametrize("method", [diffusers_fbcache(threshold=1.0), diffusers_pab(spatial_skip=3),
                                    diffusers_taylorseer(cache_interval=3, disable_cache_before_step=2),
                                    diffusers_magcache(threshold=1.0, retention_ratio=0.1, num_inference_steps=8)],
                         ids=lambda m: m.name)
def test_diffusers_peer_on_a_bare_transformer(method):
    """Without a pipeline the peer supplies the cache context, the timestep and the reset per generation."""
    model = tiny_flux()
    with torch.no_grad():
        ref = _loop(model)
        before = _state(model)
        undo = method.enable(model)
        try:
            out, again = _loop(model), _loop(model)
        finally:
            undo()
        _assert_same_state(before, _state(model))
        assert not torch.equal(out, ref)
        assert torch.equal(out, again)
        assert torch.equal(_loop(model), ref)


def test_magcache_needs_steps_on_a_bare_transformer_and_ratios_off_flux():
    with pytest.raises(PeerUnsupported, match="num_inference_steps"):
        diffusers_magcache().enable(tiny_flux())
    model = tiny_wan()
    before = _state(model)
    with pytest.raises(PeerUnsupported, match="mag_ratios"):
        diffusers_magcache(num_inference_steps=8).enable(model)
    _assert_same_state(before, _state(model))


def test_peer_refuses_what_it_cannot_cache():
    with pytest.raises(PeerUnsupported, match="CacheMixin"):
        diffusers_fbcache().enable(nn.Linear(2, 2))
    with pytest.raises(PeerUnsupported, match="transformer"):
        diffusers_fbcache().enable(object())


def test_peer_then_forecache_is_an_error(pipe, ref):
    before = _state(pipe.transformer)
    undo = diffusers_fbcache(threshold=0.3).enable(pipe)
    try:
        with pytest.raises(ValueError, match="already cached by peer diffusers_fbcache"):
            apply(pipe, teacache(0.4))
        with pytest.raises(ValueError, match="already cached by peer"):
            diffusers_pab().enable(pipe)  # nor two peers
    finally:
        undo()
    _assert_same_state(before, _state(pipe.transformer))
    assert torch.equal(_run(pipe), ref)


def test_forecache_then_peer_is_an_error(pipe, ref):
    handle = apply(pipe, fbcache())
    try:
        for method in (diffusers_fbcache(), diffusers_taylorseer(), cache_dit_dbcache(Fn=1)):
            with pytest.raises((ValueError, PeerUnsupported), match="already cached by|not importable"):
                method.enable(pipe)
    finally:
        handle.remove()
    assert torch.equal(_run(pipe), ref)
    # and after a peer's undo forecache applies as usual
    diffusers_fbcache().enable(pipe)()
    handle = apply(pipe, fbcache())
    handle.remove()
    assert torch.equal(_run(pipe), ref)


@CACHE_DIT
@pytest.mark.parametrize("taylorseer", [False, True])
def test_cache_dit_changes_output_and_undo_restores_exactly(pipe, ref, taylorseer):
    method = cache_dit_dbcache(threshold=0.5, Fn=1, Bn=0, max_warmup_steps=2, taylorseer=taylorseer)
    assert method.peer and method.note.startswith("cache-dit ")
    cls = type(pipe)
    class_before = dict(cls.__dict__)
    pipe_before = set(pipe.__dict__)
    before = _state(pipe.transformer)
    undo = method.enable(pipe)
    try:
        with pytest.raises(ValueError, match="already cached by peer"):
            apply(pipe, teacache(0.4))
        out, again = _run(pipe), _run(pipe)
    finally:
        undo()
    assert not torch.equal(out, ref)
    assert torch.equal(out, again)
    _assert_same_state(before, _state(pipe.transformer))  # cache-dit alone leaves its patched forward behind
    assert set(pipe.__dict__) == pipe_before
    assert dict(cls.__dict__).keys() == class_before.keys()
    assert all(cls.__dict__[k] is v for k, v in class_before.items())
    assert torch.equal(_run(pipe), ref)


@CACHE_DIT
def test_cache_dit_on_a_pipeline_class_it_does_not_register():
    """The reference ShapesPipeline is not one of cache-dit's pipelines; its FluxTransformer2DModel is, so
    cache-dit's Flux adapter runs on it, with one cache context per generation."""
    from forecache.core.reference import load_pipeline

    shapes = load_pipeline()
    ref = shapes(["a red circle at the left"], num_inference_steps=12)
    before = _state(shapes.transformer)  # after a call: its cache_context adds diffusers' hook registry
    undo = cache_dit_dbcache(threshold=0.5, Fn=1, Bn=0, max_warmup_steps=2).enable(shapes)
    try:
        out, again = (shapes(["a red circle at the left"], num_inference_steps=12) for _ in range(2))
    finally:
        undo()
    assert not torch.equal(out, ref) and torch.equal(out, again)
    _assert_same_state(before, _state(shapes.transformer))
    assert torch.equal(shapes(["a red circle at the left"], num_inference_steps=12), ref)


@CACHE_DIT
def test_cache_dit_refuses_bare_transformers_and_too_few_blocks(pipe):
    with pytest.raises(PeerUnsupported, match="DiffusionPipeline"):
        cache_dit_dbcache(Fn=1).enable(pipe.transformer)
    before = _state(pipe.transformer)
    with pytest.raises(PeerUnsupported, match="no block to cache"):
        cache_dit_dbcache(Fn=8).enable(pipe)  # the tiny model has 4 blocks
    _assert_same_state(before, _state(pipe.transformer))


def test_available_and_skipped_peers():
    quick, full = available_peers(quick=True), available_peers(quick=False)
    assert all(m.peer for m in full) and len(quick) < len(full)
    assert len({m.label for m in full}) == len(full)
    names = {m.name for m in full}
    assert {"diffusers_fbcache", "diffusers_magcache", "diffusers_taylorseer", "diffusers_pab",
            "diffusers_fastercache"} <= names
    skipped = dict(skipped_peers())
    if unavailable_reason() is None:
        assert {"cache_dit_dbcache", "cache_dit_dbcache_taylorseer"} <= names
    else:
        assert "cache_dit_dbcache" not in names and "not importable" in skipped["cache_dit_dbcache"]
    assert all(isinstance(reason, str) and reason for reason in skipped.values())


def test_diffusers_peer_on_a_sampler_that_is_not_a_diffusers_pipeline():
    """A target with a ``transformer`` but no diffusers pipeline behind it is clocked like a bare transformer."""

    class Sampler:
        def __init__(self):
            self.transformer = tiny_flux()

        def __call__(self):
            return _loop(self.transformer)

    sampler = Sampler()
    with torch.no_grad():
        ref = sampler()
        undo = diffusers_fastercache(spatial_skip=3).enable(sampler)
        try:
            out, again = sampler(), sampler()
        finally:
            undo()
        assert not torch.equal(out, ref) and torch.equal(out, again)
        assert torch.equal(sampler(), ref)
