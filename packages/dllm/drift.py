"""Feature drift of the cached answer: the measure behind dLLM-Cache's drift-triggered response refresh.

dLLM-Cache (arXiv 2506.06295) recomputes every answer token each ``K_r`` model calls, whatever happened in
between. The drift trigger (our option, not the paper's) refreshes when the cache has gone stale instead. The
staleness is read off what V-verify computes anyway: for every candidate answer token the cosine similarity
between its fresh value vector and the one cached at its last recomputation. Per layer and row:

    drift = mean over the row's valid candidate tokens of (1 - cos(V_fresh, V_cached))

in [0, 2]; a call's drift is the mean over the layers that measured it, then the **maximum over rows** (the
refresh is one decision for the whole batch, so the stalest row decides). By default the trigger compares the
sum of the calls' drifts since the last response refresh with its threshold (``DllmCache.drift_accumulate``):
a single call's drift is dominated by the tokens committed at that call (their embedding changed), so it is
nearly constant from one call to the next, while the sum grows with what changed since the refresh, which
makes the threshold a smooth knob. A NaN similarity counts as infinite drift, so a corrupted cache always
triggers a refresh.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def row_drift(sim: Tensor, valid: Tensor | None) -> Tensor:
    """Per row, the mean of ``1 - sim`` over the valid tokens: float64 ``(B,)`` from ``sim`` ``(B, n)``.

    ``valid`` (bool ``(B, n)``, ``None`` = all): padded tokens do not count; a row without valid tokens has drift 0.
    """
    d = (1.0 - sim.double()).nan_to_num(nan=math.inf)
    if valid is None:
        return d.mean(-1)
    return d.masked_fill(~valid, 0.0).sum(-1) / valid.sum(-1).clamp_min(1)


def step_drift(per_layer: list[Tensor]) -> float:
    """A step's drift from the per-layer ``row_drift`` values: mean over layers, then max over rows."""
    return float(torch.stack(per_layer).mean(0).max())
