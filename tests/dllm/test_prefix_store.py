"""Few-shot prefixes shared across requests (forecache.dllm.prefix_store): the exact case, the approximation,
isolation of prefixes, left padding, eviction and budget, bad input."""

from __future__ import annotations

import pytest
import torch
from forecache.core.policy import Policy
from forecache.core.flops import flop_counter
from forecache.dllm.combined import fast_dllm_cache
from forecache.dllm.dllm_cache import DllmCache
from forecache.dllm.fast_dllm import FastDllmCache
from forecache.dllm.model import LLaDAModel
from forecache.dllm.prefix_store import PrefixEntry, PrefixStore, with_prefix
from forecache.dllm.sampler import generate, pad_prompts

from .row_invariant import row_invariant
from .tiny import MASK, run_layers, tiny_llada

RUN = {"steps": 12, "gen_length": 12, "block_length": 4}
SHOTS = [5, 9, 2, 17, 30, 11]  # the shared few-shot prefix
A, B = SHOTS + [40, 41], SHOTS + [42, 43, 44]  # two requests with it
LAYERS = 3


def tiny_model(seed: int = 0) -> LLaDAModel:
    return tiny_llada(LAYERS, seed)


@pytest.fixture(scope="module")
def model() -> LLaDAModel:
    return tiny_model()


@pytest.fixture(scope="module")
def exact_model(model) -> LLaDAModel:
    """``model`` with every linear layer row-invariant. CPU attention is already row-invariant in its queries, so
    computing some tokens of a layer gives bitwise what computing all of them gives for those tokens."""
    return row_invariant(model)


def logged(model, policy, prompts, **kw):
    """Tokens, every logits tensor the model returned, and the cache stats of one generation."""
    ids, mask = pad_prompts(prompts, pad_id=0)
    logits: list[torch.Tensor] = []
    hook = model.register_forward_hook(lambda module, args, out: logits.append(out))
    try:
        tokens, stats = generate(model, ids, mask, cache=policy, return_stats=True, **{**RUN, **kw})
    finally:
        hook.remove()
    return tokens, logits, stats["cache"]


def first_call(model, policy, prompts):
    """Run only the first model call of a request (``policy``: a core policy or a method); return the state and the
    logits."""
    ids, mask = pad_prompts(prompts, pad_id=0)
    x = torch.cat([ids, torch.full((len(prompts), 12), MASK)], dim=1)
    mask = torch.cat([mask, torch.ones(len(prompts), 12, dtype=torch.long)], dim=1)
    method = policy.where.method if isinstance(policy, Policy) else policy
    state = method.start(model, ids.shape[1], 12, 4)
    logits = run_layers(model, state.runner(x, 0, 0), x, mask)
    return state, logits


POLICIES = {"dllm_cache": DllmCache(4, 3, 0.25), "fast_dllm_cache": fast_dllm_cache(5, refresh_interval=2, rho=0.5)}


@pytest.mark.parametrize("name", list(POLICIES))
@pytest.mark.parametrize("cfg_scale", [0.0, 1.5])
def test_an_identical_second_request_runs_exactly_as_without_the_store(exact_model, name, cfg_scale):
    """The equality that holds: features stored by an identical request are the ones this request computes, so
    filling them instead changes nothing (tokens and every logit bitwise) and computes fewer token-layers."""
    policy = POLICIES[name]
    alone = logged(exact_model, policy, [A], cfg_scale=cfg_scale)
    shared = with_prefix(policy, PrefixStore(), prefix_length=len(SHOTS))
    first = logged(exact_model, shared, [A], cfg_scale=cfg_scale)
    second = logged(exact_model, shared, [A], cfg_scale=cfg_scale)
    for run in (first, second):
        assert torch.equal(run[0], alone[0])
        assert all(torch.equal(a, b) for a, b in zip(run[1], alone[1], strict=True))
    rows = 2 if cfg_scale else 1  # the unconditional row's masked prompt is a prefix of mask ids, stored alike
    assert first[2]["computed"] == alone[2]["computed"] and first[2]["prefix"]["stored"] == rows
    assert second[2]["computed"] == alone[2]["computed"] - rows * len(SHOTS) * LAYERS
    assert second[2]["prefix"]["hits"] == rows and second[2]["prefix"]["reused_token_layers"] == rows * 6 * LAYERS
    assert second[2]["prefix"]["stored"] == 0 and second[2]["compute_fraction"] < alone[2]["compute_fraction"]


def test_with_stock_kernels_an_identical_request_is_close(model):
    alone = logged(model, POLICIES["dllm_cache"], [A])
    shared = with_prefix(POLICIES["dllm_cache"], PrefixStore(), prefix_length=len(SHOTS))
    logged(model, shared, [A])
    second = logged(model, shared, [A])
    assert torch.equal(second[0], alone[0])
    for a, b in zip(second[1], alone[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_another_request_reads_the_stored_prefix_and_computes_only_the_rest(model):
    store = PrefixStore()
    shared = with_prefix(DllmCache(4, 3, 0.25), store, prefix_length=len(SHOTS))
    first_call(model, shared, [A])
    entry = store.lookup(B)
    assert entry is not None and entry.tokens == tuple(SHOTS) and entry.k.shape == (LAYERS, 2, 6, 8)
    state, logits = first_call(model, shared, [B])
    _, alone = first_call(model, DllmCache(4, 3, 0.25), [B])
    for i, features in enumerate(state.store):
        assert torch.equal(features.k[0, :, :6], entry.k[i]) and torch.equal(features.ffn[0, :6], entry.ffn[i])
    assert not torch.allclose(logits, alone)  # the prefix's features came from A's sequence: an approximation
    assert state.computed == LAYERS * (len(B) + 12 - len(SHOTS))


def test_different_prefixes_do_not_collide_and_the_longest_stored_prefix_wins(model):
    store = PrefixStore()
    shared = with_prefix(DllmCache(4, 3, 0.25), store, prefix_length=6)
    other = [5, 9, 2, 17, 30, 12] + [40, 41]  # differs from SHOTS in its last token only
    first_call(model, shared, [A])
    state, _ = first_call(model, shared, [other])
    assert state.stats()["prefix"]["hits"] == 0 and len(store) == 2
    stored_other = store.lookup(other)
    assert stored_other.tokens == tuple(other[:6]) and not torch.equal(stored_other.k, store.lookup(A).k)
    state, _ = first_call(model, shared, [A])
    assert state.stats()["prefix"]["hits"] == 1
    assert torch.equal(state.store[2].k[0, :, :6], store.lookup(A).k[2])
    # a shorter stored prefix is used when no longer one matches; the longest when several do
    short = PrefixEntry(tuple(SHOTS[:3]), *(torch.zeros(LAYERS, 1) for _ in range(4)))
    store.put(short)
    assert store.lookup(A).tokens == tuple(SHOTS)
    assert store.lookup(SHOTS[:4] + [1, 2]) is short
    assert store.lookup([5, 9]) is None and store.lookup([]) is None


def test_left_padding_puts_the_prefix_at_each_rows_first_real_token(model):
    """Positions are per row, so a prefix stored unpadded fills a padded row at its first real column; the
    padded row's answer is the one it gets alone. A batch mixing a reusing and a computing row works too."""
    store = PrefixStore()
    shared = with_prefix(DllmCache(4, 3, 0.25), store, prefix_length=len(SHOTS))
    alone_a = logged(model, shared, [A])  # stores SHOTS
    again_a = logged(model, shared, [A])
    longer = [7, 7, 7, 7] + A  # 4 more tokens: A's row is left-padded by 4 in the batch
    batch = logged(model, shared, [longer, A])
    assert batch[2]["prefix"]["hits"] == 1 and batch[2]["prefix"]["stored"] == 1  # `longer` stores its own
    assert torch.equal(batch[0][1, 4:], again_a[0][0])
    state, _ = first_call(model, shared, [longer, A])
    entry = store.lookup(A)
    for i, features in enumerate(state.store):
        assert torch.equal(features.k[1, :, 4:10], entry.k[i]) and torch.equal(features.attn[1, 4:10], entry.attn[i])
    assert torch.equal(alone_a[0], again_a[0])


def test_a_prefix_stored_from_a_padded_row_is_the_unpadded_rows(exact_model):
    store = PrefixStore()
    shared = with_prefix(DllmCache(4, 3, 0.25), store, prefix_length=len(SHOTS))
    first_call(exact_model, shared, [[7] * 5 + B, A])  # A's row padded by 6: stores SHOTS from it
    padded = store.lookup(A)
    store.clear()
    first_call(exact_model, shared, [A])
    for name in ("k", "v", "attn", "ffn"):  # masked keys add exact zeros to attention: close, not bitwise
        torch.testing.assert_close(getattr(padded, name), getattr(store.lookup(A), name), rtol=1e-5, atol=1e-6)


def test_rows_shorter_than_the_prefix_store_nothing(model):
    store = PrefixStore()
    state, _ = first_call(model, with_prefix(DllmCache(), store, prefix_length=20), [A])
    assert len(store) == 0 and state.stats()["prefix"]["stored"] == 0


def test_flop_tally_of_a_filled_first_call_equals_the_counter(model):
    shared = with_prefix(DllmCache(4, 3, 0.25), PrefixStore(), prefix_length=len(SHOTS))
    logged(model, shared, [A, B])
    with flop_counter() as counter:
        run = logged(model, shared, [B, [7, 7] + A])  # one row reuses, one computes all: ragged, filled up
    assert run[2]["prefix"]["hits"] == 1 and run[2]["flops"] == counter.get_total_flops()


def entry(tokens, nbytes_per_layer=64):
    """A stored entry of ``tokens`` whose tensors hold ``LAYERS * nbytes_per_layer`` bytes in all."""
    return PrefixEntry(tuple(tokens), *(torch.zeros(LAYERS, nbytes_per_layer // 16) for _ in range(4)))


def test_least_recently_used_prefixes_are_evicted_by_count_and_by_bytes(model):
    store = PrefixStore(max_entries=2)
    store.put(entry([1]))
    store.put(entry([2]))
    assert store.lookup([1, 5]).tokens == (1,)  # a hit makes [1] the most recent
    store.put(entry([3]))
    assert store.keys() == [(1,), (3,)] and store.stats()["evictions"] == 1
    budget = PrefixStore(max_entries=10, max_bytes=2 * LAYERS * 64)
    for tokens in ([1], [2], [3]):
        budget.put(entry(tokens))
    assert budget.keys() == [(2,), (3,)] and budget.nbytes == 2 * LAYERS * 64
    # through generation: one entry, two prefixes in turn
    small = PrefixStore(max_entries=1)
    shared = with_prefix(DllmCache(), small, prefix_length=6)
    first_call(model, shared, [A])
    first_call(model, shared, [[1, 2, 3, 4, 5, 6, 7]])
    assert small.keys() == [(1, 2, 3, 4, 5, 6)] and small.lookup(A) is None


def test_bad_inputs_raise_value_errors_naming_the_fix(model):
    for kwargs, message in [({"max_entries": 0}, "max_entries=0"), ({"max_entries": True}, "max_entries=True"),
                            ({"max_bytes": 0}, "max_bytes=0"), ({"max_bytes": 1.5}, "max_bytes=1.5")]:
        with pytest.raises(ValueError, match=message):
            PrefixStore(**kwargs)
    store = PrefixStore()
    for prefix_length in (0, True, 2.5):
        with pytest.raises(ValueError, match="prefix_length"):
            with_prefix(DllmCache(), store, prefix_length)
    with pytest.raises(ValueError, match="not a cache policy"):
        with_prefix(object(), store, 4)
    with pytest.raises(ValueError, match="not a PrefixStore"):
        with_prefix(DllmCache(), {}, 4)
    with pytest.raises(ValueError, match="keeps no per-token features"):
        with_prefix(FastDllmCache(), store, 4).where.method.start(model, 8, 12, 4)
    with pytest.raises(ValueError, match="reuse_unchanged_qkv=0"):
        with_prefix(DllmCache(reuse_unchanged_qkv=1), store, 4).where.method.start(model, 8, 12, 4)
    with pytest.raises(ValueError, match="prefix is empty"):
        store.put(entry([]))
    with pytest.raises(ValueError, match="max_bytes=100; raise max_bytes or lower prefix_length"):
        PrefixStore(max_bytes=100).put(entry([1, 2], nbytes_per_layer=64))
    # the budget is checked before the first call computes anything
    with pytest.raises(ValueError, match="6-token prefix takes 6912 bytes, more than max_bytes=1000"):
        first_call(model, with_prefix(DllmCache(), PrefixStore(max_bytes=1000), 6), [A])
    # one store per model
    first_call(model, with_prefix(DllmCache(), store, 6), [A])
    with pytest.raises(ValueError, match="one PrefixStore per model"):
        with_prefix(DllmCache(), store, 6).where.method.start(tiny_model(seed=1), 8, 12, 4)
    # right padding: real tokens must be last
    state = with_prefix(DllmCache(), PrefixStore(), 2).where.method.start(model, 4, 12, 4)
    x = torch.cat([torch.tensor([[5, 9, 0, 0]]), torch.full((1, 12), MASK)], dim=1)
    mask = torch.tensor([[1, 1, 0, 0] + [1] * 12])
    with pytest.raises(ValueError, match="left-padded prompts"):
        run_layers(model, state.runner(x, 0, 0), x, mask)
