"""forecache.core.tokens: batched per-row token gather/scatter, fresh-query attention over stored K/V,
token-wise compute on a subset, and analytic FLOPs checked against FlopCounterMode."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from forecache.core.flops import flop_counter
from forecache.core.tokens import (
    FlopTally,
    TokenCompute,
    attend_stored,
    attention_flops,
    changed_first,
    linear_flops,
    mlp_flops,
    put_tokens,
    put_tokens_,
    take_tokens,
    tokenwise_flops,
)


def _counted(fn) -> int:
    with flop_counter() as mode:
        fn()
    return mode.get_total_flops()


def _gqa_full(q, k, v, mask=None):
    """Reference: full attention, key/value heads repeated for grouped queries."""
    r = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(r, dim=1), v.repeat_interleave(r, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


# ---------------------------------------------------------------- gather / scatter


def test_take_tokens_picks_each_rows_own_positions():
    t = torch.arange(2 * 5 * 3).view(2, 5, 3).float()
    pos = torch.tensor([[4, 0], [1, 1]])
    got = take_tokens(t, pos)
    assert torch.equal(got[0], t[0, [4, 0]])
    assert torch.equal(got[1], t[1, [1, 1]])


def test_take_tokens_on_head_axis_and_negative_dim():
    t = torch.randn(2, 3, 6, 4)
    pos = torch.tensor([[5, 2], [0, 3]])
    got = take_tokens(t, pos, dim=2)
    assert got.shape == (2, 3, 2, 4)
    assert torch.equal(got[1], t[1][:, [0, 3]])
    assert torch.equal(take_tokens(t, pos, dim=-2), got)


def test_put_round_trip_copy_and_in_place():
    torch.manual_seed(0)
    t = torch.randn(3, 7, 4)
    pos = torch.tensor([[0, 6, 3], [2, 1, 5], [4, 4, 0]])
    src = torch.randn(3, 3, 4)
    new = put_tokens(t, pos, src)
    assert new is not t and torch.equal(take_tokens(new, pos)[0], src[0])
    # rows are independent: row 1 changed only at its own positions, nowhere else
    untouched = torch.ones(3, 7, dtype=torch.bool)
    untouched.scatter_(1, pos, False)
    assert torch.equal(new[untouched], t[untouched])
    assert torch.equal(take_tokens(new, pos)[1], src[1])
    # round trip: writing back what was taken changes nothing
    assert torch.equal(put_tokens(t, pos, take_tokens(t, pos)), t)
    before = t.clone()
    out = put_tokens_(t, pos[:, :2], src[:, :2])
    assert out is t and torch.equal(t[0, 6], src[0, 1]) and not torch.equal(t, before)


def test_put_tokens_casts_src_and_shared_positions():
    t = torch.zeros(2, 4, 2, dtype=torch.float64)
    pos = torch.tensor([[1, 3]])  # one row of positions for every row
    src = torch.ones(2, 2, 2, dtype=torch.float32)
    new = put_tokens(t, pos, src)
    assert new.dtype == torch.float64
    assert new[:, [1, 3]].eq(1).all() and new[:, [0, 2]].eq(0).all()


def test_changed_first_flagged_tokens_first():
    changed = torch.tensor([[False, True, False, True], [True, False, False, False]])
    idx = changed_first(changed)
    assert idx.shape == (2, 2)
    assert idx[0].tolist() == [1, 3] and idx[1].tolist() == [0, 1]
    assert changed_first(torch.zeros(2, 3, dtype=torch.bool)) is None


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: take_tokens(torch.zeros(2, 4, 3), torch.zeros(2, 1, 1, dtype=torch.long)), "pos"),
        (lambda: take_tokens(torch.zeros(2, 4, 3), torch.zeros(2, 1)), "pos"),
        (lambda: take_tokens(torch.zeros(2, 4, 3), torch.zeros(3, 1, dtype=torch.long)), "pos"),
        (lambda: take_tokens(torch.zeros(2, 4, 3), torch.zeros(2, 1, dtype=torch.long), dim=0), "dim"),
        (lambda: put_tokens(torch.zeros(2, 4, 3), torch.zeros(2, 1, dtype=torch.long), torch.zeros(2, 2, 3)), "src"),
        (lambda: changed_first(torch.zeros(2, 3)), "changed"),
    ],
)
def test_gather_bad_arguments_raise_naming_them(call, name):
    with pytest.raises(ValueError, match=name):
        call()


# ---------------------------------------------------------------- attention over stored K/V


@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (4, 2)])
def test_fresh_queries_over_exact_store_equal_full_attention(heads, kv_heads):
    torch.manual_seed(1)
    b, length, hd = 3, 9, 8
    q = torch.randn(b, heads, length, hd, dtype=torch.float64)
    k = torch.randn(b, kv_heads, length, hd, dtype=torch.float64)
    v = torch.randn(b, kv_heads, length, hd, dtype=torch.float64)
    full = _gqa_full(q, k, v)
    pos = torch.tensor([[0, 8, 4], [3, 3, 1], [7, 2, 5]])
    # the store already holds the exact keys/values; the fresh ones of pos are written first (same values)
    k_store, v_store = k.clone(), v.clone()
    out = attend_stored(
        take_tokens(q, pos, dim=2), k_store, v_store, pos, take_tokens(k, pos, dim=2), take_tokens(v, pos, dim=2)
    )
    torch.testing.assert_close(out, take_tokens(full, pos, dim=2), rtol=1e-12, atol=1e-12)


def test_stale_store_is_updated_at_fresh_positions_with_padding_mask():
    torch.manual_seed(2)
    b, heads, kv_heads, length, hd = 2, 6, 3, 10, 4
    q = torch.randn(b, heads, length, hd, dtype=torch.float64)
    k = torch.randn(b, kv_heads, length, hd, dtype=torch.float64)
    v = torch.randn(b, kv_heads, length, hd, dtype=torch.float64)
    key_mask = torch.ones(b, length, dtype=torch.bool)
    key_mask[0, 7:] = False  # row 0 is padded after 7 tokens
    key_mask[1, :2] = False  # row 1 is left-padded
    full = _gqa_full(q, k, v, key_mask[:, None, None, :])
    pos = torch.tensor([[1, 5, 6], [2, 9, 4]])
    k_store, v_store = k.clone(), v.clone()
    k_store.scatter_(2, pos[:, None, :, None].expand(b, kv_heads, 3, hd), 99.0)  # stale at exactly pos
    v_store.scatter_(2, pos[:, None, :, None].expand(b, kv_heads, 3, hd), -99.0)
    args = (take_tokens(q, pos, dim=2), k_store, v_store, pos, take_tokens(k, pos, dim=2), take_tokens(v, pos, dim=2))
    kept = k_store.clone()
    out = attend_stored(*args, key_mask, write=False)
    torch.testing.assert_close(out, take_tokens(full, pos, dim=2), rtol=1e-12, atol=1e-12)
    assert torch.equal(k_store, kept)  # write=False leaves the store alone
    out = attend_stored(*args, key_mask)
    torch.testing.assert_close(out, take_tokens(full, pos, dim=2), rtol=1e-12, atol=1e-12)
    assert torch.equal(k_store, k) and torch.equal(v_store, v)  # write=True: the store now holds the fresh ones


def test_attend_stored_float32_is_close_to_full_attention():
    torch.manual_seed(3)
    q, k, v = torch.randn(2, 2, 16, 8), torch.randn(2, 2, 16, 8), torch.randn(2, 2, 16, 8)
    pos = torch.tensor([[3, 15], [0, 8]])
    out = attend_stored(take_tokens(q, pos, dim=2), k, v)  # nothing fresh to write
    torch.testing.assert_close(out, take_tokens(_gqa_full(q, k, v), pos, dim=2), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(q=torch.zeros(2, 4, 3)), "q"),
        (dict(k_store=torch.zeros(2, 2, 6, 5)), "k_store"),
        (dict(v_store=torch.zeros(2, 2, 5, 4)), "v_store"),
        (dict(q=torch.zeros(2, 3, 2, 4)), "multiple"),
        (dict(k=torch.zeros(2, 4, 2, 4), pos=torch.zeros(2, 2, dtype=torch.long)), "k has 4 heads"),
        (dict(k=torch.zeros(2, 2, 2, 4)), "pos"),
        (dict(key_mask=torch.ones(2, 5, dtype=torch.bool)), "key_mask"),
    ],
)
def test_attend_stored_bad_shapes_raise_naming_the_argument(kwargs, name):
    args = dict(q=torch.zeros(2, 4, 2, 4), k_store=torch.zeros(2, 2, 6, 4), v_store=torch.zeros(2, 2, 6, 4))
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        attend_stored(**args)


# ---------------------------------------------------------------- analytic FLOPs = FlopCounterMode


def test_linear_flops_match_the_counter():
    lin = nn.Linear(12, 20)
    x = torch.randn(3, 7, 12)
    assert linear_flops(7, 12, 20, rows=3) == _counted(lambda: lin(x))
    assert tokenwise_flops(lin, tokens=7, rows=3) == linear_flops(7, 12, 20, rows=3)


def test_mlp_flops_match_the_counter():
    mlp = nn.Sequential(nn.LayerNorm(12), nn.Linear(12, 48), nn.GELU(), nn.Dropout(0.0), nn.Linear(48, 12))
    x = torch.randn(2, 9, 12)
    counted = _counted(lambda: mlp(x))
    assert mlp_flops(9, [12, 48, 12], rows=2) == counted
    assert tokenwise_flops(mlp, tokens=9, rows=2) == counted
    assert tokenwise_flops(nn.Conv1d(3, 3, 1)) is None  # not a known token-wise stack


@pytest.mark.parametrize("heads, kv_heads, masked", [(4, 4, False), (4, 4, True), (4, 2, False)])
def test_attention_flops_match_the_counter(heads, kv_heads, masked):
    b, length, hd = 2, 11, 8
    q = torch.randn(b, heads, length, hd)
    k, v = torch.randn(b, kv_heads, length, hd), torch.randn(b, kv_heads, length, hd)
    mask = torch.rand(b, length) > 0.2 if masked else None
    mask = None if mask is None else mask.index_fill(1, torch.tensor([0]), True)
    counted = _counted(lambda: attend_stored(q, k, v, key_mask=mask))
    assert attention_flops(length, length, heads, hd, rows=b) == counted == 4 * b * heads * length * length * hd


def test_flop_tally_adds_pieces():
    tally = FlopTally()
    tally.linear(3, 4, 5)
    assert tally.attention(2, 6, 2, 4, value_dim=8, rows=2) == 2 * 3 * 4 * 5 + 2 * 2 * 2 * 2 * 6 * (4 + 8)


# ---------------------------------------------------------------- token-wise compute on a subset


def test_token_compute_equals_full_output_at_pos_and_base_elsewhere():
    torch.manual_seed(4)
    mlp = nn.Sequential(nn.Linear(8, 32), nn.SiLU(), nn.Linear(32, 6)).double()
    x = torch.randn(3, 10, 8, dtype=torch.float64)
    base = torch.randn(3, 10, 6, dtype=torch.float64)
    pos = torch.tensor([[0, 9, 4], [2, 3, 5], [7, 7, 1]])
    compute = TokenCompute(mlp)
    res = compute(x, pos, base)
    full = mlp(x)
    torch.testing.assert_close(take_tokens(res.out, pos), take_tokens(full, pos), rtol=1e-12, atol=1e-12)
    rest = torch.ones(3, 10, dtype=torch.bool).scatter_(1, pos, False)
    assert torch.equal(res.out[rest], base[rest])
    assert res.out is not base and res.fresh.shape == (3, 3, 6)
    assert res.flops == _counted(lambda: mlp(take_tokens(x, pos))) == mlp_flops(3, [8, 32, 6], rows=3)
    assert compute.total_flops == res.flops


def test_token_compute_in_place_empty_subset_and_caller_flops():
    x, base = torch.randn(2, 5, 4), torch.zeros(2, 5, 4)
    compute = TokenCompute(lambda h: h * 2, flops_per_token=7)
    res = compute(x, torch.tensor([[1], [4]]), base, inplace=True)
    assert res.out is base and res.flops == 7 * 2
    assert torch.equal(base[0, 1], x[0, 1] * 2) and torch.equal(base[1, 4], x[1, 4] * 2)
    empty = compute(x, torch.zeros(2, 0, dtype=torch.long), base)
    assert empty.flops == 0 and torch.equal(empty.out, base) and empty.out is not base
    assert TokenCompute(lambda h: h).flops_per_token is None


@pytest.mark.parametrize(
    "x, pos, base, name",
    [
        (torch.zeros(2, 5), torch.zeros(2, 1, dtype=torch.long), torch.zeros(2, 5, 4), "x"),
        (torch.zeros(2, 5, 4), torch.zeros(2, 1, dtype=torch.long), torch.zeros(2, 6, 4), "base"),
        (torch.zeros(2, 5, 4), torch.zeros(3, 1, dtype=torch.long), torch.zeros(2, 5, 4), "pos"),
        (torch.zeros(2, 5, 4), torch.zeros(2, 1, dtype=torch.long), torch.zeros(2, 5, 3), "module returned"),
    ],
)
def test_token_compute_bad_shapes_raise_naming_the_argument(x, pos, base, name):
    with pytest.raises(ValueError, match=name):
        TokenCompute(nn.Linear(4, 4))(x, pos, base)
