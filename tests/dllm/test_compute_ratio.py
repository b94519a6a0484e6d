"""What a dLLM cache's ``compute_ratio`` compares with (the definition in ``CachedLayers.layer_stats``): the uncached
model on the model calls the generation made. On LLaDA's fixed schedule that is the uncached run of the same
request; under threshold decoding, where a cache changes how many calls a block takes, the ratio to the uncached
run of the same request is ``compute_ratio * model_calls / uncached model_calls``, exactly."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from forecache.core.flops import flop_counter
from forecache.dllm.combined import CombinedCache
from forecache.dllm.dllm_cache import DllmCache
from forecache.dllm.fast_dllm import FastDllmCache
from forecache.dllm.model import LLaDAModel
from forecache.dllm.sampler import generate, pad_prompts

from .tiny import tiny_llada

VOCAB, MASK = 40, 39
PROMPTS = [[3, 4, 5, 6, 7, 8], [9, 10], [11, 12, 13]]  # left-padded: padded rows too
SAME_LENGTH = [[3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 5, 6]]  # a request whose cached answers take fewer calls


@pytest.fixture(scope="module")
def model() -> LLaDAModel:
    """Random weights large enough to be confident, grouped-query attention: threshold decoding commits several
    tokens in some calls, so a cache can change the number of calls."""
    return tiny_llada(vocab=VOCAB, confident=True)


def counted(model, policy, prompts=PROMPTS, **decoding) -> tuple[int, dict]:
    """The FLOPs one generation of ``prompts`` executes (counted, the CPU's fused attention included), its
    stats."""
    ids, mask = pad_prompts(prompts, pad_id=0)
    with torch.no_grad(), flop_counter() as counter:
        _, stats = generate(model, ids, mask, cache=policy, return_stats=True, **decoding)
    return counter.get_total_flops(), stats


POLICIES = [DllmCache(4, 3, 0.25), DllmCache(3, 100, 0.5, verify_scope="prefix", always_full_layers=1),
            CombinedCache(4, "answer", 2, 0.25)]


@pytest.mark.parametrize("policy", POLICIES, ids=["dllm_cache", "prefix_scope", "combined"])
def test_on_the_fixed_schedule_the_ratio_is_to_the_uncached_run_of_the_same_request(model, policy):
    decoding = {"steps": 12, "gen_length": 12, "block_length": 4}
    uncached, plain = counted(model, None, **decoding)
    flops, stats = counted(model, policy, **decoding)
    cache = stats["cache"]
    assert stats["model_calls"] == plain["model_calls"] == 12  # the schedule fixes the calls
    assert cache["flops"] == flops and cache["flops_full"] == uncached
    assert cache["compute_ratio"] == flops / uncached < 1


def test_under_threshold_decoding_the_ratio_is_over_the_calls_made(model):
    """A cache whose answers take fewer calls than the uncached run's: ``flops_full`` is the uncached model on the
    calls made, not the uncached run, and the whole-run ratio follows from the two call counts."""
    decoding = {"gen_length": 12, "block_length": 4, "threshold": 0.25}
    uncached, plain = counted(model, None, SAME_LENGTH, **decoding)
    flops, stats = counted(model, POLICIES[1], SAME_LENGTH, **decoding)
    cache, calls, uncached_calls = stats["cache"], stats["model_calls"], plain["model_calls"]
    assert calls < uncached_calls  # the case the definition is about: the cache changed the number of calls
    assert cache["flops"] == flops
    assert cache["flops_full"] * uncached_calls == uncached * calls  # the uncached model's cost, per call alike
    assert cache["compute_ratio"] == cache["flops"] / cache["flops_full"]
    whole_run = Fraction(flops, uncached)
    assert whole_run == Fraction(cache["flops"], cache["flops_full"]) * Fraction(calls, uncached_calls)
    assert float(whole_run) < cache["compute_ratio"]  # fewer calls: the run saves more than the per-call ratio


FAST = [FastDllmCache(), FastDllmCache(dual=False)]


@pytest.mark.parametrize("policy", FAST, ids=["dual", "prefix"])
@pytest.mark.parametrize("cfg_scale", [0.0, 1.5])
def test_fast_dllm_tallies_the_flops_it_executes(model, policy, cfg_scale):
    """Fast-dLLM's tally (head at the block, full layers at a block's start, the span over every key otherwise)
    is the counted FLOPs of its run, and ``flops_full`` the uncached run's on LLaDA's fixed schedule."""
    decoding = {"steps": 12, "gen_length": 12, "block_length": 4, "cfg_scale": cfg_scale}
    uncached, _ = counted(model, None, **decoding)
    flops, stats = counted(model, policy, **decoding)
    cache = stats["cache"]
    assert cache["flops"] == flops and cache["flops_full"] == uncached
    assert cache["compute_ratio"] == flops / uncached < 1


def test_fast_dllm_under_threshold_decoding_the_ratio_is_over_the_calls_made(model):
    decoding = {"gen_length": 12, "block_length": 4, "threshold": 0.25}
    uncached, plain = counted(model, None, SAME_LENGTH, **decoding)
    flops, stats = counted(model, FAST[0], SAME_LENGTH, **decoding)
    cache, calls, uncached_calls = stats["cache"], stats["model_calls"], plain["model_calls"]
    assert cache["flops"] == flops
    assert cache["flops_full"] * uncached_calls == uncached * calls
    assert cache["compute_ratio"] == cache["flops"] / cache["flops_full"] < 1
