"""The contract between the LLaDA sampler and a feature cache (dLLM-Cache, arXiv 2506.06295, or any other).

The sampler (:func:`forecache.dllm.sampler.generate`, after LLaDA, arXiv 2502.09992) knows nothing about
caching; it only drives these two protocols:

1. ``state = policy.start(model, prompt_length, gen_length, block_length)`` once per ``generate()`` call,
   before the first model call. All per-request memory lives in ``state``; a policy holds no per-request
   globals, so one policy may serve many generations (and many models) in turn.
2. Before *every* model call: ``runner = state.runner(x, step, block)``; the sampler then calls
   ``model(x, attention_mask, runner=runner, logits_at=...)`` and the model runs each transformer layer as
   ``h = runner(i, layer, h, cos, sin, key_mask)`` instead of ``layer(h, cos, sin, key_mask)``.
3. After the last model call: ``state.stats()``, a plain ``dict`` the sampler returns under ``"cache"``
   when ``generate(..., return_stats=True)``; and, if the state has one (optional, not part of the protocol's
   required methods), ``state.trace()``, a core :class:`~forecache.core.telemetry.Trace` of its decisions, returned
   under ``"trace"``.

Layout of ``x`` (LongTensor ``(B', L)``, ``L = prompt_length + gen_length``): columns ``[0, prompt_length)``
are the left-padded prompt (pads have ``attention_mask == 0``; they never change), columns
``[prompt_length, L)`` the answer, split into ``gen_length // block_length`` blocks decoded left to right.
Masked answer positions hold the mask id; a committed token never changes again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .model import LayerRunner


@runtime_checkable
class CacheState(Protocol):
    """Per-generation cache state, made by :meth:`CachePolicy.start`; never shared between generations."""

    def runner(self, x: torch.Tensor, step: int, block: int) -> LayerRunner:
        """Return the layer runner for the model call about to run on tokens ``x``.

        Called exactly once before every model call, in order.

        Args:
            x: the tokens the model is about to see, LongTensor ``(B', L)``. Without classifier-free guidance
                ``B' = B`` (the caller's batch). Under CFG (``cfg_scale > 0``) ``B' = 2B``: rows ``[0, B)`` are
                the conditional rows, rows ``[B, 2B)`` the unconditional ones, i.e. the same rows with every
                real prompt token replaced by the mask id; both halves share the answer tokens.
            step: index of this model call within the generation, from 0, global across blocks. With the
                fixed schedule block ``b`` owns steps ``[b * steps_per_block, (b + 1) * steps_per_block)``;
                under threshold or factor decoding (Fast-dLLM) a block takes as many calls as it needs.
            block: index of the block being decoded, from 0 to ``num_blocks - 1``; only positions
                ``prompt_length + block * block_length + [0, block_length)`` can be committed at this step,
                and only their logits are read (the sampler passes them as ``logits_at``).

        Returns:
            A ``LayerRunner``: ``(layer_index, layer, hidden, cos, sin, key_mask) -> hidden`` with the shape of
            ``hidden`` (``(B', L, D)``); it may recompute the layer or reuse/forecast what it cached.
        """
        ...

    def stats(self) -> dict[str, Any]:
        """Telemetry of this generation as a plain dict (e.g. the fraction of token-layer computations done)."""
        ...


@runtime_checkable
class CachePolicy(Protocol):
    """A caching method's configuration; :meth:`start` opens the state of one generation."""

    def start(self, model: nn.Module, prompt_length: int, gen_length: int, block_length: int) -> CacheState:
        """Begin a generation on ``model`` (a ``LLaDAModel``).

        Args:
            model: the model the sampler will call.
            prompt_length: width ``P`` of the (left-padded) prompt tensor, the same for every row.
            gen_length: number of answer positions, ``L - P``.
            block_length: semi-autoregressive block size; ``gen_length`` is a multiple of it.
        """
        ...
