"""V-verify's one pick (forecache.dllm.v_verify.verify), shared by dLLM-Cache and the Fast-dLLM combination."""

from __future__ import annotations

import pytest
import torch
from forecache.dllm.combined import CombinedCache
from forecache.dllm.config import LLaDAConfig
from forecache.dllm.dllm_cache import DllmCache, least_similar
from forecache.dllm.model import LLaDAModel
from forecache.dllm.v_verify import valid_candidates, verify

from .tiny import run_layers

VOCAB, MASK = 64, 63


@pytest.fixture(scope="module")
def model() -> LLaDAModel:
    torch.manual_seed(0)
    config = LLaDAConfig(d_model=32, n_heads=4, n_kv_heads=2, n_layers=2, mlp_hidden_size=64, vocab_size=VOCAB,
                         embedding_size=VOCAB, max_sequence_length=64, mask_token_id=MASK)
    return LLaDAModel(config).eval()


def test_valid_candidates_reads_the_padding_and_lowers_k_to_what_every_row_can_pick():
    key_mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)[:, None, None, :]
    valid, k = valid_candidates(key_mask, 1, 5, 3)
    assert valid.tolist() == [[False, True, True, True], [True, True, True, True]] and k == 3
    assert valid_candidates(key_mask, 0, 3, 3)[1] == 1  # row 0 has one real token among columns 0..2
    assert valid_candidates(key_mask.reshape(2, 6), 0, 3, 3)[1] == 1  # (B, L) masks too


@pytest.mark.parametrize("policy", [DllmCache(5, 3, 0.25), CombinedCache(5, "answer", 2, 0.25)],
                         ids=["dllm_cache", "combined"])
def test_verify_is_least_similar_over_the_fresh_and_stored_values(model, policy):
    """After a full first call, V-verify at layer 0 on a changed input: the values it computes are the layer's,
    its picks are least_similar's (padding never picked), and the state's counters count the work."""
    P, R, b = 4, 8, 2
    torch.manual_seed(1)
    ids = torch.randint(0, MASK, (b, P + R))
    mask = torch.ones(b, P + R, dtype=torch.long)
    mask[1, :2] = 0  # a padded row: its first two keys are masked
    state = policy.start(model, P, R, 4)
    with torch.no_grad():
        run_layers(model, state.runner(ids, 0, 0), ids, mask)
        layer, key_mask = model.blocks[0], mask.bool()[:, None, None, :]
        x = model.wte(ids) + 0.5 * torch.randn(b, P + R, 32)
        lo, hi = 0, P + R  # candidates over the prompt too, so the padding matters
        valid, k = valid_candidates(key_mask, lo, hi, 5)
        verified = verify(state, 0, layer, x, lo, hi, k, valid)
        fresh = layer.project_v(layer.attn_norm(x))
    assert torch.equal(verified.v, fresh) and torch.equal(verified.h, layer.attn_norm(x))
    assert torch.equal(verified.pick, least_similar(fresh, state.store[0].v, k, valid))
    assert not verified.pick[1].lt(2).any()  # the padded keys of row 1
    h, v, pos = verified.picked()
    assert torch.equal(pos, verified.pick + lo) and v.shape == (b, 2, k, 8) and h.shape == (b, k, 32)
    assert verified.fresh == (lo, verified.v)
    assert (state.verified, state.selected, state.adaptive_row_layers) == (b * (hi - lo), b * k, b)


def test_verify_with_nothing_to_pick_only_measures(model):
    state = DllmCache(5, 3, 0.25).start(model, 4, 8, 4)
    torch.manual_seed(2)
    ids = torch.randint(0, MASK, (1, 12))
    with torch.no_grad():
        run_layers(model, state.runner(ids, 0, 0), ids)
        verified = verify(state, 1, model.blocks[1], torch.randn(1, 12, 32), 4, 12, 0, torch.ones(1, 8, dtype=bool))
    assert verified.pick is None and verified.sim.shape == (1, 8) and state.selected == 0 and state.verified == 8
    with pytest.raises(ValueError, match="picked nothing"):
        verified.picked()
