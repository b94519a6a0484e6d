"""How forecache sees LLaDA, and the one-line way to cache one.

The sampler (:func:`forecache.dllm.sampler.generate`) drives the handle's clock itself: one step per model call,
``handle.step(step, segment=block)``, where ``step`` counts the generation's calls from 0 (LLaDA's model receives
no time) and the semi-autoregressive block is the segment. So the adapter finds the batch (``input_ids``), the
layers (``blocks``) and counts a call's FLOPs from the matmul shapes (:mod:`forecache.dllm.flops`), which is exact
also when the first call of a request already reuses stored features (a shared prefix).
"""

from __future__ import annotations

from forecache.core import Adapter, CacheHandle, Policy, apply
from forecache.core.adapters.base import call_arguments
from forecache.core.adapters.diffusers import register
from torch import nn

from .flops import FlopTally, LayerShapes
from .model import LLaDAModel

__all__ = ["LLaDAAdapter", "cache_llada"]


class LLaDAAdapter(Adapter):
    """Adapter for :class:`~forecache.dllm.model.LLaDAModel` (``model(input_ids, attention_mask, logits_at=...)``)."""

    block_attrs = ("blocks",)
    hidden_arg = "input_ids"
    timestep_args = ()  # the sampler steps the clock

    def flops(self, model: nn.Module, args: tuple, kwargs: dict) -> float:
        """One row's matmul FLOPs run uncached: every layer on every token, the head where logits are read."""
        bound = call_arguments(model, args, kwargs)
        length = bound["input_ids"].shape[1]
        at = bound.get("logits_at")
        tally = FlopTally(LayerShapes.of(model))
        for _ in model.blocks:
            tally.full_layer(1, length)
        tally.head(length if at is None else at.shape[1])
        return float(tally.total)


register(LLaDAModel, LLaDAAdapter())  # so apply(model, dllm_cache()) finds it, as for a diffusers model


def cache_llada(model: nn.Module, policy: Policy, count_flops: bool = True) -> CacheHandle:
    """Cache a LLaDA ``model`` under ``policy`` (:func:`~forecache.dllm.dllm_cache.dllm_cache`,
    :func:`~forecache.dllm.combined.fast_dllm_cache`, ...) with the :class:`LLaDAAdapter` (what
    ``forecache.core.apply(model, policy)`` does too: the adapter is registered for ``LLaDAModel``); pass the handle to
    ``generate(..., cache=handle)`` for every request, or drive it from a sampler of your own
    (``handle.step(step, segment=block)`` before each call, inside ``sequence_layout(...)``)."""
    return apply(model, policy, LLaDAAdapter(), count_flops=count_flops)
