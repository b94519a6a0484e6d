"""The dLLM caches on core: refresh decisions in a core Trace, stored features through a core Storage, core's keys."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch
from forecache.core.storage import CacheBudgetError, Storage
from forecache.core.telemetry import Decision
from forecache.dllm.combined import CombinedCache
from forecache.dllm.dllm_cache import DllmCache
from forecache.dllm.fast_dllm import FastDllmCache
from forecache.dllm.model import LLaDAModel
from forecache.dllm.prefix_store import PrefixStore, with_prefix
from forecache.dllm.sampler import generate, pad_prompts

from .tiny import MASK, run_layers, tiny_llada

RUN = {"steps": 12, "gen_length": 12, "block_length": 6}


pytestmark = pytest.mark.usefixtures("no_grad")  # threads: conftest's one_thread


@pytest.fixture(scope="module")
def model() -> LLaDAModel:
    return tiny_llada()


IDS, ATTN = pad_prompts([[5, 9, 2, 17, 30], [8, 1, 44]], pad_id=0)


def steps_of(trace, site, action=None):
    # t is the call's index in the generation (step counts the calls of its block)
    return [int(d.t) for d in trace if d.site == site and (d.computed if action is None else d.action == action)]


@pytest.mark.parametrize("cfg_scale", [0.0, 1.5])
def test_a_dllm_cache_generation_traces_its_refresh_decisions(model, cfg_scale):
    _, stats = generate(model, IDS, ATTN, cache=DllmCache(5, 3, 0.25), cfg_scale=cfg_scale, return_stats=True,
                        **RUN)
    trace, cache = stats["trace"], stats["cache"]
    assert cache["prompt_refresh_steps"] == [0, 5, 10] and cache["response_refresh_steps"] == [0, 3, 6, 9]
    assert steps_of(trace, "prompt") == cache["prompt_refresh_steps"]
    assert steps_of(trace, "response") == cache["response_refresh_steps"]
    # t: the call's index in the generation; step: its index in its block (the segment)
    assert [(d.t, d.step, d.site) for d in trace] == [(s, s % 6, p) for s in range(12) for p in ("prompt", "response")]
    assert {(d.row, d.branch, d.generation) for d in trace} == {(-1, 0, 0)}  # whole-call decisions
    assert [d.segment for d in trace[::2]] == [s // 6 for s in range(12)]  # the block being decoded
    # the interval's metric: model calls since the part was last refreshed
    assert [d.metric for d in trace if d.site == "response"] == [None, 1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2]
    rebuilt = [Decision(**d) for d in json.loads(trace.to_json())]
    assert rebuilt == list(trace) and json.loads(trace.to_json()) == [asdict(d) for d in trace]


def test_drift_decisions_are_traced_with_the_summed_drift(model):
    policy = DllmCache(5, rho=0.25, response_refresh="drift", drift_threshold=0.15)
    _, stats = generate(model, IDS, ATTN, cache=policy, return_stats=True, **RUN)
    trace, cache = stats["trace"], stats["cache"]
    assert len(cache["response_refresh_steps"]) > 1  # the tiny model drifts past 0.15
    assert steps_of(trace, "response", "compute") == cache["response_refresh_steps"]
    response = {int(d.t): d for d in trace if d.site == "response"}
    assert response[0].note is not None  # the first call must refresh: nothing is stored
    for step, _, accumulated in cache["drift"]:  # each call's summed drift is what the next call's decision read
        if step + 1 in response:
            assert response[step + 1].metric == accumulated
            assert response[step + 1].computed == (accumulated > 0.15)


def test_a_new_batch_size_is_a_warmup_outside_the_interval(model):
    state = DllmCache(3, 2, 0.25).start(model, 5, 12, 6)
    for step in range(6):
        rows = 2 if step < 4 else 1
        x = torch.cat([IDS[:rows], torch.full((rows, 12), MASK)], 1)
        run_layers(model, state.runner(x, step, 0), x)
    trace, stats = state.trace(), state.stats()
    assert stats["prompt_refresh_steps"] == [0, 3] and stats["response_refresh_steps"] == [0, 2, 4]
    assert stats["full_steps"] == [0, 4]  # step 4 has one row: the store was dropped, every layer computed
    assert steps_of(trace, "prompt", "compute") == [0, 3] and steps_of(trace, "prompt") == [0, 3, 4]
    assert [d.action for d in trace if d.step == 4] == ["warmup", "compute"]


def test_the_combination_traces_prompt_and_span(model):
    policy = CombinedCache(4, "answer", 2, 0.25)
    _, stats = generate(model, IDS, ATTN, cache=policy, return_stats=True, **RUN)
    trace, cache = stats["trace"], stats["cache"]
    assert steps_of(trace, "prompt", "compute") == cache["prompt_refresh_steps"] == [0, 4, 8]
    assert steps_of(trace, "span", "warmup") == cache["block_start_steps"] == [0, 6]
    assert steps_of(trace, "span", "compute") == cache["span_refresh_steps"] == [2, 4, 8, 10]
    assert json.loads(trace.to_json())[0]["site"] == "prompt"


def test_fast_dllm_and_prefix_reuse_expose_their_trace(model):
    _, stats = generate(model, IDS, ATTN, cache=FastDllmCache(), return_stats=True, **RUN)
    # the first call has nothing stored (a warm-up); the next block's first call is SegmentStart's compute
    assert steps_of(stats["trace"], "kv", "warmup") == [0] and steps_of(stats["trace"], "kv", "compute") == [6]
    assert steps_of(stats["trace"], "kv") == stats["cache"]["refresh_steps"] == [0, 6]
    assert stats["cache"]["peak_cache_bytes"] > 0 and "cache_bytes_peak" not in stats["cache"]  # one spelling
    _, stats = generate(model, IDS, ATTN, cache=with_prefix(DllmCache(5, 3), PrefixStore(), 2), return_stats=True,
                        **RUN)
    assert steps_of(stats["trace"], "response") == stats["cache"]["response_refresh_steps"]


def test_features_are_kept_through_a_core_storage_with_its_budget(model):
    b, layers, length = 2, 3, 17
    per_layer = b * length * 4 * (2 * 2 * 8 + 2 * 32)  # float32 keys and values (2 heads of 8), attn and ffn (32)
    storage = Storage()
    state = DllmCache(5, 3, 0.25).start(model, 5, 12, 6, storage=storage)
    x = torch.cat([IDS, torch.full((2, 12), MASK)], 1)
    run_layers(model, state.runner(x, 0, 0), x, ATTN.new_ones(2, 17))
    stats = state.stats()
    assert stats["peak_cache_bytes"] == storage.peak_bytes == layers * per_layer
    assert storage.bytes == state.nbytes == layers * per_layer
    assert stats["compute_ratio"] == 1.0 and "flops_fraction" not in stats  # the first call computes everything
    budget = DllmCache(5, 3, 0.25).start(model, 5, 12, 6, storage=Storage(max_bytes=2 * per_layer))
    with pytest.raises(CacheBudgetError, match="max_cache_bytes"):
        run_layers(model, budget.runner(x, 0, 0), x)  # the third layer does not fit
    with pytest.raises(ValueError, match="dtype"):
        CombinedCache().start(model, 5, 12, 6, storage=Storage(dtype=torch.bfloat16))


def test_fast_dllm_keeps_its_keys_and_values_through_a_core_storage(model):
    b, layers, length = 2, 3, 17
    per_layer = b * length * 4 * 2 * 2 * 8  # float32 keys and values, 2 kv heads of 8
    storage = Storage()
    _, stats = generate(model, IDS, ATTN, cache=FastDllmCache(), return_stats=True, **RUN)
    state = FastDllmCache().start(model, 5, 12, 6, storage=storage)
    x = torch.cat([IDS, torch.full((2, 12), MASK)], 1)
    for step, block in ((0, 0), (1, 0), (2, 1)):  # a block start, a cached call, the next block's start
        run_layers(model, state.runner(x, step, block), x, ATTN.new_ones(2, 17))
    assert storage.bytes == state.nbytes == storage.peak_bytes == layers * per_layer  # the old block's K/V given back
    assert state.stats()["peak_cache_bytes"] == stats["cache"]["peak_cache_bytes"]
    prefix = FastDllmCache(dual=False).start(model, 5, 12, 6, storage=Storage())
    run_layers(model, prefix.runner(x, 0, 1), x)
    assert prefix.stats()["peak_cache_bytes"] == layers * per_layer * 11 // 17  # the prefix [0, 5 + 6) only
    budget = FastDllmCache().start(model, 5, 12, 6, storage=Storage(max_bytes=2 * per_layer))
    with pytest.raises(CacheBudgetError, match="max_cache_bytes"):
        run_layers(model, budget.runner(x, 0, 0), x)  # the third layer does not fit
    assert budget.k[2] is None and budget.storage.bytes == 2 * per_layer
    with pytest.raises(ValueError, match="storage.dtype=torch.bfloat16 is invalid"):
        FastDllmCache().start(model, 5, 12, 6, storage=Storage(dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="must be a forecache.core.storage.Storage or None"):
        FastDllmCache().start(model, 5, 12, 6, storage=1024)


def test_a_new_batch_size_gives_the_dropped_bytes_back(model):
    storage = Storage()
    state = CombinedCache(4).start(model, 5, 12, 6, storage=storage)
    for rows in (2, 1):
        x = torch.cat([IDS[:rows], torch.full((rows, 12), MASK)], 1)
        run_layers(model, state.runner(x, 0, 0), x)
    assert storage.bytes == state.nbytes and storage.peak_bytes == 2 * state.nbytes  # one row now, two at the peak


def calls_of(trace):
    """Each model call's decisions, by site."""
    calls: dict[int, dict[str, Decision]] = {}
    for d in trace:
        calls.setdefault(int(d.t), {})[d.site] = d
    return calls


@pytest.mark.parametrize("policy", [DllmCache(5, 3, 0.25), DllmCache(3, 2, 1.0),
                                    DllmCache(4, rho=0.25, response_refresh="drift", drift_threshold=0.1),
                                    CombinedCache(4, "answer", 2, 0.25), CombinedCache(3, "block", 2, 0.25),
                                    CombinedCache(2, "suffix", 3, 1.0), FastDllmCache(), FastDllmCache(dual=False)])
def test_the_stats_lists_are_what_the_trace_says(model, policy):
    """The steps lists and the call count are read from the trace: a call refreshed a part iff its decision there
    is "compute"; it computed everything iff nothing was reused (for the combination: the prompt not reused and
    the whole answer recomputed, at a block's start or by a span that is the whole answer)."""
    _, stats = generate(model, IDS, ATTN, cache=policy, return_stats=True, **RUN)
    trace, cache, calls = stats["trace"], stats["cache"], calls_of(stats["trace"])
    assert cache["steps"] == len(calls) == stats["model_calls"]
    if isinstance(policy, FastDllmCache):
        assert cache["refresh_steps"] == steps_of(trace, "kv")
        return
    assert cache["prompt_refresh_steps"] == steps_of(trace, "prompt", "compute")
    if isinstance(policy, DllmCache):
        assert cache["response_refresh_steps"] == steps_of(trace, "response", "compute")
        assert cache["full_steps"] == [s for s, c in calls.items() if all(d.computed for d in c.values())]
        return
    assert cache["span_refresh_steps"] == steps_of(trace, "span", "compute")
    assert cache["block_start_steps"] == steps_of(trace, "span", "warmup")

    def whole_answer(span: Decision) -> bool:  # RUN has 2 blocks: the suffix of the first is the answer
        return span.action == "warmup" or span.action == "compute" and (
            policy.span == "answer" or policy.span == "suffix" and span.segment == 0)

    assert cache["full_steps"] == [s for s, c in calls.items() if c["prompt"].computed and whole_answer(c["span"])]
    assert cache["full_steps"]  # the first call at least


def test_a_trace_edited_out_of_shape_is_refused(model):
    state = CombinedCache(4).start(model, 5, 12, 6)
    x = torch.cat([IDS, torch.full((2, 12), MASK)], 1)
    run_layers(model, state.runner(x, 0, 0), x)
    state.trace().pop()
    with pytest.raises(ValueError, match="expected \\['prompt', 'span'\\]"):
        state.stats()
