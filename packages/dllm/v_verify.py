"""V-verify, dLLM-Cache's choice of the answer tokens to recompute (Liu et al., arXiv 2506.06295).

Between full refreshes, every candidate answer token's value vector is recomputed (the cheap third of its
query/key/value projection) and compared, by cosine similarity over all heads, with the value cached at the
token's last recomputation; per row the ``k`` least similar tokens are recomputed. The same similarities feed
the drift measure of :mod:`forecache.dllm.drift`.

:func:`verify` is that whole step at one layer, as every policy on dLLM-Cache's features runs it (dLLM-Cache's
answer tokens, :mod:`forecache.dllm.dllm_cache_state`; the combination's span, :mod:`forecache.dllm.combined`):
the candidates' fresh values, their similarity with the stored ones, the picks, and the V-verify counters of the
state. :func:`valid_candidates` gives the candidates a row may pick (never padding) and the pick count that fits.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from .cached_layers import columns
from .feature_store import take_tokens

if TYPE_CHECKING:
    from .cached_layers import CachedLayers
    from .model import LLaDABlock


def value_similarity(v_new: Tensor, v_cached: Tensor) -> Tensor:
    """Cosine similarity (float32 ``(B, n)``) between the tokens' whole value vectors (all heads) of two
    (B, Hkv, n, hd) tensors: V-verify's score, and the drift measure's."""
    def per_token(v: Tensor) -> Tensor:  # (B, Hkv, n, hd) -> (B, n, Hkv * hd), float32 for the cosine
        return v.transpose(1, 2).flatten(2).float()

    return torch.cosine_similarity(per_token(v_new), per_token(v_cached), dim=-1)


def pick_least_similar(sim: Tensor, k: int, valid: Tensor | None = None) -> Tensor:
    """Per row, the sorted positions (B, k) of the ``k`` lowest similarities ``sim`` (B, n); see least_similar."""
    sim = sim.nan_to_num(nan=-math.inf)
    if valid is not None:
        if k > int(valid.sum(-1).min()):
            raise ValueError(f"least_similar: k={k} exceeds a row's valid token count; lower k or rho")
        sim = sim.masked_fill(~valid, math.inf)
    return sim.argsort(dim=-1, stable=True)[:, :k].sort(dim=-1).values


def least_similar(v_new: Tensor, v_cached: Tensor, k: int, valid: Tensor | None = None) -> Tensor:
    """V-verify: per row, the ``k`` tokens whose value changed most, as sorted positions LongTensor ``(B, k)``.

    ``v_new``/``v_cached``: (B, Hkv, n, hd); similarity is the cosine between the tokens' whole value vectors
    (all heads). ``valid`` (bool (B, n)): tokens that may be picked; others (padding) never are, so ``k`` must
    not exceed any row's valid count. A NaN similarity counts as least similar (the token is recomputed). Ties
    go to the leftmost token.
    """
    return pick_least_similar(value_similarity(v_new, v_cached), k, valid)


def valid_candidates(key_mask: Tensor, lo: int, hi: int, k: int) -> tuple[Tensor, int]:
    """The candidate columns ``[lo, hi)`` a row may pick, bool ``(B, hi - lo)`` read off the model's ``key_mask``
    (bool ``(B, 1, 1, L)`` or ``(B, L)``, False on padding), and ``k`` lowered to the fewest valid candidates of
    any row, so that every row can pick that many. The sampler never pads the answer; a caller might."""
    valid = key_mask.reshape(key_mask.shape[0], -1)[:, lo:hi]
    return valid, min(k, int(valid.sum(-1).min()))


class Verified(NamedTuple):
    """What V-verify found at one layer over the candidate columns ``[lo, lo + n)``.

    Attributes:
        h: ``attn_norm`` of every candidate's input (B, n, D), which the recompute reuses; None when the layer
            reuses the projections of unchanged tokens (``reuse_unchanged_qkv``: nothing was renormed).
        v: fresh values of every candidate (B, Hkv, n, hd): the recomputed queries' attention reads them all.
        sim: cosine similarity of each candidate's fresh and stored value, float32 (B, n) (the drift's input).
        pick: per row, the sorted candidate indices (B, k) of the ``k`` least similar; None when ``k`` was 0.
        lo: the first candidate column.
    """

    h: Tensor | None
    v: Tensor
    sim: Tensor
    pick: Tensor | None
    lo: int

    def picked(self) -> tuple[Tensor | None, Tensor, Tensor]:
        """The picks as the recompute takes them: their normed inputs (B, k, D) (None when :attr:`h` is), fresh
        values (B, Hkv, k, hd) and absolute positions (B, k). Only when something was picked."""
        if self.pick is None:
            raise ValueError("Verified.picked: V-verify picked nothing (k = 0); check `pick is not None` first")
        h = None if self.h is None else take_tokens(self.h, self.pick)
        return h, take_tokens(self.v, self.pick, dim=2), self.pick + self.lo

    @property
    def fresh(self) -> tuple[int, Tensor]:
        """``(lo, v)``: the candidates' fresh values, as :meth:`CachedLayers.recompute`'s ``fresh`` takes them."""
        return self.lo, self.v


def verify(
    state: CachedLayers, i: int, layer: LLaDABlock, x: Tensor, lo: int, hi: int, k: int, valid: Tensor, *,
    changed: Tensor | None = None,
) -> Verified:
    """V-verify at layer ``i`` over the candidate columns ``[lo, hi)``: their fresh values (through
    ``state.values``, which counts their FLOPs and, with ``changed``, keeps unchanged tokens' stored values), the
    cosine similarity with the values stored at layer ``i``, and per row the ``k`` least similar among ``valid``.

    ``k`` and ``valid`` come from :func:`valid_candidates` (``k`` at most any row's valid count; 0: measure
    only, e.g. for the drift). Adds to the state's counters: ``verified`` (candidate token-layers), and when it
    picks, ``selected`` (picks) and ``adaptive_row_layers`` (rows).
    """
    b = x.shape[0]
    h, v = state.values(i, layer, x, columns(lo, hi, b, x.device), changed)
    sim = value_similarity(v, state.store[i].v[:, :, lo:hi])
    state.verified += b * (hi - lo)
    pick = None
    if k > 0:
        # every candidate picked means every candidate is valid: no mask to apply
        pick = pick_least_similar(sim, k, None if k == hi - lo else valid)
        state.selected += pick.numel()
        state.adaptive_row_layers += b
    return Verified(h, v, sim, pick, lo)
