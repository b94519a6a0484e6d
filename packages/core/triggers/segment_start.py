"""Compute at the first step of every segment, reuse for the rest of it (Fast-dLLM's block-wise KV cache)."""

from __future__ import annotations

from .base import Observation, Trigger


class SegmentStart(Trigger):
    """Compute at step 0 of each segment (``obs.step`` counts the steps of the running segment) and
    reuse for the segment's other steps.

    Fast-dLLM (Wu et al., arXiv 2505.22618) refreshes its KV cache at the first model call of every
    semi-autoregressive block and reuses it for the block's other calls; a world model that encodes a
    chunk's context once per chunk follows the same rule. Metric: ``None`` (the rule reads no signal).
    A row with no computation yet always computes.
    """

    def decide(self, state: dict, obs: Observation, metric: float | None) -> bool:
        return obs.since_compute is None or obs.step == 0
