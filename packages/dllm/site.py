"""A dLLM cache method on core's runtime: one site over every layer of a LLaDA model.

A *method* (:class:`~forecache.dllm.dllm_cache.DllmCache`, :class:`~forecache.dllm.combined.CombinedCache`,
:class:`~forecache.dllm.fast_dllm.FastDllmCache`, :class:`~forecache.dllm.prefix_store.PrefixPolicy`) is a frozen
configuration whose ``start(model, prompt_length, gen_length, block_length, storage=)`` opens the state of one
generation; the state's ``runner(x, step, block)`` returns, for one model call on tokens ``x``, the function that
runs each layer in place of ``LLaDABlock.forward`` (recomputing some tokens, reusing the others), its ``trace()``
holds its refresh decisions (:mod:`forecache.dllm.call_trigger`) and ``stats()`` its telemetry.

:class:`LLaDASite` runs a method under a core handle. At a new generation (the clock's) it starts the method's
state on the layout the sampler announced (:mod:`forecache.dllm.layout`), with the handle's storage (its byte
budget, its peak); at every model call it asks the state for the runner at the generation's step and block (the
clock's ``index`` and ``segment``) and routes every layer through it, then hands the runtime what the call did:

- the decisions, into the handle's trace (one per part and call, ``row = -1``: the whole call; ``step`` the
  call's index in its block, ``t`` its index in the generation, ``segment`` the block);
- the FLOPs, counted from the shapes (:mod:`forecache.dllm.flops`): what the call did not compute is skipped;
- the logits, to the NaN guard, when the call reused anything: a row with non-finite logits runs again
  uncached, on its own (rows keep features of their own, so the others keep their cached result);
- the drift a dLLM-Cache measures, averaged across ranks under torch.distributed before it decides.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

from torch import Tensor

from forecache.core.adapters.base import call_arguments
from forecache.core.forecasters.reuse import Reuse
from forecache.core.policy import Policy
from forecache.core.selectors.base import Selector
from forecache.core.sites.base import Site

from .layout import current_layout
from .model import LLaDABlock

__all__ = ["LLaDALayers", "LLaDASite", "LayerRunner", "llada_policy"]

LayerRunner = Callable[[int, LLaDABlock, Tensor, Tensor, Tensor, Tensor], Tensor]
"""``runner(layer_index, block, x, cos, sin, key_mask) -> x``: runs one layer in place of ``block(...)``."""

_KEY = ("llada", "layers")  # FLOPs are given analytically per call: the key only names them in logs


class LLaDASite(Site):
    """A dLLM cache method over every layer of one LLaDA model (see the module docstring)."""

    root = True
    pairs_rows = False  # a recomputed row runs uncached on its own (its stored features are untouched)
    NAME = "llada"

    def __init__(self, runtime, method: Any, blocks: list[LLaDABlock], trigger) -> None:
        super().__init__(self.NAME, runtime, trigger, Reuse())
        self.method = method
        self.blocks = blocks
        self.state: Any = None  # the running generation's, started at its first call
        self._runner: Callable | None = None

    def install(self) -> None:
        for i, block in enumerate(self.blocks):
            self.runtime.wrap(block, functools.partial(self._layer, i), self)

    def reset(self) -> None:
        super().reset()
        if self.state is not None:
            self.state.close()  # its tensors leave the handle's storage
        self.state = None

    def telemetry(self) -> dict | None:
        """The running (or last) generation's telemetry, ``state.stats()``."""
        return None if self.state is None else self.state.stats()

    def _layer(self, i: int, original: Callable, x, cos, sin, key_mask):
        runner = self._runner
        if runner is None:  # a call the runtime passes through (must-compute, or a non-finite row recomputed)
            return original(x, cos, sin, key_mask)
        self._runner = None  # a runner may call the layer itself: that call runs the layer as written
        try:
            return runner(i, self.blocks[i], x, cos, sin, key_mask)
        finally:
            self._runner = runner

    def intercept(self, call: Callable, *args, **kwargs):
        runtime = self.runtime
        ctx = runtime.context(self)
        if ctx is None or ctx.recompute:
            return call(*args, **kwargs)
        if self.state is None:
            layout = current_layout(f"{type(self.method).__name__} (a forecache dLLM cache)")
            self.state = self.method.start(runtime.model, layout.prompt_length, layout.gen_length,
                                           layout.block_length, storage=runtime.storage)
        state = self.state
        decisions = state.trace()
        mark, done, full = len(decisions), state.flops.total, state.flops_full.total
        state.reduce = runtime.reducer
        ids = call_arguments(runtime.model, args, kwargs)["input_ids"]
        self._runner = state.runner(ids, ctx.index, ctx.segment)
        try:
            out = call(*args, **kwargs)
        finally:
            self._runner = None
        reused = None
        for d in decisions[mark:]:
            runtime.record(d.site, ctx, -1, d.action, d.metric, d.note)
            if d.action == "cached":
                reused = d.site
        saved = (state.flops_full.total - full) - (state.flops.total - done)
        if saved >= 0:
            runtime.skipped(_KEY, 1, flops=saved)
        else:  # V-verify's values can cost more than a reuse saves
            runtime.extra(_KEY, 1, flops=-saved)
        if reused is not None:
            runtime.check_finite(reused, ctx, list(range(ctx.batch)), (out,))
        return out


class LLaDALayers(Selector):
    """``where`` for a dLLM cache method: every layer of a LLaDA model, run by ``method`` (one :class:`LLaDASite`)."""

    def __init__(self, method: Any) -> None:
        self.method = method

    def validate(self) -> None:
        super().validate()
        if not callable(getattr(self.method, "start", None)):
            raise ValueError(
                f"LLaDALayers.method={self.method!r} is not a dLLM cache method; pass DllmCache(), "
                "CombinedCache(), FastDllmCache() or with_prefix(...)"
            )

    def describe(self) -> dict:
        method = self.method
        knobs = dataclasses.asdict(method) if dataclasses.is_dataclass(method) else {"repr": repr(method)}
        return {"type": type(self).__name__, "method": type(method).__name__, **knobs}

    def build(self, runtime, model, adapter, policy) -> list[Site]:
        blocks = [b.module for b in adapter.blocks(model)]
        if not all(isinstance(b, LLaDABlock) for b in blocks):
            raise ValueError(
                f"{type(self.method).__name__} caches LLaDA layers, but {type(model).__name__}'s blocks are "
                f"{sorted({type(b).__name__ for b in blocks})}; apply it to a forecache.dllm LLaDAModel"
            )
        return [LLaDASite(runtime, self.method, blocks, self.trigger_for(policy, adapter))]


def llada_policy(method: Any, name: str, paper: str, max_cache_bytes: int | None = None) -> Policy:
    """The core :class:`~forecache.core.policy.Policy` that runs ``method`` on a LLaDA model: ``where`` its layers,
    ``when`` the trigger of the method's main refresh (``method.trigger()``), ``what`` reuse. ``max_cache_bytes``
    bounds the stored features (``CacheBudgetError`` past it)."""
    return Policy(where=LLaDALayers(method), when=method.trigger(), what=Reuse(), name=name, paper=paper,
                  max_cache_bytes=max_cache_bytes)
