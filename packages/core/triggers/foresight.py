"""Per-site reuse thresholds set during a warm-up from feature MSE (Foresight)."""

from __future__ import annotations

import torch

from ..validation import check_int, check_real
from ._common import mse, snapshot
from .base import Observation, Trigger

#: Weights of the last three warm-up MSEs in lambda, newest first: 10^-(W-t) for t = W, W-1, W-2.
_LAMBDA_WEIGHTS = (1.0, 0.1, 0.01)


class Foresight(Trigger):
    """Foresight (arXiv 2506.00329): each layer (here: each site, and each branch and row) gets its
    own reuse threshold, learnt from how much its output moved during a warm-up.

    Rule, per row and step, with ``o_s`` the site's output at its s-th computation:

    - warm-up, ``step < warmup``: compute; record ``MSE(o_t, o_{t-1})``. At the last warm-up step,
      ``lambda = sum_{t=W-2..W} 10^-(W-t) * MSE(o_t, o_{t-1})`` (the paper's equation as the
      survey quotes it, eq. 40: the last three warm-up steps, terms that do not exist dropped).
    - afterwards: compute on every ``recalculate``-th step (``step % recalculate == 0``);
      otherwise reuse iff ``delta <= gamma * lambda``, where ``delta`` is the MSE between the
      site's last two computed outputs (measured when it last computed: a change estimate that
      needs nothing from the current step). Metric: ``delta``. ``gamma=0`` never reuses.

    No signal is needed: ``delta`` and ``lambda`` come from the outputs ``observe`` receives.

    Verified against STAR-Laboratory/foresight (commit a4dba33): ``videosys/models/transformers/
    cogvideox_transformer_3d.py`` keeps ``transformer_block_mse[i] = F.mse_loss(out, cache[i])``
    updated only when block i runs, skips when ``mse <= threshold[i]``, recomputes everything when
    ``count % recalculate == 0``; ``examples/*/sample.py`` and ``eval/foresight/experiments`` use
    ``warmup=8, recalculate=2, threshold=0.5`` (gamma; 1.0 in one Open-Sora setting), the defaults
    here.

    Deviations: the reference code sets ``lambda = gamma * MSE`` of the last warm-up step only;
    this follows the paper's weighted sum of the last three, whose older terms (weights 0.1 and
    0.01) change it by a few percent. The reference skips every block up to the deepest reusable
    one; which sites share a decision is the selector's business here, each site decides alone.
    """

    def __init__(self, gamma: float = 0.5, warmup: int = 8, recalculate: int = 2) -> None:
        self.gamma = gamma
        self.warmup = warmup
        self.recalculate = recalculate

    def validate(self) -> None:
        who = type(self).__name__
        check_real(who, "gamma", self.gamma, 0.0, "use e.g. 0.5 (Foresight CogVideoX/Latte)")
        check_int(who, "warmup", self.warmup, 2, "use e.g. 8; lambda needs two warm-up outputs")
        check_int(who, "recalculate", self.recalculate, 1, "use e.g. 2; 1 always computes")

    def new_state(self) -> dict:
        return {"prev_out": None, "delta": None, "warm": [], "lam": None}

    def measure(self, state: dict, obs: Observation) -> float | None:
        return state["delta"]

    def decide(self, state: dict, obs: Observation, metric: float | None) -> bool:
        if obs.step < self.warmup or state["lam"] is None or metric is None or self.gamma <= 0:
            return True
        if obs.step % self.recalculate == 0:
            return True
        return metric > self.gamma * state["lam"]

    def observe(
        self,
        state: dict,
        obs: Observation,
        computed: bool,
        inputs: torch.Tensor | None,
        output: torch.Tensor | None,
    ) -> None:
        if not computed or output is None:
            return
        if state["prev_out"] is not None and state["prev_out"].shape == output.shape:
            state["delta"] = mse(output, state["prev_out"])
            if obs.step < self.warmup:
                state["warm"] = ([state["delta"]] + state["warm"])[: len(_LAMBDA_WEIGHTS)]
        state["prev_out"] = snapshot(output)
        if obs.step == self.warmup - 1 and state["warm"]:
            state["lam"] = sum(w * m for w, m in zip(_LAMBDA_WEIGHTS, state["warm"]))
