"""Fresh queries of a token subset attending over stored keys and values.

A token-level cache over attention (dLLM-Cache's recomputed tokens, an edit region, a world model's refreshed
tokens) recomputes the query, key and value of only some tokens ``pos`` (B, n) of each row, yet each of those
queries must see *every* key: its fresh neighbours' and the stored ones of the tokens it did not recompute. So the
fresh keys/values are written into the full-length store at their positions first, then the ``n`` queries attend
over all ``L`` stored keys — one ``scaled_dot_product_attention`` call for the whole batch.

Shapes: queries ``(B, H, n, hd)``; stored keys/values ``(B, Hkv, L, hd)`` with ``H`` a multiple of ``Hkv``
(grouped-query attention: key/value head ``j`` serves query heads ``j·H/Hkv .. (j+1)·H/Hkv − 1``, the layout
``repeat_interleave`` gives and LLaMA-style checkpoints use). Cost: :func:`forecache.core.tokens.flops.attention_flops`
with ``queries=n, keys=L`` per row (masked keys are computed too).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .gather import put_tokens, put_tokens_


def _check(name: str, t: Tensor, dims: int, layout: str) -> None:
    if t.dim() != dims:
        raise ValueError(f"attend_stored: {name} has shape {tuple(t.shape)}; pass {layout}")


def _key_mask(key_mask: Tensor, b: int, length: int) -> Tensor:
    """The padding mask as SDPA takes it: (B, L) becomes (B, 1, 1, L); 4-D masks pass as they are."""
    if key_mask.dim() == 2:
        if key_mask.shape[0] not in (1, b) or key_mask.shape[1] != length:
            raise ValueError(
                f"attend_stored: key_mask has shape {tuple(key_mask.shape)}; pass (B, L) = ({b}, {length}) "
                "(True where a key may be attended to) or a mask broadcastable to (B, H, n, L)"
            )
        return key_mask[:, None, None, :]
    if key_mask.dim() != 4 or key_mask.shape[-1] != length:
        raise ValueError(
            f"attend_stored: key_mask has shape {tuple(key_mask.shape)}; pass (B, L) = ({b}, {length}) or a mask "
            "broadcastable to (B, H, n, L)"
        )
    return key_mask


def attend_stored(
    q: Tensor,
    k_store: Tensor,
    v_store: Tensor,
    pos: Tensor | None = None,
    k: Tensor | None = None,
    v: Tensor | None = None,
    key_mask: Tensor | None = None,
    *,
    write: bool = True,
    scale: float | None = None,
) -> Tensor:
    """Attention of the fresh queries ``q`` (B, H, n, hd) over the stored keys/values, after writing the fresh
    keys/values of the tokens ``pos`` into the store. Returns (B, H, n, hd_v), heads not yet merged nor projected.

    Args:
        q: the queries of the tokens ``pos``, position encoding (RoPE) already applied at their own positions.
        k_store, v_store: every token's key and value, (B, Hkv, L, hd) and (B, Hkv, L, hd_v).
        pos: per-row positions (B, n) (or (1, n)) of the fresh keys/values; None when there are none to write.
        k, v: the fresh keys/values (B, Hkv, n, hd[_v]) of ``pos``; either may be None (that store is used as is).
        key_mask: bool (B, L), True where a key may be attended to (padding False), or any mask SDPA accepts
            broadcastable to (B, H, n, L) (bool, or float added to the scores); None attends to every key.
        write: True (default) writes ``k``/``v`` into ``k_store``/``v_store`` in place — the store then holds
            them for later calls, as a cache wants; False attends over copies and leaves the stores untouched.
        scale: the softmax scale; None = SDPA's ``1/sqrt(hd)``.

    Raises:
        ValueError: naming the argument whose shape does not fit, and the shape it needs.
    """
    _check("q", q, 4, "queries (B, H, n, hd)")
    _check("k_store", k_store, 4, "stored keys (B, Hkv, L, hd)")
    _check("v_store", v_store, 4, "stored values (B, Hkv, L, hd_v)")
    b, heads, _, hd = q.shape
    _, kv_heads, length, _ = k_store.shape
    if k_store.shape[0] != b or k_store.shape[3] != hd:
        raise ValueError(
            f"attend_stored: k_store has shape {tuple(k_store.shape)} for q {tuple(q.shape)}; pass keys (B, Hkv, "
            f"L, hd) = ({b}, Hkv, L, {hd}) (same batch and head size as q)"
        )
    if tuple(v_store.shape[:3]) != (b, kv_heads, length):
        raise ValueError(
            f"attend_stored: v_store has shape {tuple(v_store.shape)}; pass values ({b}, {kv_heads}, {length}, "
            "hd_v), matching k_store's batch, heads and length"
        )
    if kv_heads == 0 or heads % kv_heads:
        raise ValueError(
            f"attend_stored: q has {heads} heads, k_store {kv_heads}; the query heads must be a multiple of the "
            "key/value heads (grouped-query attention)"
        )
    if (k is not None or v is not None) and pos is None:
        raise ValueError("attend_stored: fresh k/v given without pos; pass their positions pos (B, n)")
    put = put_tokens_ if write else put_tokens
    keys, values = k_store, v_store
    for name, fresh, store in (("k", k, k_store), ("v", v, v_store)):
        if fresh is None:
            continue
        _check(name, fresh, 4, f"fresh {'keys' if name == 'k' else 'values'} (B, Hkv, n, hd) of pos")
        if fresh.shape[1] != kv_heads:
            raise ValueError(
                f"attend_stored: {name} has {fresh.shape[1]} heads, the store {kv_heads}; pass fresh {name} with the "
                "store's key/value heads (B, Hkv, n, hd), before any repeat for grouped queries"
            )
        merged = put(store, pos, fresh, dim=2)
        if name == "k":
            keys = merged
        else:
            values = merged
    if heads != kv_heads:
        # Grouped-query attention by repeating key/value heads (not SDPA's enable_gqa): the same layout and
        # arithmetic as a model that repeats them itself, so a cached layer stays bit-close to the uncached one.
        r = heads // kv_heads
        keys, values = keys.repeat_interleave(r, dim=1), values.repeat_interleave(r, dim=1)
    mask = None if key_mask is None else _key_mask(key_mask, b, length)
    if mask is not None and mask.dtype != torch.bool and mask.dtype != q.dtype:
        mask = mask.to(q.dtype)
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scale)
