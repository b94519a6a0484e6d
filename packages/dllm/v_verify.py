"""V-verify, dLLM-Cache's choice of the answer tokens to recompute (Liu et al., arXiv 2506.06295).

Between full refreshes, every candidate answer token's value vector is recomputed (the cheap third of its
query/key/value projection) and compared, by cosine similarity over all heads, with the value cached at the
token's last recomputation; per row the ``k`` least similar tokens are recomputed. The same similarities feed
the drift measure of :mod:`forecache.dllm.drift`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


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
