"""dLLM-Cache (arXiv 2506.06295): never-skip exactness, refresh schedule, V-verify selection, partial update."""

from __future__ import annotations

import pytest
import torch
from forecache.dllm.config import LLaDAConfig
from forecache.dllm.dllm_cache import DllmCache, dllm_cache, least_similar
from forecache.dllm.model import LLaDAModel
from forecache.dllm.sampler import generate, pad_prompts
from torch.utils.flop_counter import FlopCounterMode

from .tiny import run_layers

VOCAB, MASK = 64, 63


def tiny_model(n_layers: int = 2, seed: int = 0) -> LLaDAModel:
    """Random weights; grouped-query attention (4 query heads, 2 kv heads) so both head counts are exercised."""
    torch.manual_seed(seed)
    config = LLaDAConfig(
        d_model=32, n_heads=4, n_kv_heads=2, n_layers=n_layers, mlp_hidden_size=64, vocab_size=VOCAB,
        embedding_size=VOCAB, max_sequence_length=128, mask_token_id=MASK,
    )
    return LLaDAModel(config).eval()


@pytest.fixture(scope="module")
def model() -> LLaDAModel:
    return tiny_model()


PROMPTS = {"one": [[5, 9, 2, 17]], "padded": [[5, 9, 2, 17, 30], [8, 1, 44]]}
RUN = {"steps": 12, "gen_length": 12, "block_length": 6}  # 2 blocks of 6 steps


def run(model, prompts, cache=None, **kw):
    ids, mask = pad_prompts(prompts, pad_id=0)
    return generate(model, ids, mask, cache=cache, return_stats=True, **{**RUN, **kw})


@pytest.mark.parametrize("prompts", ["one", "padded"])
@pytest.mark.parametrize("cfg_scale", [0.0, 1.5])
def test_never_skip_setting_is_bit_identical(model, prompts, cfg_scale):
    reference, _ = run(model, PROMPTS[prompts], cfg_scale=cfg_scale)
    tokens, stats = run(model, PROMPTS[prompts], DllmCache(1, 1, 0.0), cfg_scale=cfg_scale)
    assert torch.equal(tokens, reference)
    assert stats["cache"]["compute_fraction"] == 1.0
    assert stats["cache"]["full_steps"] == list(range(12))


def test_never_skip_logits_are_bit_identical(model):
    ids, mask = pad_prompts(PROMPTS["padded"], pad_id=0)
    x = torch.cat([ids, torch.full((2, 12), MASK)], dim=1)
    mask = torch.cat([mask, torch.ones(2, 12, dtype=torch.long)], dim=1)
    state = DllmCache(1, 1, 0.0).start(model, ids.shape[1], 12, 6)
    for step in range(3):
        x[:, 5 + 2 * step] = step + 1  # commit a token per step, as the sampler would
        assert torch.equal(run_layers(model, state.runner(x, step, 0), x, mask), model(x, mask))


def test_larger_intervals_compute_less_on_the_rule_schedule(model):
    policy = DllmCache(prompt_interval=4, response_interval=3, rho=0.25)
    with FlopCounterMode(display=False) as plain:
        run(model, PROMPTS["one"])
    with FlopCounterMode(display=False) as cached:
        _, stats = run(model, PROMPTS["one"], policy)
    assert cached.get_total_flops() < plain.get_total_flops()
    s = stats["cache"]
    assert s["prompt_refresh_steps"] == [0, 4, 8]
    assert s["response_refresh_steps"] == [0, 3, 6, 9]
    assert s["full_steps"] == [0]
    # per row and layer, P = 4 prompt and R = 12 answer tokens, k = floor(0.25 * 12) = 3 picked by V-verify:
    # step 0 all 16; steps 3, 6, 9 the 12 answer tokens; steps 4, 8 prompt + 3; six other steps 3 each
    assert s["compute_fraction"] == (16 + 3 * 12 + 2 * (4 + 3) + 6 * 3) / (12 * 16)
    assert s["avg_selected_per_row"] == 3.0
    assert s["v_verify_fraction"] == 8 * 12 / (12 * 16)  # the 8 steps without a response refresh


def test_v_verify_picks_the_least_similar_tokens_per_row():
    # token vectors over two kv heads of width 1: (B=2, n=5, Hkv*hd=2) -> (B, Hkv, n, hd)
    cached = torch.tensor([[[1.0, 0.0]] * 5, [[0.0, 1.0]] * 5])
    new = torch.tensor(
        [
            [[1, 0], [0, 1], [-1, 0], [1, 1], [2, 0]],  # cosines 1, 0, -1, .71, 1
            [[0, 1], [1, 1], [0, 3], [1, 0], [-1, -1]],  # cosines 1, .71, 1, 0, -.71
        ],
        dtype=torch.float32,
    )

    def heads(t):
        return t.view(2, 5, 2, 1).transpose(1, 2)

    assert least_similar(heads(new), heads(cached), 2).tolist() == [[1, 2], [3, 4]]
    assert least_similar(heads(new), heads(cached), 3).tolist() == [[1, 2, 3], [1, 3, 4]]
    assert least_similar(heads(new), heads(cached), 0).shape == (2, 0)
    # padded (invalid) tokens are never picked, however dissimilar
    valid = torch.tensor([[True, True, False, True, True], [True, True, True, True, False]])
    assert least_similar(heads(new), heads(cached), 2, valid).tolist() == [[1, 3], [1, 3]]
    with pytest.raises(ValueError, match="exceeds a row's valid token count"):
        least_similar(heads(new), heads(cached), 5, valid)
    # a NaN value is recomputed first
    new[0, 0] = float("nan")
    assert least_similar(heads(new), heads(cached), 1).tolist() == [[0], [4]]


def test_partial_update_recomputes_selected_tokens_and_reuses_the_rest():
    """One layer, step 1 after a full step 0: rebuild the expected output from the block's pieces."""
    model = tiny_model(n_layers=1, seed=3)
    layer = model.blocks[0]
    prompt, gen = 3, 8
    x0 = torch.tensor([[4, 5, 6] + [MASK] * 8, [7, 8, 9] + [MASK] * 8])
    x1 = x0.clone()
    x1[0, [4, 9]] = torch.tensor([11, 12])  # row 0 commits two tokens, row 1 two others
    x1[1, [3, 6]] = torch.tensor([13, 14])
    state = DllmCache(prompt_interval=100, response_interval=100, rho=0.25).start(model, prompt, gen, gen)
    cos, sin = model.rope(model.positions(x0, None))
    key_mask = torch.ones(2, 1, 1, 11, dtype=torch.bool)
    e0, e1 = model.wte(x0), model.wte(x1)
    # nudge a prompt token and an unpicked answer token: a reused token must carry its *current* input on
    e1[0, 2] += 1e-3
    e1[1, 7] += 1e-3
    out0 = state.runner(x0, 0, 0)(0, layer, e0, cos, sin, key_mask)
    assert torch.equal(out0, layer(e0, cos, sin, key_mask))
    out1 = state.runner(x1, 1, 0)(0, layer, e1, cos, sin, key_mask)

    h0, h1 = layer.attn_norm(e0), layer.attn_norm(e1)
    q0, k0 = layer.project_qk(h0, cos, sin)
    q1, k1 = layer.project_qk(h1, cos, sin)
    v0, v1 = layer.project_v(h0), layer.project_v(h1)
    attn0 = layer.attend(q0, k0, v0, key_mask)
    ffn0 = layer.ffn(e0 + attn0)
    # k = floor(0.25 * 8) = 2 per row: at layer 0 only the committed tokens' values moved
    picked = {0: [4, 9], 1: [3, 6]}
    for r, cols in picked.items():
        keys = k0[r : r + 1].clone()
        keys[:, :, cols] = k1[r : r + 1, :, cols]
        values = torch.cat([v0[r : r + 1, :, :prompt], v1[r : r + 1, :, prompt:]], dim=2)  # fresh answer values
        attn = layer.attend(q1[r : r + 1, :, cols], keys, values, key_mask[r : r + 1])
        mid = e1[r : r + 1, cols] + attn
        torch.testing.assert_close(out1[r : r + 1, cols], mid + layer.ffn(mid), rtol=1e-5, atol=1e-6)
        rest = [c for c in range(11) if c not in cols]
        assert torch.equal(out1[r, rest], (e1 + attn0 + ffn0)[r, rest])
    assert state.stats()["avg_selected_per_row"] == 2.0



def test_v_verify_measures_drift_since_the_last_recomputation():
    """A token that drifted at step 1 (not picked) is picked at step 2 over one that moved less since step 0.

    The reference code compares with the previous step's values (it overwrites them every step) and would
    pick the other token; this implementation compares with the values of the token's last recomputation.
    """
    model = tiny_model(n_layers=1, seed=4)
    layer = model.blocks[0]
    prompt, gen, a, b, c = 2, 8, 3, 6, 8  # a, b, c: answer columns
    x = torch.tensor([[4, 5] + [MASK] * 8])
    state = DllmCache(prompt_interval=100, response_interval=100, rho=1 / 8).start(model, prompt, gen, gen)
    cos, sin = model.rope(model.positions(x, None))
    key_mask = torch.ones(1, 1, 1, 10, dtype=torch.bool)
    torch.manual_seed(0)
    e0 = model.wte(x)
    e1 = e0.clone()
    e1[0, a] += 0.1 * torch.randn(32)  # drifts, but less than b, which changes token: b is picked at step 1
    e1[0, b] = model.wte.weight[20]
    e2 = e1.clone()
    e2[0, c] += 0.02 * torch.randn(32)  # moves at step 2, less than a has moved since step 0
    for step, e in enumerate((e0, e1, e2)):
        state.runner(x, step, 0)(0, layer, e, cos, sin, key_mask)
    keys = [layer.project_qk(layer.attn_norm(e), cos, sin)[1] for e in (e0, e1, e2)]
    store = state.store[0]
    torch.testing.assert_close(store.k[:, :, b], keys[1][:, :, b], rtol=1e-5, atol=1e-6)  # picked at step 1
    torch.testing.assert_close(store.k[:, :, a], keys[2][:, :, a], rtol=1e-5, atol=1e-6)  # picked at step 2
    assert torch.equal(store.k[:, :, c], keys[0][:, :, c])  # never recomputed

@pytest.mark.parametrize("cfg_scale", [0.0, 1.5])
def test_rho_one_recomputes_every_answer_token(model, cfg_scale):
    prompts = PROMPTS["padded"]
    # with the prompt refreshed every step too, nothing is left cached: exactly the uncached sampler
    reference, _ = run(model, prompts, cfg_scale=cfg_scale)
    tokens, stats = run(model, prompts, DllmCache(1, 1000, 1.0), cfg_scale=cfg_scale)
    assert torch.equal(tokens, reference)
    assert stats["cache"]["compute_fraction"] == 1.0
    # with a cached prompt it is exactly "refresh the whole answer every step" (K_r = 1)
    tokens_a, stats_a = run(model, prompts, DllmCache(5, 1000, 1.0), cfg_scale=cfg_scale)
    tokens_b, stats_b = run(model, prompts, DllmCache(5, 1, 0.0), cfg_scale=cfg_scale)
    assert torch.equal(tokens_a, tokens_b)
    assert stats_a["cache"]["compute_fraction"] == stats_b["cache"]["compute_fraction"] < 1.0


def test_always_full_layers_covering_the_model_is_exact(model):
    reference, _ = run(model, PROMPTS["padded"])
    tokens, stats = run(model, PROMPTS["padded"], DllmCache(50, 7, 0.25, always_full_layers=2))
    assert torch.equal(tokens, reference)
    assert stats["cache"]["compute_fraction"] == 1.0


def test_generations_do_not_share_state(model):
    policy = DllmCache(prompt_interval=4, response_interval=3, rho=0.25)
    first, stats_first = run(model, PROMPTS["one"], policy)
    other, _ = run(model, [[3, 3, 40, 41, 42, 43]], policy)
    again, stats_again = run(model, PROMPTS["one"], policy)
    fresh, _ = run(model, [[3, 3, 40, 41, 42, 43]], DllmCache(4, 3, 0.25))
    assert torch.equal(first, again) and torch.equal(other, fresh)
    assert stats_first["cache"] == stats_again["cache"]
    state_a, state_b = (policy.start(model, 4, 12, 6) for _ in range(2))
    assert state_a is not state_b and state_a.store is not state_b.store


def test_preset_defaults_and_citation():
    policy = dllm_cache().where.method
    assert (policy.prompt_interval, policy.response_interval, policy.rho) == (50, 7, 0.25)
    assert "2506.06295" in (dllm_cache.__doc__ or "")
    assert dllm_cache(100, 8, 0.5).where.method == DllmCache(100, 8, 0.5)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"prompt_interval": 0}, "prompt_interval"),
        ({"response_interval": 2.5}, "response_interval"),
        ({"response_interval": True}, "response_interval"),
        ({"rho": -0.1}, "rho"),
        ({"rho": 1.5}, "rho"),
        ({"rho": "0.25"}, "rho"),
        ({"always_full_layers": -1}, "always_full_layers"),
        ({"reuse_unchanged_qkv": -1}, "reuse_unchanged_qkv"),
        ({"reuse_unchanged_qkv": True}, "reuse_unchanged_qkv"),
        ({"verify_scope": "blocks"}, "verify_scope"),
        ({"response_refresh": "adaptive"}, "response_refresh"),
        ({"response_refresh": "drift"}, "drift_threshold"),  # no paper default: it must be given
        ({"response_refresh": "drift", "drift_threshold": -0.1}, "drift_threshold"),
        ({"response_refresh": "drift", "drift_threshold": float("nan")}, "drift_threshold"),
        ({"drift_threshold": 0.1}, "drift_threshold"),  # set without response_refresh="drift": would do nothing
        ({"drift_layer": 1}, "drift_layer"),
        ({"response_refresh": "drift", "drift_threshold": 0.1, "drift_layer": -1}, "drift_layer"),
        ({"response_refresh": "drift", "drift_threshold": 0.1, "drift_accumulate": 1}, "drift_accumulate"),
    ],
)
def test_bad_config_raises(kwargs, field):
    with pytest.raises(ValueError, match=field):
        DllmCache(**kwargs)


def test_bad_use_raises(model):
    with pytest.raises(ValueError, match="LLaDAModel"):
        DllmCache().start(torch.nn.Linear(2, 2), 4, 12, 6)
    state = DllmCache().start(model, 4, 12, 6)
    with pytest.raises(ValueError, match="prompt_length \\+ gen_length"):
        state.runner(torch.zeros(1, 10, dtype=torch.long), 0, 0)
    with pytest.raises(ValueError, match="block_length"):
        DllmCache().start(model, 4, 12, 5)
    drift = DllmCache(response_refresh="drift", drift_threshold=0.1, drift_layer=2)
    with pytest.raises(ValueError, match="drift_layer"):  # the model has 2 layers
        drift.start(model, 4, 12, 6)
    with pytest.raises(ValueError, match="drift_layer"):  # layer 0 is always computed in full: it verifies nothing
        DllmCache(response_refresh="drift", drift_threshold=0.1, drift_layer=0, always_full_layers=1).start(
            model, 4, 12, 6)
    state = DllmCache(verify_scope="block").start(model, 4, 12, 6)
    with pytest.raises(ValueError, match="block=2"):
        state.runner(torch.zeros(1, 16, dtype=torch.long), 0, 2)
