"""Token-wise caching (ToCa, arXiv 2410.05317): at cached steps, recompute the tokens whose cached
value is most likely stale, and reuse the rest.

ToCa picks, per layer and module, the fraction ``R = R0 · r_layer · r_step · r_module`` of tokens
with the highest cache score and recomputes only those. The reference code's "ToCa" schedule uses
r_step = 1 + 0.4 − 0.8·step/steps, r_layer = 1 + 0.8 − 1.6·layer/(layers−1), and r_module = 0 for
attention (fully reused between full steps) and 2.5 for the MLP, where the recomputation goes.

Scores. The paper's s1/s2 come from the attention map, which fused attention kernels (SDPA,
FlashAttention) never materialise; here s1 is replaced by each token's relative input change since
the token was last computed (the reference code's ``similarity`` mode, computed on inputs, which
exist at a cached step). s3, the cache frequency (steps since the token was last fresh, divided by
the full-compute interval, weight 0.25), and s4, the uniform-spatial bonus (the best token of each
2×2 cell gets +0.6 of its score, square token grids only), are as in the reference code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..tokens import put_tokens, take_tokens
from .base import CallContext, Plans
from .module import ModuleSite, flatten


@dataclass(frozen=True)
class TokenSelection:
    """ToCa's knobs. ``ratio`` is R0, the base fraction of tokens recomputed at a cached step;
    ``interval`` the full-compute interval (for the s3 score); the rest as in the reference code."""

    ratio: float = 0.07
    interval: int = 4
    frequency_weight: float = 0.25
    spatial_bonus: float = 0.6
    schedule: bool = True
    mlp_factor: float = 2.5

    def validate(self) -> None:
        if not 0.0 <= self.ratio <= 1.0:
            raise ValueError(f"TokenSelection.ratio={self.ratio} must lie in [0, 1] (fraction of tokens recomputed)")
        if self.interval < 1:
            raise ValueError(f"TokenSelection.interval={self.interval} must be >= 1")

    def fraction(self, layer: int, layers: int, step: int, steps: int | None) -> float:
        """Fraction of an MLP's tokens recomputed at a cached step (attention gets none: ToCa's
        schedule moves all of attention's share to the MLP)."""
        if not self.schedule:
            return self.ratio
        r_layer = 1 + 0.8 - 1.6 * layer / max(layers - 1, 1)
        r_step = 1.0 if not steps else 1 + 0.4 - 0.8 * step / steps
        return min(1.0, max(0.0, self.ratio * r_layer * r_step * self.mlp_factor))


def spatial_bonus(score: torch.Tensor, bonus: float) -> torch.Tensor:
    """s4: within each 2×2 cell of a square token grid, the top token gets ``bonus`` × its score."""
    n = score.shape[-1]
    side = math.isqrt(n)
    if side * side != n or side % 2 or bonus == 0:
        return score
    cells = score.view(-1, side // 2, 2, side // 2, 2).permute(0, 1, 3, 2, 4).reshape(score.shape[0], -1, 4)
    top, arg = cells.max(dim=-1, keepdim=True)
    cells = cells + torch.zeros_like(cells).scatter_(-1, arg, 1.0) * top * bonus
    return cells.view(-1, side // 2, side // 2, 2, 2).permute(0, 1, 3, 2, 4).reshape(score.shape)


class TokenSite(ModuleSite):
    """A token-wise module (an MLP: each token's output depends on that token alone) that
    recomputes a scored subset of its tokens at cached steps."""

    def __init__(self, *args, selection: TokenSelection, layer: int, layers: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.selection = selection
        self.layer, self.layers = layer, layers

    def _execute(self, ctx: CallContext, plans: Plans, original, args, kwargs, key):
        x = next(v for v in (*args, *kwargs.values()) if torch.is_tensor(v))
        parts = super()._execute(ctx, plans, original, args, kwargs, key)
        steps = None if ctx.timesteps is None else len(ctx.timesteps)
        k = int(self.selection.fraction(self.layer, self.layers, ctx.step, steps) * x.shape[1])
        stale = []  # rows that reuse this step: their k stalest tokens are recomputed together
        for r, plan in enumerate(plans):
            hist = plan.hist
            if plan.compute:
                hist.keep("x", x[r : r + 1])
                hist.extra["age"] = torch.zeros(x.shape[1], device=x.device)
                continue
            hist.extra["age"] = hist.extra.get("age", torch.zeros(x.shape[1], device=x.device)) + 1
            if k and x.dim() == 3:
                stale.append(r)
        if not stale:
            return parts
        hists = [plans[r].hist for r in stale]
        rows = torch.tensor(stale, device=x.device)
        xs = x.index_select(0, rows)
        pos = self._select(xs, torch.cat([h.extra["x"] for h in hists]), torch.stack([h.extra["age"] for h in hists]), k)
        fresh, _ = flatten(original(take_tokens(xs, pos)))  # every stale row in one call
        self.runtime.extra(key, len(stale) * k / x.shape[1])
        parts = list(parts)
        for c, f in enumerate(fresh):
            parts[c] = parts[c].index_copy(0, rows, put_tokens(parts[c].index_select(0, rows), pos, f))
        for i, hist in enumerate(hists):  # the histories are the rows' own: each takes its fresh tokens
            idx = pos[i]
            for c, f in enumerate(fresh):
                hist.parts[c][-1][0, idx] = f[i].to(hist.parts[c][-1].dtype)
            hist.extra["x"][0, idx] = xs[i, idx]
            hist.extra["age"][idx] = 0
        return tuple(parts)

    def _select(self, x: torch.Tensor, ref: torch.Tensor, age: torch.Tensor, k: int) -> torch.Tensor:
        """Each row's ``k`` tokens (rows, k) with the highest cache score (input change, staleness,
        spatial spread)."""
        change = (x - ref).float().norm(dim=-1) / ref.float().norm(dim=-1).clamp_min(1e-6)
        score = torch.nn.functional.normalize(change, dim=-1)
        score = score + self.selection.frequency_weight * age / self.selection.interval
        score = spatial_bonus(score, self.selection.spatial_bonus)
        return score.topk(k, dim=-1).indices
