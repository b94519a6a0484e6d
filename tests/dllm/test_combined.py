"""Fast-dLLM + dLLM-Cache (arXiv 2505.22618 + 2506.06295): exact identities, the schedule, FLOPs, isolation."""

from __future__ import annotations

import pytest
import torch
from forecache.core.flops import flop_counter
from forecache.core.presets.registry import build
from forecache.dllm.combined import CombinedCache, fast_dllm_cache
from forecache.dllm.dllm_cache import DllmCache
from forecache.dllm.fast_dllm import FastDllmCache
from forecache.dllm.model import LLaDAModel
from forecache.dllm.sampler import generate, pad_prompts
from torch import nn

from .tiny import run_layers, tiny_llada

VOCAB, MASK = 40, 39
PROMPTS = [[3, 4, 5, 6, 7, 8], [9, 10], [11, 12, 13]]
RUN = {"steps": 12, "gen_length": 12, "block_length": 4}  # 3 blocks of 4 calls


@pytest.fixture(scope="module")
def model() -> LLaDAModel:
    """Random weights, grouped-query attention, larger than the default init: confident, varied answers, so
    threshold decoding takes a varying number of calls per block."""
    return tiny_llada(n_layers=2, vocab=VOCAB, confident=True, rope_theta=10000.0)


def logged(model, policy, prompts=PROMPTS, **kw):
    """Tokens, every logits tensor the model returned, and the generation's stats."""
    ids, mask = pad_prompts(prompts, pad_id=0)
    logits: list[torch.Tensor] = []
    hook = model.register_forward_hook(lambda module, args, out: logits.append(out))
    try:
        tokens, stats = generate(model, ids, mask, cache=policy, return_stats=True, **kw)
    finally:
        hook.remove()
    return tokens, logits, stats


def same_run(a, b) -> bool:
    return torch.equal(a[0], b[0]) and len(a[1]) == len(b[1]) and all(torch.equal(x, y) for x, y in zip(a[1], b[1]))


@pytest.mark.parametrize("cfg_scale", [0.0, 1.5])
@pytest.mark.parametrize("decoding", [RUN, {"gen_length": 12, "block_length": 4, "threshold": 0.25}],
                         ids=["fixed", "threshold"])
def test_never_skip_setting_is_bit_identical(model, cfg_scale, decoding):
    plain = logged(model, None, cfg_scale=cfg_scale, **decoding)
    cached = logged(model, fast_dllm_cache(1, "answer"), cfg_scale=cfg_scale, **decoding)
    assert same_run(cached, plain)
    stats = cached[2]["cache"]
    assert stats["compute_fraction"] == 1.0 and stats["compute_ratio"] == 1.0
    assert stats["full_steps"] == list(range(plain[2]["steps"]))


@pytest.mark.parametrize("cfg_scale", [0.0, 1.5])
@pytest.mark.parametrize(("span", "dual"), [("block", True), ("suffix", False)])
def test_prompt_refresh_at_every_block_start_is_fast_dllm_bitwise(model, cfg_scale, span, dual):
    """With K_p = calls per block the prompt is refreshed exactly where Fast-dLLM refreshes everything, so the
    combination is Fast-dLLM's DualCache (span "block") or prefix cache (span "suffix"), every logit bitwise."""
    fast = logged(model, FastDllmCache(dual=dual), cfg_scale=cfg_scale, **RUN)
    combined = logged(model, CombinedCache(prompt_interval=4, span=span), cfg_scale=cfg_scale, **RUN)
    assert same_run(combined, fast)
    assert combined[2]["cache"]["compute_fraction"] == fast[2]["cache"]["compute_fraction"] < 1.0
    assert combined[2]["cache"]["block_start_steps"] == fast[2]["cache"]["refresh_steps"] == [0, 4, 8]


def test_schedule_and_compute_fraction_follow_the_plan(model):
    """P = 4, R = 12, blocks of 4, 4 calls per block, K_p = 5; per row and layer (16 tokens per call)."""
    prompt = [[3, 4, 5, 6]]
    _, _, stats = logged(model, CombinedCache(prompt_interval=5), prompt, **RUN)
    s = stats["cache"]
    assert s["block_start_steps"] == [0, 4, 8] and s["prompt_refresh_steps"] == [0, 5, 10]
    assert s["full_steps"] == [0] and s["span_refresh_steps"] == [1, 2, 3, 5, 6, 7, 9, 10, 11]
    # step 0 all 16; block starts 4, 8 the 12 answer tokens; steps 5, 10 prompt 4 + block 4; 7 others the block
    assert s["compute_fraction"] == (16 + 2 * 12 + 2 * 8 + 7 * 4) / (12 * 16)
    # V-verify in the block: K_r = 2, rho = 0.5 -> 2 of the 4 block tokens on calls 1 and 3 of each block
    _, _, stats = logged(model, CombinedCache(prompt_interval=5, refresh_interval=2, rho=0.5), prompt, **RUN)
    s = stats["cache"]
    assert s["span_refresh_steps"] == [2, 6, 10]
    # steps 0: 16; 1, 3, 7, 9, 11: 2 picks; 2, 6: the block; 4, 8: the answer; 5: prompt + 2 picks; 10: prompt + block
    assert s["compute_fraction"] == (16 + 5 * 2 + 2 * 4 + 2 * 12 + 6 + 8) / (12 * 16)
    assert s["v_verify_fraction"] == 6 * 4 / (12 * 16) and s["avg_selected_per_row"] == 2.0


class PoisonPrompt:
    """Wraps a CombinedCache: before every call, overwrites the stored attention outputs of the prompt with a
    sentinel; at the next call, records whether the call recomputed them (the sentinel is gone)."""

    SENTINEL = 1234.5

    def __init__(self, inner: CombinedCache, prompt_length: int) -> None:
        self.inner, self.prompt_length, self.recomputed = inner, prompt_length, []

    def trigger(self):
        return self.inner.trigger()

    def start(self, model, prompt_length, gen_length, block_length, *, storage=None):
        state, outer = self.inner.start(model, prompt_length, gen_length, block_length, storage=storage), self

        class State:
            def check(self):
                if state.store[0] is not None and state.steps:
                    prompt = [f.attn[:, : outer.prompt_length] for f in state.store]
                    if not all(bool((p == outer.SENTINEL).all()) for p in prompt):
                        outer.recomputed.append(state.steps - 1)

            def runner(self, x, step, block):
                self.check()
                for f in state.store:
                    if f is not None:
                        f.attn[:, : outer.prompt_length] = outer.SENTINEL
                return state.runner(x, step, block)

            def stats(self):
                self.check()
                return state.stats()

            def __getattr__(self, name):  # the rest of the state as it is
                return getattr(state, name)

        return State()


@pytest.mark.parametrize(("cfg_scale", "threshold"), [(0.0, 0.25), (1.5, 0.6)])  # thresholds that vary the calls
def test_the_prompt_is_recomputed_exactly_at_the_k_p_steps_under_threshold_decoding(model, cfg_scale, threshold):
    """Variable calls per block: blocks start where the sampler says, the prompt's features are recomputed at the
    calls with step % K_p == 0 and only there, and between refreshes they are not read (poisoning them changes
    nothing)."""
    prompt = [[3, 4, 5, 6, 7]]
    kwargs = {"gen_length": 16, "block_length": 4, "threshold": threshold, "cfg_scale": cfg_scale}
    policy = CombinedCache(prompt_interval=3)
    plain = logged(model, policy, prompt, **kwargs)
    poisoned_policy = PoisonPrompt(policy, 5)
    poisoned = logged(model, poisoned_policy, prompt, **kwargs)
    assert same_run(poisoned, plain)
    calls, stats = plain[2]["calls_per_block"], plain[2]["cache"]
    assert len(set(calls)) > 1  # blocks took different numbers of calls
    assert stats["block_start_steps"] == [sum(calls[:b]) for b in range(4)]
    assert stats["prompt_refresh_steps"] == [s for s in range(sum(calls)) if s % 3 == 0]
    assert poisoned_policy.recomputed == stats["prompt_refresh_steps"]


def test_flops_are_below_fast_dllm_and_dllm_cache_at_comparable_settings(model):
    """A 16-token prompt, 16 answer tokens in blocks of 4, 4 calls per block, no prompt refresh after step 0
    (K_p = 100). Fast-dLLM's DualCache recomputes the prompt at every block start; dLLM-Cache with its answer
    refresh at every block start (K_r = 4) and as many V-verify picks as the block has tokens (rho = 4/16)
    recomputes as many tokens as the combination but also computes every answer token's value at every call."""
    prompt = [list(range(1, 17))]
    run = {"steps": 16, "gen_length": 16, "block_length": 4}
    measured, stats = {}, {}
    policies = {"none": None, "fast_dllm": FastDllmCache(), "dllm_cache": DllmCache(100, 4, 0.25),
                "combined": CombinedCache(100), "combined_v_verify": CombinedCache(100, refresh_interval=2, rho=0.5)}
    for name, policy in policies.items():
        with flop_counter() as counter:  # counts the CPU's fused attention too
            _, _, out = logged(model, policy, prompt, **run)
        measured[name], stats[name] = counter.get_total_flops(), out["cache"]
    assert measured["combined"] < measured["dllm_cache"] < measured["fast_dllm"] < measured["none"]
    assert measured["combined_v_verify"] < measured["combined"]
    assert stats["combined"]["compute_fraction"] == stats["dllm_cache"]["compute_fraction"]
    for name in ("dllm_cache", "combined", "combined_v_verify"):  # the states' own tallies are exact
        assert stats[name]["flops"] == measured[name] and stats[name]["flops_full"] == measured["none"]


def test_states_are_per_request(model):
    ids = torch.tensor(PROMPTS[:1])
    other = torch.tensor([[30, 31, 32, 33, 34, 35]])
    P, policy = ids.shape[1], CombinedCache(prompt_interval=3, refresh_interval=2, rho=0.5)
    x = torch.cat([ids, torch.full((1, 12), MASK)], dim=1)
    y = torch.cat([other, torch.full((1, 12), MASK)], dim=1)
    at = torch.arange(P, P + 4).expand(1, -1)

    def call(state, tokens, step):
        return run_layers(model, state.runner(tokens, step, 0), tokens, logits_at=at)

    solo = policy.start(model, P, 12, 4)
    alone = [call(solo, x, step) for step in range(3)]
    a, b = policy.start(model, P, 12, 4), policy.start(model, P, 12, 4)
    interleaved = [(call(a, x, step), call(b, y, step)) for step in range(3)]
    assert all(torch.equal(mine, solo) for (mine, _), solo in zip(interleaved, alone))
    assert not torch.equal(interleaved[0][0], interleaved[0][1])
    assert a.store is not b.store and a.store[0] is not b.store[0]


def test_preset_defaults_citations_and_registry():
    assert fast_dllm_cache().where.method == CombinedCache(prompt_interval=20, span="block", refresh_interval=1, rho=0.0)
    assert "2505.22618" in fast_dllm_cache.__doc__ and "2506.06295" in fast_dllm_cache.__doc__
    policy = build("fast_dllm_cache", "dllm", prompt_interval=8, span="suffix")
    assert policy.where.method == CombinedCache(8, "suffix") and policy.name == "fast_dllm_cache"
    assert policy.describe()["when"] == {"type": "Interval", "interval": 1, "warmup": 0, "cooldown": 0}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt_interval": 0}, "prompt_interval=0 is invalid: must be an int >= 1"),
        ({"prompt_interval": True}, "prompt_interval=True"),
        ({"span": "blocks"}, "span='blocks'"),
        ({"refresh_interval": 2.0}, "refresh_interval=2.0"),
        ({"rho": -0.1, "refresh_interval": 2}, "rho=-0.1"),
        ({"rho": 1.5, "refresh_interval": 2}, "rho=1.5"),
        ({"rho": 0.25}, "set refresh_interval > 1"),
    ],
)
def test_bad_config_raises_a_value_error_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", "\\(")):
        CombinedCache(**kwargs)


def test_bad_use_raises(model):
    with pytest.raises(ValueError, match="pass a LLaDAModel"):
        CombinedCache().start(nn.Linear(2, 2), 4, 12, 4)
    with pytest.raises(ValueError, match="does not divide gen_length"):
        CombinedCache().start(model, 4, 12, 5)
    state = CombinedCache().start(model, 4, 12, 4)
    with pytest.raises(ValueError, match="prompt_length \\+ gen_length = 16"):
        state.runner(torch.zeros(1, 15, dtype=torch.long), 0, 0)
    with pytest.raises(ValueError, match="block=3 is outside \\[0, 3\\)"):
        state.runner(torch.zeros(1, 16, dtype=torch.long), 0, 3)
