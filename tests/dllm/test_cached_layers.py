"""The layer primitives every feature cache shares (forecache.dllm.cached_layers): full and partial layers."""

from __future__ import annotations

import pytest
import torch
from forecache.dllm.cached_layers import CachedLayers, columns
from forecache.dllm.config import LLaDAConfig
from forecache.dllm.model import LLaDAModel

from .row_invariant import row_invariant

P, R = 3, 8  # prompt and answer columns
MASK = 63


@pytest.fixture(scope="module")
def model() -> LLaDAModel:
    torch.manual_seed(0)
    config = LLaDAConfig(d_model=32, n_heads=4, n_kv_heads=2, n_layers=1, mlp_hidden_size=64, vocab_size=64,
                         embedding_size=64, max_sequence_length=64, mask_token_id=MASK)
    return row_invariant(LLaDAModel(config).eval())


def inputs(model):
    """Layer inputs of two rows (row 1 left-padded by one) and the same inputs with a few tokens moved."""
    x = torch.tensor([[4, 5, 6] + [MASK] * R, [0, 8, 9] + [MASK] * R])
    mask = torch.ones_like(x)
    mask[1, 0] = 0
    cos, sin = model.rope(model.positions(x, mask))
    key_mask = mask.bool()[:, None, None, :]
    e0 = model.wte(x).detach()
    e1 = e0.clone()
    e1[0, [4, 9]] = model.wte.weight[[11, 12]].detach()  # committed tokens
    e1[1, 2] += 1e-3  # a prompt token's input moved
    return e0, e1, cos, sin, key_mask


def test_full_layer_is_the_block_and_recomputing_every_token_is_the_block_again(model):
    layer = model.blocks[0]
    e0, e1, cos, sin, key_mask = inputs(model)
    state = CachedLayers(model, P, R, R)
    assert torch.equal(state.full_layer(0, layer, e0, cos, sin, key_mask), layer(e0, cos, sin, key_mask))
    everything = columns(0, P + R, 2, e0.device)
    assert torch.equal(state.recompute(0, layer, e1, cos, sin, key_mask, everything), layer(e1, cos, sin, key_mask))
    assert state.computed == 2 * 2 * (P + R)


def test_recompute_attends_over_stored_keys_and_reuses_the_other_tokens_outputs(model):
    """Rows recompute different tokens; the expectation is rebuilt from the block's pieces (bitwise: the model's
    linear layers round every row alike, and CPU attention is row-invariant in its queries)."""
    layer = model.blocks[0]
    e0, e1, cos, sin, key_mask = inputs(model)
    state = CachedLayers(model, P, R, R)
    state.full_layer(0, layer, e0, cos, sin, key_mask)
    k0, v0 = (t.clone() for t in (state.store[0].k, state.store[0].v))
    attn0, ffn0 = state.store[0].attn.clone(), state.store[0].ffn.clone()
    pos = torch.tensor([[4, 9], [2, 7]])
    out = state.recompute(0, layer, e1, cos, sin, key_mask, pos)
    h1 = layer.attn_norm(e1)
    q1, k1 = layer.project_qk(h1, cos, sin)
    v1 = layer.project_v(h1)
    for row, cols in enumerate(pos.tolist()):
        keys, values = k0[row : row + 1].clone(), v0[row : row + 1].clone()
        keys[:, :, cols], values[:, :, cols] = k1[row : row + 1, :, cols], v1[row : row + 1, :, cols]
        mid = e1[row : row + 1, cols] + layer.attend(q1[row : row + 1, :, cols], keys, values, key_mask[row : row + 1])
        assert torch.equal(out[row, cols], (mid + layer.ffn(mid))[0])
        rest = [c for c in range(P + R) if c not in cols]
        assert torch.equal(out[row, rest], (e1 + attn0 + ffn0)[row, rest])
        assert torch.equal(state.store[0].k[row, :, cols], k1[row, :, cols])
    assert torch.equal(state.reuse(0, e1), e1 + state.store[0].attn + state.store[0].ffn)
    assert state.flops.total > 0 and state.computed == 2 * (P + R) + 4


def test_recompute_needs_stored_features(model):
    e0, _, cos, sin, key_mask = inputs(model)
    with pytest.raises(ValueError, match="full_layer first"):
        CachedLayers(model, P, R, R).recompute(0, model.blocks[0], e0, cos, sin, key_mask, columns(0, 2, 2, e0.device))
