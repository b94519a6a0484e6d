"""Fast-dLLM (arXiv 2505.22618): threshold/factor parallel decoding in the sampler and the block-wise KV cache."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import pytest
import torch
from forecache.dllm.config import LLaDAConfig
from forecache.dllm.decoding import factor_count, threshold_count
from forecache.dllm.fast_dllm import FastDllm, FastDllmCache, fast_dllm
from forecache.dllm.model import LLaDAModel
from forecache.dllm.sampler import generate, pad_prompts
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .tiny import run_layers

MASK = 7  # the stand-in's mask id (vocabulary 0..7)
LMASK = 39  # the tiny LLaDA's mask id (vocabulary 0..39)


class TableModel(nn.Module):
    """Logits depend only on the per-row position p: ``heights[p]`` on ``tokens[p]``, 0 on the 7 other tokens,
    so the confidence of position p is ``e^h / (e^h + 7)`` at every step. Records every call."""

    def __init__(self, heights: list[float], tokens: list[int]) -> None:
        super().__init__()
        self.config = SimpleNamespace(mask_token_id=MASK, vocab_size=8, embedding_size=8, max_sequence_length=64)
        self.table = torch.zeros(len(heights), 8, dtype=torch.float64)
        self.table[torch.arange(len(heights)), torch.tensor(tokens)] = torch.tensor(heights, dtype=torch.float64)
        self.calls: list[torch.Tensor] = []

    def forward(self, input_ids, attention_mask=None, *, logits_at=None):
        self.calls.append(input_ids.clone())
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        logits = self.table[(mask.cumsum(1) - 1).clamp(min=0)]
        return logits.gather(1, logits_at[..., None].expand(-1, -1, 8))


def committed_per_call(model: TableModel, out: torch.Tensor, row: int = 0) -> list[list[int]]:
    """The columns each call committed, from the inputs of consecutive calls and the final output."""
    seen = [ids[row] for ids in model.calls] + [out[row]]
    return [((a == MASK) & (b != MASK)).nonzero().flatten().tolist() for a, b in itertools.pairwise(seen)]


def tiny_llada(seed: int = 0) -> LLaDAModel:
    config = LLaDAConfig(
        d_model=32, n_heads=4, n_kv_heads=2, n_layers=2, mlp_hidden_size=64, vocab_size=40, embedding_size=40,
        max_sequence_length=128, mask_token_id=LMASK, rope_theta=10000.0, eos_token_id=1, pad_token_id=0,
    )
    torch.manual_seed(seed)
    model = LLaDAModel(config).eval()
    with torch.no_grad():  # larger weights than the default init: confident, varied answers
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(std=1.0 if name.startswith("wte") else 0.3)
    return model


@pytest.fixture(scope="module")
def llada() -> LLaDAModel:
    return tiny_llada()


PROMPTS = [[3, 4, 5, 6, 7, 8], [9, 10], [11, 12, 13]]


# --- the commit rules ---------------------------------------------------------------------------------------------


def test_threshold_count_keeps_what_reaches_it_and_at_least_one():
    inf = -math.inf
    confidence = torch.tensor([
        [0.95, 0.2, 0.9, 0.89, inf],  # 0.95 and 0.9 reach 0.9 (>= counts)
        [0.5, 0.3, inf, inf, inf],  # none reaches it: the most confident one anyway
        [inf, inf, inf, inf, inf],  # nothing masked: nothing
        [1.0, 1.0, 1.0, 0.1, 0.99],
    ], dtype=torch.float64)
    assert threshold_count(confidence, 0.9).tolist() == [2, 1, 0, 4]
    assert threshold_count(confidence, 1.0).tolist() == [1, 1, 0, 3]


def test_factor_count_takes_the_largest_prefix_with_n_plus_one_times_error_within_factor():
    inf = -math.inf
    # sorted c: 0.99, 0.8, 0.74, ... ; f = 1: need c_(2) >= 2/3, c_(3) >= 3/4, c_(4) >= 4/5
    confidence = torch.tensor([
        [0.74, 0.99, 0.8, inf, 0.1],  # 0.99 (forced), 0.8 >= 0.667, 0.74 < 0.75 -> 2
        [0.3, 0.2, inf, inf, inf],  # 0.2 < 0.667 -> only the forced first
        [0.99, 0.98, 0.97, 0.96, 0.95],  # thresholds 0.5 .. 5/6 all met -> 5
        [inf, inf, inf, inf, inf],
    ], dtype=torch.float64)
    assert factor_count(confidence, 1.0).tolist() == [2, 1, 5, 0]
    # a larger factor is looser: f = 2 gives thresholds 1/3, 1/2, 3/5, 2/3 for j = 2..5
    assert factor_count(confidence, 2.0).tolist() == [3, 1, 5, 0]


def test_threshold_decoding_commits_exactly_the_confident_tokens_and_ends_the_block_early():
    # block of 8: confidence e^h / (e^h + 7) >= 0.9 iff h >= ln 63 = 4.14 -> heights 5, 6, 4.5, 7 go at once
    heights = [9.0] * 3 + [5.0, 0.5, 6.0, 3.0, 4.5, 1.0, 2.0, 7.0]
    tokens = [0] * 3 + [1, 2, 3, 4, 5, 6, 1, 2]
    model = TableModel(heights, tokens)
    out, stats = generate(model, torch.tensor([[4, 5, 6]]), gen_length=8, block_length=8, threshold=0.9,
                          return_stats=True)
    # then one per call, most confident first: 3.0, 2.0, 1.0, 0.5
    assert committed_per_call(model, out) == [[3, 5, 7, 10], [6], [9], [8], [4]]
    assert out[0, 3:].tolist() == tokens[3:]
    assert stats["model_calls"] == stats["steps"] == 5  # < block_length 8
    assert stats["calls_per_block"] == [5] and stats["row_calls"] == [5] and stats["tokens_per_call"] == 8 / 5


def test_threshold_blocks_are_decoded_in_order_and_steps_are_ignored():
    heights = [9.0] * 2 + [6.0, 6.0, 1.0, 2.0] + [8.0, 8.0, 8.0, 8.0]
    model = TableModel(heights, [1] * 10)
    out, stats = generate(model, torch.tensor([[4, 5]]), steps=3, gen_length=8, block_length=4, threshold=0.9,
                          return_stats=True)  # steps=3 is not a multiple of 2 blocks: ignored, not checked
    # the 8.0s of block 1 wait for block 0
    assert committed_per_call(model, out) == [[2, 3], [5], [4], [6, 7, 8, 9]]
    assert stats["calls_per_block"] == [3, 1]
    again = generate(TableModel(heights, [1] * 10), torch.tensor([[4, 5]]), steps=64, gen_length=8, block_length=4,
                     threshold=0.9)
    assert torch.equal(out, again)


def test_threshold_one_commits_certain_tokens_together_and_otherwise_one_per_call():
    # height 1000: the float64 softmax is exactly 1.0, which reaches threshold 1.0; height 30 (p = 1 - 7e-13) not
    heights = [9.0] * 2 + [1000.0, 30.0, 1000.0, 2.0]
    model = TableModel(heights, [1] * 6)
    out = generate(model, torch.tensor([[4, 5]]), gen_length=4, block_length=4, threshold=1.0)
    assert committed_per_call(model, out) == [[2, 4], [3], [5]]


@pytest.mark.parametrize("block_length", [4, 12])
def test_threshold_one_on_llada_is_the_one_token_per_step_schedule(llada, block_length):
    # no real-model confidence is exactly 1.0 here, so each call commits only the most confident token: the
    # fixed schedule with steps = gen_length does the same, tie-breaking included
    prompt = torch.tensor([[3, 4, 5, 6]])
    fixed = generate(llada, prompt, steps=12, gen_length=12, block_length=block_length)
    out, stats = generate(llada, prompt, gen_length=12, block_length=block_length, threshold=1.0, return_stats=True)
    assert torch.equal(out, fixed)
    assert stats["model_calls"] == 12 and stats["calls_per_block"] == [block_length] * (12 // block_length)


@pytest.mark.parametrize(("rule", "cfg_scale"), [({"threshold": 0.2}, 0.0), ({"factor": 2.0}, 0.0),
                                                 ({"threshold": 0.2}, 1.5)])
@pytest.mark.parametrize("cache", [None, "dual", "prefix"])
def test_each_padded_row_gets_what_it_gets_alone(llada, rule, cfg_scale, cache):
    # rows finish a block after different numbers of calls; a finished row commits nothing while the others go on
    ids, mask = pad_prompts(PROMPTS, pad_id=0)
    policy = None if cache is None else FastDllmCache(dual=cache == "dual")
    kwargs = {"gen_length": 12, "block_length": 4, "cfg_scale": cfg_scale, "cache": policy, **rule}
    batch, stats = generate(llada, ids, mask, return_stats=True, **kwargs)
    calls = []
    for row, prompt in enumerate(PROMPTS):
        alone, alone_stats = generate(llada, torch.tensor([prompt]), return_stats=True, **kwargs)
        assert torch.equal(batch[row, ids.shape[1] :], alone[0, len(prompt) :])
        calls.append(alone_stats["model_calls"])
    assert stats["row_calls"] == calls
    assert min(calls) < 12  # parallel decoding really happened (this random model is rarely confident)


@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
def test_per_row_generators_reproduce_each_rows_solo_sampling_run(llada, remasking):
    ids, mask = pad_prompts(PROMPTS, pad_id=0)
    kwargs = {"gen_length": 12, "block_length": 4, "temperature": 0.8, "remasking": remasking, "threshold": 0.2}
    batch, stats = generate(llada, ids, mask, generator=[torch.Generator().manual_seed(s) for s in range(3)],
                            return_stats=True, **kwargs)
    for row, prompt in enumerate(PROMPTS):
        alone = generate(llada, torch.tensor([prompt]), generator=torch.Generator().manual_seed(row), **kwargs)
        assert torch.equal(batch[row, ids.shape[1] :], alone[0, len(prompt) :])
    assert len(set(stats["row_calls"])) > 1  # rows really finished at different calls


# --- the KV cache -------------------------------------------------------------------------------------------------


def setup_calls(model, prompts, gen_length=12, block_length=4):
    """Left-padded prompts plus masked answers, the attention mask, and logits_at per block."""
    ids, mask = pad_prompts(prompts, pad_id=0)
    x = torch.cat([ids, torch.full((len(prompts), gen_length), LMASK)], dim=1)
    full_mask = torch.cat([mask, torch.ones(len(prompts), gen_length, dtype=torch.long)], dim=1)
    p = ids.shape[1]
    at = [torch.arange(p + b * block_length, p + (b + 1) * block_length).expand(len(prompts), -1)
          for b in range(gen_length // block_length)]
    return x, full_mask, p, at


class Recording:
    """A dLLM cache method wrapper that records every (x, step, block) the LLaDA site passes."""

    def __init__(self, inner: FastDllmCache) -> None:
        self.inner, self.calls = inner, []

    def trigger(self):
        return self.inner.trigger()

    def start(self, model, prompt_length, gen_length, block_length, *, storage=None):
        state = self.inner.start(model, prompt_length, gen_length, block_length, storage=storage)
        outer = self

        class State:
            def runner(self, x, step, block):
                outer.calls.append((x.clone(), step, block))
                return state.runner(x, step, block)

            def __getattr__(self, name):  # the rest of the state as it is
                return getattr(state, name)

        return State()


@pytest.mark.parametrize("dual", [True, False])
def test_first_call_of_each_block_is_bit_identical_to_the_uncached_model(llada, dual):
    ids, mask = pad_prompts(PROMPTS, pad_id=0)
    recorder = Recording(FastDllmCache(dual=dual))
    generate(llada, ids, mask, gen_length=12, block_length=4, threshold=0.7, cache=recorder)
    _, full_mask, p, at = setup_calls(llada, PROMPTS)
    state = FastDllmCache(dual=dual).start(llada, p, 12, 4)
    first_steps, previous_block = [], None
    for x, step, block in recorder.calls:
        cached = run_layers(llada, state.runner(x, step, block), x, full_mask, logits_at=at[block])
        if block != previous_block:
            assert torch.equal(cached, llada(x, full_mask, logits_at=at[block]))
            first_steps.append(step)
        previous_block = block
    assert len(first_steps) == 3 and len(recorder.calls) > 3  # cached calls happened in between
    assert state.stats()["refresh_steps"] == first_steps


@pytest.mark.parametrize("cfg_scale", [0.0, 1.5])
@pytest.mark.parametrize(("steps", "block_length"), [(1, 12), (3, 4)])
@pytest.mark.parametrize("dual", [True, False])
def test_one_call_per_block_is_token_identical_to_no_cache(llada, cfg_scale, steps, block_length, dual):
    ids, mask = pad_prompts(PROMPTS, pad_id=0)
    kwargs = {"steps": steps, "gen_length": 12, "block_length": block_length, "cfg_scale": cfg_scale}
    plain = generate(llada, ids, mask, **kwargs)
    out, stats = generate(llada, ids, mask, cache=FastDllmCache(dual=dual), return_stats=True, **kwargs)
    assert torch.equal(out, plain)
    assert stats["cache"]["compute_fraction"] == 1.0 and stats["cache"]["refresh_steps"] == list(range(steps))


@pytest.mark.parametrize("dual", [True, False])
def test_a_cached_call_on_unchanged_tokens_reproduces_the_full_logits(llada, dual):
    # the cached path (token slicing, RoPE positions of the block, padded keys, GQA) computes what the full
    # model computes when nothing changed since the refresh; only float summation order may differ
    x, full_mask, p, at = setup_calls(llada, PROMPTS)
    x[:, p : p + 3] = torch.tensor([[20, 21, 22], [23, 24, 25], [26, 27, 28]])  # block 0 done, block 1 open
    state = FastDllmCache(dual=dual).start(llada, p, 12, 4)
    first = run_layers(llada, state.runner(x, 0, 1), x, full_mask, logits_at=at[1])
    again = run_layers(llada, state.runner(x, 1, 1), x, full_mask, logits_at=at[1])
    torch.testing.assert_close(again, first, rtol=1e-5, atol=1e-5)
    assert torch.equal(first, llada(x, full_mask, logits_at=at[1]))


def test_dual_cache_reuses_suffix_keys_and_prefix_cache_recomputes_them(llada):
    x, full_mask, p, at = setup_calls(llada, PROMPTS)
    changed = x.clone()
    changed[:, p + 8 :] = 5  # the suffix (block 2) changes between the refresh and the cached call of block 1
    out = {}
    for dual in (True, False):
        for name, second in (("same", x), ("changed", changed)):
            state = FastDllmCache(dual=dual).start(llada, p, 12, 4)
            run_layers(llada, state.runner(x, 0, 1), x, full_mask, logits_at=at[1])
            out[dual, name] = run_layers(llada, state.runner(second, 1, 1), second, full_mask, logits_at=at[1])
    assert torch.equal(out[True, "same"], out[True, "changed"])  # DualCache reads the stored suffix K/V
    assert not torch.allclose(out[False, "same"], out[False, "changed"])  # the prefix cache recomputes it


@pytest.mark.parametrize("part", ["prefix", "suffix", "block"])
def test_corrupting_stored_keys_changes_the_output_exactly_where_they_are_read(llada, part):
    x, full_mask, p, at = setup_calls(llada, PROMPTS)
    where = {"prefix": slice(0, p + 4), "block": slice(p + 4, p + 8), "suffix": slice(p + 8, None)}[part]
    results = []
    for corrupt in (False, True):
        state = FastDllmCache(dual=True).start(llada, p, 12, 4)
        run_layers(llada, state.runner(x, 0, 1), x, full_mask, logits_at=at[1])
        if corrupt:
            for k in state.k:
                k[:, :, where] += 1.0
        results.append(run_layers(llada, state.runner(x, 1, 1), x, full_mask, logits_at=at[1]))
    # the block's own keys are recomputed every call and overwrite their slot; prefix and suffix are reused
    assert torch.equal(results[0], results[1]) == (part == "block")


def test_compute_fraction_and_flops_follow_the_cached_spans(llada):
    # P = 4, L = 16, 3 blocks of 4, 4 calls per block: DualCache computes 16 + 3 * 4 token-layers per block of
    # 4 * 16; the prefix cache 16 + 3 * (12 - 4b) for block b
    prompt = torch.tensor([[3, 4, 5, 6]])
    kwargs = {"steps": 12, "gen_length": 12, "block_length": 4}
    flops, fractions = {}, {}
    for name, cache in (("none", None), ("dual", FastDllmCache()), ("prefix", FastDllmCache(dual=False))):
        with FlopCounterMode(display=False) as counter:
            _, stats = generate(llada, prompt, cache=cache, return_stats=True, **kwargs)
        flops[name] = counter.get_total_flops()
        fractions[name] = stats["cache"] and stats["cache"]["compute_fraction"]
    assert fractions["dual"] == 3 * (16 + 3 * 4) / (12 * 16)
    assert fractions["prefix"] == (16 + 36 + 16 + 24 + 16 + 12) / (12 * 16)
    assert flops["dual"] < flops["prefix"] < flops["none"]


def test_peak_cache_bytes_counts_the_stored_keys_and_values(llada):
    prompt = torch.tensor([[3, 4, 5, 6]])
    _, dual = generate(llada, prompt, steps=6, gen_length=12, block_length=4, cache=FastDllmCache(), return_stats=True)
    _, prefix = generate(llada, prompt, steps=6, gen_length=12, block_length=4, cache=FastDllmCache(dual=False),
                         return_stats=True)
    per_token = 2 * 2 * 2 * 8 * 4  # layers x (K, V) x kv heads x head_dim x float32 bytes
    assert dual["cache"]["peak_cache_bytes"] == 16 * per_token
    assert prefix["cache"]["peak_cache_bytes"] == 12 * per_token  # the prefix before the last block


def test_states_are_per_request(llada):
    x, full_mask, p, at = setup_calls(llada, PROMPTS[:1])
    y, _, _, _ = setup_calls(llada, PROMPTS[:1])
    y[:, :p] = torch.tensor([[30, 31, 32, 33, 34, 35]])
    policy = FastDllmCache()

    def run(state, tokens, step):
        return run_layers(llada, state.runner(tokens, step, 0), tokens, full_mask, logits_at=at[0])

    alone = [run(s := policy.start(llada, p, 12, 4), x, 0), run(s, x, 1)]
    a, b = policy.start(llada, p, 12, 4), policy.start(llada, p, 12, 4)
    interleaved = [run(a, x, 0), run(b, y, 0), run(a, x, 1), run(b, y, 1)]
    assert torch.equal(interleaved[0], alone[0]) and torch.equal(interleaved[2], alone[1])
    assert not torch.equal(interleaved[1], interleaved[0])


def test_threshold_with_dual_cache_refreshes_once_per_block(llada):
    prompt = torch.tensor([[3, 4, 5, 6]])
    out, stats = generate(llada, prompt, gen_length=12, block_length=4, threshold=0.25, cache=FastDllmCache(),
                          return_stats=True)
    calls = stats["calls_per_block"]
    assert len(set(calls)) > 1 and sum(calls) < 12  # blocks end early, after different numbers of calls
    starts = [sum(stats["calls_per_block"][:b]) for b in range(3)]
    assert stats["cache"]["refresh_steps"] == starts
    assert stats["cache"]["steps"] == stats["model_calls"]
    assert not (out == LMASK).any()


def test_preset_carries_the_papers_defaults(llada):
    preset = fast_dllm()
    assert preset == FastDllm(threshold=0.9, factor=None, cache="dual", block_length=32)
    kwargs = preset.generate_kwargs()
    assert kwargs.pop("cache").where.method == FastDllmCache(dual=True)
    assert kwargs == {"threshold": 0.9, "factor": None, "block_length": 32}
    assert fast_dllm(cache="prefix").policy().where.method == FastDllmCache(dual=False)
    assert fast_dllm(cache=None).policy() is None
    out, stats = generate(llada, torch.tensor([[3, 4, 5]]), gen_length=64, return_stats=True, **preset.generate_kwargs())
    assert out.shape == (1, 67) and stats["blocks"] == 2 and stats["cache"]["method"] == "fast_dllm_dual_cache"


# --- bad input ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"threshold": 0.0}, "threshold=0.0 must be in \\(0, 1\\]"),
        ({"threshold": 1.5}, "must be in \\(0, 1\\]"),
        ({"threshold": True}, "must be in \\(0, 1\\]"),
        ({"factor": 0.0}, "factor=0.0 must be > 0"),
        ({"factor": -1.0}, "must be > 0"),
        ({"threshold": 0.9, "factor": 1.0}, "both set.*pass one"),
    ],
)
def test_bad_decoding_knobs_raise_a_value_error_naming_the_fix(change, message):
    with pytest.raises(ValueError, match=message):
        generate(TableModel([1.0] * 8, [0] * 8), torch.tensor([[1, 2]]), gen_length=4, block_length=4, **change)


def test_bad_cache_config_and_use_raise_value_errors(llada):
    with pytest.raises(ValueError, match="dual=.yes. is invalid: must be True or False"):
        FastDllmCache(dual="yes")
    with pytest.raises(ValueError, match="not both"):
        FastDllm(threshold=0.9, factor=1.0)
    with pytest.raises(ValueError, match="in \\(0, 1\\]"):
        fast_dllm(threshold=2.0)
    with pytest.raises(ValueError, match="must be > 0"):
        fast_dllm(threshold=None, factor=0.0)
    with pytest.raises(ValueError, match="use 'dual', 'prefix' or None"):
        fast_dllm(cache="triple")
    with pytest.raises(ValueError, match="int >= 1"):
        fast_dllm(block_length=0)
    with pytest.raises(ValueError, match="pass a LLaDAModel"):
        FastDllmCache().start(nn.Linear(2, 2), 3, 12, 4)
    with pytest.raises(ValueError, match="block_length dividing gen_length"):
        FastDllmCache().start(llada, 3, 12, 5)
    state = FastDllmCache().start(llada, 3, 12, 4)
    with pytest.raises(ValueError, match="expected prompt_length \\+ gen_length = 15"):
        state.runner(torch.zeros(1, 14, dtype=torch.long), 0, 0)
    with pytest.raises(ValueError, match="block=3 is outside \\[0, 3\\)"):
        state.runner(torch.zeros(1, 15, dtype=torch.long), 0, 3)
