"""Accumulated output-change estimate from the input change and a transform rate (EasyCache)."""

from __future__ import annotations

import torch

from ..validation import check_int, check_real
from ._common import _TINY, mean_abs, mean_abs_diff, snapshot
from .accumulate import Accumulating
from .base import Observation


class TransformRate(Accumulating):
    """EasyCache (arXiv 2507.02860): the output changes about ``k`` times as much as the input, with
    ``k`` nearly constant along the trajectory, so input changes predict when a reused
    transformation ``v - x`` has gone stale. Needs no calibration.

    Signal: ``"input"``, the cached region's input ``x``. ``v`` is the region's real output.

    At every computed step i: ``k = mean|v_i - v_c| / mean|x_i - x_c|`` with c the computed step
    before i (needs two computes), then ``v_c, x_c = v_i, x_i``. At a candidate step n:
    ``eps_n = k * mean|x_n - x_{n-1}| / mean|v_c|`` with ``x_{n-1}`` the PREVIOUS STEP's input
    (computed or not) and ``v_c`` the last computed output; ``E += eps_n``; skip while
    ``E < threshold``, compute when ``E >= threshold`` (then ``E = 0``). The first ``warmup`` steps
    and, when the schedule is known, the last step compute; so does every step until ``k`` exists.
    Metric: ``E + eps_n``. ``threshold=0`` never skips (an unchanged input would otherwise give
    ``E = 0``).

    Norms are mean absolute values, as in the reference (``easycache_sample_video.py`` and
    ``easycache_generate.py`` in H-EmbodVis/EasyCache, commit 5127804: ``raw_input_change`` uses
    ``previous_raw_input`` updated every step, ``output_norm`` the last computed output, ``k`` is
    set after each full forward from ``prev_prev_raw_input``, the input at the previous compute).
    Defaults: ``threshold=0.05``, ``warmup=10``, the Wan2.1 script's ``--thresh`` and
    ``--ret_steps``; its HunyuanVideo script uses 0.025 and 5. The paper writes the threshold in
    percent (5%); here it is the fraction.

    Deviations: without a known schedule the last-step rule is skipped. The Wan2.1 script decides
    once per CFG pair and applies it to both branches; here every branch decides for itself.
    """

    signal = "input"

    def __init__(self, threshold: float = 0.05, warmup: int = 10) -> None:
        self.threshold = threshold
        self.warmup = warmup

    def validate(self) -> None:
        who = type(self).__name__
        check_real(who, "threshold", self.threshold, 0.0, "use e.g. 0.05 (EasyCache Wan2.1)")
        check_int(who, "warmup", self.warmup, 0, "use e.g. 10 (Wan2.1) or 5 (HunyuanVideo)")

    def new_state(self) -> dict:
        return {"prev_x": None, "x_c": None, "v_c": None, "k": None, "acc": 0.0}

    def measure(self, state: dict, obs: Observation) -> float | None:
        x = obs.signal
        if x is None or state["k"] is None or state["prev_x"] is None or obs.step < self.warmup:
            return None
        eps = state["k"] * mean_abs_diff(x, state["prev_x"]) / max(mean_abs(state["v_c"]), _TINY)
        return state["acc"] + eps

    def observe(
        self,
        state: dict,
        obs: Observation,
        computed: bool,
        inputs: torch.Tensor | None,
        output: torch.Tensor | None,
    ) -> None:
        x = obs.signal if obs.signal is not None else inputs
        if computed and output is not None and x is not None:
            if state["v_c"] is not None:
                dx = max(mean_abs_diff(x, state["x_c"]), _TINY)
                state["k"] = mean_abs_diff(output, state["v_c"]) / dx
            state["v_c"], state["x_c"] = snapshot(output), snapshot(x)
        if computed:
            state["acc"] = 0.0
        state["prev_x"] = snapshot(x)
