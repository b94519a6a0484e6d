"""dLLM-Cache options beyond the paper (arXiv 2506.06295): reuse of unchanged tokens' projections (exact),
V-verify scope, and the FLOP count of the cached run."""

from __future__ import annotations

import pytest
import torch
from forecache.dllm.dllm_cache import DllmCache, dllm_cache
from forecache.dllm.feature_store import changed_first
from forecache.dllm.model import LLaDAModel
from forecache.dllm.sampler import generate, pad_prompts
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from .row_invariant import row_invariant
from .tiny import MASK, tiny_llada

RUN = {"steps": 12, "gen_length": 12, "block_length": 6}  # 2 blocks of 6 steps
PROMPTS = [[5, 9, 2, 17, 30], [8, 1, 44]]  # left-padded to 5


def tiny_model(n_layers: int = 3, seed: int = 0) -> LLaDAModel:
    return tiny_llada(n_layers, seed)


@pytest.fixture(scope="module")
def model() -> LLaDAModel:
    return tiny_model()


@pytest.fixture(scope="module")
def exact_model(model) -> LLaDAModel:
    # q/k/v are the only matmuls whose row count the option changes: attention and FFN see the same tokens
    return row_invariant(model, ("q_proj", "k_proj", "v_proj"))


def run_logged(model, policy, prompts=PROMPTS, **kw):
    """Tokens, every logits tensor the model returned, and the cache stats of one generation."""
    ids, mask = pad_prompts(prompts, pad_id=0)
    logits: list[torch.Tensor] = []
    hook = model.register_forward_hook(lambda module, args, out: logits.append(out))
    try:
        tokens, stats = generate(model, ids, mask, cache=policy, return_stats=True, **{**RUN, **kw})
    finally:
        hook.remove()
    return tokens, logits, stats["cache"]


def test_defaults_are_the_papers_method():
    policy = DllmCache()
    assert (policy.reuse_unchanged_qkv, policy.verify_scope, policy.response_refresh) == (0, "answer", "interval")
    assert policy.drift_threshold is None and policy.drift_layer is None
    assert dllm_cache(50, 7, 0.25, verify_scope="block").where.method == DllmCache(verify_scope="block")


def test_changed_first_puts_each_rows_flagged_tokens_first():
    changed = torch.tensor([[False, True, False, True], [False, False, False, True]])
    idx = changed_first(changed)
    assert idx.shape == (2, 2)
    assert sorted(idx[0].tolist()) == [1, 3] and idx[1, 0] == 3  # row 1 is filled up with an unflagged token
    assert changed_first(torch.zeros(2, 4, dtype=torch.bool)) is None


POLICIES = {
    "never_skip": {"prompt_interval": 1, "response_interval": 1, "rho": 0.0},
    "paper_like": {"prompt_interval": 4, "response_interval": 3, "rho": 0.25},
    "block_scope": {"prompt_interval": 3, "response_interval": 100, "rho": 0.5, "verify_scope": "block"},
    "drift": {"prompt_interval": 5, "response_interval": 3, "rho": 0.25, "response_refresh": "drift",
              "drift_threshold": 0.15},
    "first_layer_full": {"prompt_interval": 4, "response_interval": 3, "rho": 0.25, "always_full_layers": 1},
}


@pytest.mark.parametrize("name", list(POLICIES))
@pytest.mark.parametrize("layers", [1, 3])
@pytest.mark.parametrize("cfg_scale", [0.0, 1.5])
def test_reusing_unchanged_projections_is_bit_exact(exact_model, name, layers, cfg_scale):
    """Tokens and every logit are bitwise those of recomputing, with kernels that round a row alike
    whatever else they compute; and the option does compute less."""
    off = run_logged(exact_model, DllmCache(**POLICIES[name]), cfg_scale=cfg_scale)
    on = run_logged(exact_model, DllmCache(**POLICIES[name], reuse_unchanged_qkv=layers), cfg_scale=cfg_scale)
    assert torch.equal(on[0], off[0])
    assert len(on[1]) == len(off[1]) == RUN["steps"]
    assert all(torch.equal(a, b) for a, b in zip(on[1], off[1]))
    for key in ("compute_fraction", "v_verify_fraction", "response_refresh_steps", "drift"):
        assert on[2][key] == off[2][key]
    assert on[2]["reused_qk_tokens"] > 0 and on[2]["reused_v_tokens"] > 0
    assert on[2]["flops"] < off[2]["flops"]


def test_reuse_at_the_never_skip_setting_is_the_uncached_model(exact_model):
    plain = run_logged(exact_model, None, cfg_scale=1.5)
    cached = run_logged(exact_model, DllmCache(1, 1, 0.0, reuse_unchanged_qkv=3), cfg_scale=1.5)
    assert torch.equal(cached[0], plain[0])
    assert all(torch.equal(a, b) for a, b in zip(cached[1], plain[1]))


def test_reuse_compares_layer_inputs_not_token_ids(exact_model):
    """A token whose id is unchanged but whose layer input moved is recomputed: the check is on the input."""
    layer = exact_model.blocks[0]
    x = torch.tensor([[4, 5, 6] + [MASK] * 5, [7, 8, 9] + [MASK] * 5])
    cos, sin = exact_model.rope(exact_model.positions(x, None))
    key_mask = torch.ones(2, 1, 1, 8, dtype=torch.bool)
    state = DllmCache(1, 1, 0.0, reuse_unchanged_qkv=1).start(exact_model, 3, 5, 5)
    e0 = exact_model.wte(x)
    e1 = e0.clone()
    e1[0, 1] += 1e-3  # a prompt token: same id, other input
    e1[0, 6] += 1e-3
    e1[1, 4] = exact_model.wte.weight[20]  # a committed token
    state.runner(x, 0, 0)(0, layer, e0, cos, sin, key_mask)
    out = state.runner(x, 1, 0)(0, layer, e1, cos, sin, key_mask)
    assert torch.equal(out, layer(e1, cos, sin, key_mask))  # step 1 is a full step: exactly the layer
    # row 0 has 2 changed tokens, row 1 one (filled up to 2): 2 * 8 - 2 * 2 tokens keep their projections
    assert state.stats()["reused_qk_tokens"] == 12 and state.stats()["reused_v_tokens"] == 12
    store = state.store[0]
    assert torch.equal(store.x_in, e1) and store.q is not None


def test_reuse_with_stock_kernels_only_moves_last_bits():
    """With the stock matmul a row computed among fewer rows may round differently (on this CPU at width 256,
    batch 1, logits moved by ~4e-7); reusing a projection instead of recomputing it moves logits by that much."""
    wide = tiny_llada(n_layers=2, d_model=256, mlp=512)
    on = run_logged(wide, DllmCache(1, 1, 0.0, reuse_unchanged_qkv=2), prompts=PROMPTS[:1])
    off = run_logged(wide, DllmCache(1, 1, 0.0), prompts=PROMPTS[:1])
    assert on[2]["reused_qk_tokens"] > 0
    for a, b in zip(on[1], off[1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cfg_scale", [0.0, 1.5])
def test_verify_scope_sets_the_candidates(model, cfg_scale):
    """K_p = K_r = 100: step 0 full, then V-verify only. R = 12 answer tokens, two blocks of 6, rho = 0.5."""
    rows = 4 if cfg_scale else 2
    fractions = {}
    for scope in ("answer", "prefix", "block"):
        _, _, stats = run_logged(model, DllmCache(100, 100, 0.5, verify_scope=scope), cfg_scale=cfg_scale)
        fractions[scope] = stats
        assert stats["full_steps"] == [0]
    per_layer = 5 + 12  # tokens per row and layer call (prompt 5, answer 12)
    full = 12 * per_layer
    # candidates per V-verify call: answer 12; prefix 6 in block 0 (5 calls after the full one), 12 in block 1
    # (6 calls); block 6 in both; picks floor(0.5 * candidates)
    assert fractions["answer"]["v_verify_fraction"] == 11 * 12 / full
    assert fractions["prefix"]["v_verify_fraction"] == (5 * 6 + 6 * 12) / full
    assert fractions["block"]["v_verify_fraction"] == 11 * 6 / full
    assert fractions["answer"]["compute_fraction"] == (per_layer + 11 * 6) / full
    assert fractions["prefix"]["compute_fraction"] == (per_layer + 5 * 3 + 6 * 6) / full
    assert fractions["block"]["compute_fraction"] == (per_layer + 11 * 3) / full
    assert fractions["block"]["flops"] < fractions["prefix"]["flops"] < fractions["answer"]["flops"]
    assert all(s["token_layers"] == rows * 3 * full for s in fractions.values())


def test_verify_scope_is_moot_with_one_block(model):
    runs = [run_logged(model, DllmCache(4, 3, 0.25, verify_scope=s), block_length=12) for s in ("answer", "prefix",
                                                                                               "block")]
    for tokens, logits, stats in runs[1:]:
        assert torch.equal(tokens, runs[0][0])
        assert all(torch.equal(a, b) for a, b in zip(logits, runs[0][1]))
        assert stats["flops"] == runs[0][2]["flops"]


def test_block_scope_never_recomputes_a_later_block():
    """A token of block 1 whose input moved is picked by the paper's V-verify, never while block 0 decodes
    under verify_scope='block'."""
    model = tiny_model(n_layers=1, seed=3)
    layer = model.blocks[0]
    x = torch.tensor([[4, 5] + [MASK] * 8])
    cos, sin = model.rope(model.positions(x, None))
    key_mask = torch.ones(1, 1, 1, 10, dtype=torch.bool)
    e0 = model.wte(x)
    e1 = e0.clone()
    e1[0, 8] = model.wte.weight[20]  # column 8 is in block 1 (answer columns 2..5 block 0, 6..9 block 1)
    stored = {}
    for scope in ("answer", "block"):
        state = DllmCache(100, 100, 0.25, verify_scope=scope).start(model, 2, 8, 4)
        state.runner(x, 0, 0)(0, layer, e0, cos, sin, key_mask)
        state.runner(x, 1, 0)(0, layer, e1, cos, sin, key_mask)
        stored[scope] = state.store[0].k[:, :, 8].clone()
    k0 = layer.project_qk(layer.attn_norm(e0), cos, sin)[1][:, :, 8]
    assert torch.equal(stored["block"], k0)
    assert not torch.allclose(stored["answer"], k0)


@pytest.mark.parametrize(
    "policy",
    [
        DllmCache(1, 1, 0.0),
        DllmCache(4, 3, 0.25),
        DllmCache(4, 3, 0.25, reuse_unchanged_qkv=3),
        DllmCache(3, 100, 0.5, verify_scope="prefix", always_full_layers=1),
        DllmCache(5, 3, 0.0, response_refresh="drift", drift_threshold=0.1, reuse_unchanged_qkv=1),
    ],
    ids=["never_skip", "paper_like", "reuse", "prefix", "drift"],
)
@pytest.mark.parametrize("cfg_scale", [0.0, 1.5])
def test_flop_estimate_equals_flop_counter_mode(model, policy, cfg_scale):
    """The state's FLOP tally is exactly what FlopCounterMode measures, cached and uncached (math SDPA: the
    fused CPU kernel is invisible to FlopCounterMode)."""
    ids, mask = pad_prompts(PROMPTS, pad_id=0)
    with sdpa_kernel(SDPBackend.MATH):
        with FlopCounterMode(display=False) as plain:
            generate(model, ids, mask, cfg_scale=cfg_scale, **RUN)
        with FlopCounterMode(display=False) as cached:
            _, stats = generate(model, ids, mask, cfg_scale=cfg_scale, cache=policy, return_stats=True, **RUN)
    s = stats["cache"]
    assert s["flops"] == cached.get_total_flops()
    assert s["flops_full"] == plain.get_total_flops()
    assert s["compute_ratio"] == cached.get_total_flops() / plain.get_total_flops()
