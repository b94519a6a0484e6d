"""The dLLM caches run by core's runtime: a handle's trace, stats, storage budget, NaN guard and distributed reduce."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch
from forecache.core import apply
from forecache.core.storage import CacheBudgetError
from forecache.core.testing.toy import ToyAdapter, ToyTransformer
from forecache.dllm import (
    CombinedCache,
    DllmCache,
    FastDllmCache,
    LLaDALayers,
    PrefixStore,
    cache_llada,
    dllm_cache,
    generate,
    llada_policy,
    pad_prompts,
    with_prefix,
)

from .tiny import tiny_llada

RUN = {"steps": 12, "gen_length": 12, "block_length": 6}
IDS, ATTN = pad_prompts([[5, 9, 2, 17, 30], [8, 1, 44]], pad_id=0)


pytestmark = pytest.mark.usefixtures("no_grad")  # threads: conftest's one_thread


@pytest.fixture(scope="module")
def model():
    return tiny_llada()


def test_a_handle_traces_every_generation_as_json_in_the_clocks_coordinates(model):
    handle = cache_llada(model, dllm_cache(5, 3, 0.25))
    for _ in range(2):
        _, stats = generate(model, IDS, ATTN, cache=handle, return_stats=True, **RUN)
    decisions = json.loads(handle.trace().to_json())
    assert len(decisions) == 2 * 12 * 2  # two generations, 12 calls, a prompt and a response decision each
    first = [d for d in decisions if d["generation"] == 0]
    assert [(d["t"], d["step"], d["segment"], d["site"]) for d in first] == [
        (float(s), s % 6, s // 6, part) for s in range(12) for part in ("prompt", "response")]
    assert [d["t"] for d in first if d["site"] == "response" and d["action"] != "cached"] == [0.0, 3.0, 6.0, 9.0]
    assert {d["row"] for d in decisions} == {-1}
    core = handle.stats()
    assert core.generations == 2 and core.calls == 24
    assert core.sites["response"] == {"rows": 24, "cached": 16}  # 4 of 12 calls refresh the answer
    assert stats["cache"] == core.details["llada"]  # the sampler's "cache" is the site's telemetry
    handle.remove()
    assert not any("forward" in vars(b) for b in model.blocks)  # every layer restored


@pytest.mark.parametrize("method", [DllmCache(5, 3, 0.25), DllmCache(3, 2, 1.0), CombinedCache(4, "answer", 2, 0.25),
                                    FastDllmCache(), FastDllmCache(dual=False)])
@pytest.mark.parametrize("threshold", [None, 0.5])
def test_the_handles_compute_ratio_is_the_caches_own(model, method, threshold):
    handle = cache_llada(model, llada_policy(method, "m", ""))
    _, stats = generate(model, IDS, ATTN, cache=handle, threshold=threshold, cfg_scale=1.0, return_stats=True, **RUN)
    assert handle.stats().compute_ratio == pytest.approx(stats["cache"]["compute_ratio"], rel=1e-12)
    assert handle.stats().compute_ratio < 1.0
    handle.remove()


def test_a_shared_prefix_is_counted_as_skipped_on_the_first_call(model):
    """The full count is the adapter's (from the shapes), so a first call that fills its prefix from the store
    counts what it did not compute."""
    store = PrefixStore()
    policy = with_prefix(DllmCache(100, 100, 0.0), store, prefix_length=3)
    ratios = []
    for _ in range(2):
        handle = cache_llada(model, policy)
        _, stats = generate(model, IDS, ATTN, cache=handle, return_stats=True, **RUN)
        ratios.append(handle.stats().compute_ratio)
        assert ratios[-1] == pytest.approx(stats["cache"]["compute_ratio"], rel=1e-12)
        handle.remove()
    assert stats["cache"]["prefix"]["hits"] > 0 and ratios[1] < ratios[0]


def test_the_policys_byte_budget_bounds_the_stored_features(model):
    policy = dllm_cache(5, 3, 0.25).replace(max_cache_bytes=1000)
    with pytest.raises(CacheBudgetError, match="max_cache_bytes"):
        generate(model, IDS, ATTN, cache=policy, **RUN)
    assert not any("forward" in vars(b) for b in model.blocks)  # the sampler's handle is removed all the same


class PoisonFfn:
    """Wraps a method: before every call, the stored FFN outputs of layer 1 become NaN in ``rows`` (all: None),
    so a call that reuses them returns NaN logits there."""

    def __init__(self, inner, rows=None) -> None:
        self.inner, self.rows = inner, rows

    def trigger(self):
        return self.inner.trigger()

    def start(self, model, prompt_length, gen_length, block_length, *, storage=None):
        state = self.inner.start(model, prompt_length, gen_length, block_length, storage=storage)

        rows = self.rows

        class State:
            def runner(self, x, step, block):
                for f in state.store[1:2]:
                    if f is not None:
                        (f.ffn if rows is None else f.ffn[rows]).fill_(float("nan"))
                return state.runner(x, step, block)

            def __getattr__(self, name):
                return getattr(state, name)

        return State()


def test_a_non_finite_reuse_recomputes_the_call_uncached(model):
    plain = generate(model, IDS, ATTN, **RUN)
    handle = cache_llada(model, llada_policy(PoisonFfn(DllmCache(100, 100, 0.0)), "poisoned", ""))
    tokens = generate(model, IDS, ATTN, cache=handle, **RUN)
    assert torch.equal(tokens, plain)  # every call after the first reused NaN and was run again uncached
    stats = handle.stats()
    assert stats.nonfinite_recomputes == 11 * 2 and stats.compute_ratio > 1.0  # both rows; the recomputes cost extra
    bad = [(int(d.t), d.row) for d in handle.trace() if d.action == "nonfinite"]
    assert bad == [(s, r) for s in range(1, 12) for r in range(2)]
    handle.remove()


def test_only_the_row_with_a_non_finite_reuse_runs_again(model):
    plain = generate(model, IDS, ATTN, **RUN)
    clean = generate(model, IDS, ATTN, cache=DllmCache(100, 100, 0.0), **RUN)
    handle = cache_llada(model, llada_policy(PoisonFfn(DllmCache(100, 100, 0.0), rows=1), "poisoned", ""))
    tokens = generate(model, IDS, ATTN, cache=handle, **RUN)
    assert torch.equal(tokens[1], plain[1])  # row 1 ran uncached at every call after the first
    assert torch.equal(tokens[0], clean[0])  # row 0 kept its cached result
    stats = handle.stats()
    assert [(int(d.t), d.row) for d in handle.trace() if d.action == "nonfinite"] == [(s, 1) for s in range(1, 12)]
    # the extra FLOPs are one row's uncached calls, not the batch's
    per_row_call = stats.flops_full / (2 * 12)
    assert stats.flops_extra == pytest.approx(11 * per_row_call, rel=1e-9)
    handle.remove()


def test_the_drift_is_averaged_across_ranks_before_it_decides(model, monkeypatch):
    from forecache.core import distributed

    policy = DllmCache(100, rho=0.25, response_refresh="drift", drift_threshold=0.5)
    _, alone = generate(model, IDS, ATTN, cache=policy, return_stats=True, **RUN)
    monkeypatch.setattr(distributed, "active", lambda: True)
    monkeypatch.setattr(distributed, "mean", lambda value: value + 1.0)  # the other ranks drifted a lot
    _, ranks = generate(model, IDS, ATTN, cache=policy, return_stats=True, **RUN)
    assert len(alone["cache"]["response_refresh_steps"]) < 4
    # every reduced drift exceeds 0.5: each call that measures one (a call that does not refresh) refreshes the next
    assert ranks["cache"]["response_refresh_steps"] == list(range(0, 12, 2))


def test_a_policy_describes_its_method_as_json():
    described = dllm_cache(5, 3, 0.25).describe()
    assert described["where"] == [{"type": "LLaDALayers", "method": "DllmCache", **asdict(DllmCache(5, 3, 0.25))}]
    assert described["when"] == {"type": "Interval", "interval": 3, "warmup": 0, "cooldown": 0}
    assert json.loads(json.dumps(described)) == described


def test_core_apply_finds_the_llada_adapter(model):
    expected = generate(model, IDS, ATTN, cache=dllm_cache(5, 3, 0.25), **RUN)
    handle = apply(model, dllm_cache(5, 3, 0.25))
    assert type(handle.adapter).__name__ == "LLaDAAdapter"
    assert torch.equal(generate(model, IDS, ATTN, cache=handle, **RUN), expected)
    handle.remove()


def test_llada_layers_need_a_llada_and_a_method():
    with pytest.raises(ValueError, match="apply it to a forecache.dllm LLaDAModel"):
        apply(ToyTransformer(), llada_policy(DllmCache(), "dllm_cache", ""), ToyAdapter())
    with pytest.raises(ValueError, match="not a dLLM cache method"):
        LLaDALayers(object()).validate()
    with pytest.raises(ValueError, match="not a dLLM cache"):
        generate(tiny_llada(), IDS, ATTN, cache=object(), **RUN)
