"""Fast-dLLM's dual cache with dLLM-Cache's long prompt interval (a combination of arXiv 2505.22618 and 2506.06295).

Fast-dLLM (Wu et al., arXiv 2505.22618, Sec. 3.2) recomputes *everything* at the first model call of each block
and only the current block at the block's other calls (DualCache), so the prompt is recomputed once per block.
dLLM-Cache (Liu et al., arXiv 2506.06295) observes that the prompt's features are nearly static over the
denoising steps and recomputes them only every ``K_p`` calls (50 to 100 in its scripts). Combined, per model
call ``step`` (counted from 0, globally across blocks, as both methods count):

1. the prompt ``[0, P)`` is recomputed iff ``step % K_p == 0``: not at every block start, which is the saving
   over Fast-dLLM;
2. at the first call of each block every answer token ``[P, L)`` is recomputed. Why the whole answer, and not
   only the current block and later: the dual cache computes a block *before* the sampler commits from its
   logits, so the tokens committed at a block's last call have never been encoded with their final ids; the
   finished block must be recomputed at the next block's first call, or its last commits stay invisible (their
   stored keys/values are the mask's) until the next prompt refresh. The blocks before it have final ids and
   drift only through their context, like the prompt, but dLLM-Cache finds the answer's features drift much
   faster than the prompt's and refreshes every answer token, decoded ones included (every ``K_r`` calls);
   Fast-dLLM refreshes them at every block start too. Recomputing them costs at most ``R - block_length``
   tokens once per block, and keeps the answer exactly as fresh as under Fast-dLLM;
3. at the block's other calls the *span* is recomputed: the current block (``span="block"``, DualCache, the
   default), the block and every later one (``"suffix"``, Fast-dLLM's prefix cache) or the whole answer
   (``"answer"``, dLLM-Cache's response). In full on every ``K_r``-th call of the block (``refresh_interval``,
   counted from the block's first call, so threshold decoding's variable number of calls per block is handled);
   in between, per row and layer, dLLM-Cache's V-verify recomputes the ``floor(rho * span)`` span tokens whose
   fresh value vector is least similar to the stored one (``rho = 0``: nothing).

Every other token is reused: its stored key/value serve the recomputed queries, and it leaves each layer as
``(x_in + stored attn) + stored ffn`` (:class:`~forecache.dllm.cached_layers.CachedLayers`). A call whose
recomputation covers every token is computed in full, bit-identical to the model. Exact identities, tested:
``CombinedCache(1, "answer", 1)`` is the uncached model; on the fixed schedule with ``K_p`` = steps per block (so
the prompt refresh falls on every block start) ``CombinedCache(K_p, "block")`` returns Fast-dLLM's DualCache
logits bitwise, and ``CombinedCache(K_p, "suffix")`` its prefix cache's.

Defaults of :func:`fast_dllm_cache` and why: ``span="block"`` with ``refresh_interval=1`` (and so ``rho=0``) is
Fast-dLLM's DualCache inside a block: every commit lands in the current block, and its logits are the only
ones read, so it is where staleness costs most and the paper recomputes it every call. ``prompt_interval=20``:
dLLM-Cache's 50 (its GSM8K setting) is counted in calls of a schedule that commits one token per call, so the
prompt goes stale over about 50 commits; under Fast-dLLM's confidence threshold (0.9) a call commits several
tokens, and 20 calls keep about those 50 commits between prompt refreshes at an assumed 2.5 tokens per call (an
assumption to calibrate on a trained model). Use with Fast-dLLM's sampler settings:
``generate(model, ids, mask, gen_length=256, **{**fast_dllm().generate_kwargs(), "cache": fast_dllm_cache()})``
(threshold 0.9, block length 32).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from forecache.core.presets.registry import preset
from forecache.core.storage import Storage
from forecache.core.policy import Policy
from forecache.core.triggers import Interval, Trigger
from forecache.core.validation import check_choice, check_fraction, check_int

from .cached_layers import CachedLayers, check_model, columns
from .call_trigger import CallTrigger, per_call, steps_where
from .model import LLaDABlock
from .site import LayerRunner, llada_policy
from .v_verify import valid_candidates, verify

__all__ = ["SPANS", "CombinedCache", "CombinedCacheState", "fast_dllm_cache"]

SPANS = ("block", "suffix", "answer")


@dataclass(frozen=True)
class CombinedCache:
    """Fast-dLLM's block-wise cache with dLLM-Cache's prompt interval and V-verify (see the module docstring).

    Attributes:
        prompt_interval: K_p, recompute the prompt on the calls with ``step % K_p == 0`` (20 in the preset).
        span: what the calls after a block's first recompute: ``"block"`` (DualCache, default), ``"suffix"``
            (the block and later blocks: Fast-dLLM's prefix cache) or ``"answer"`` (every answer token).
        refresh_interval: K_r, recompute the whole span on every K_r-th call of a block (1: every call, default).
        rho: between span refreshes, the fraction of the span's tokens V-verify recomputes per row and layer, in
            [0, 1] (0, default: none); needs ``refresh_interval > 1``.
    """

    prompt_interval: int = 20
    span: str = "block"
    refresh_interval: int = 1
    rho: float = 0.0

    def __post_init__(self) -> None:
        who = "CombinedCache"
        check_int(who, "prompt_interval", self.prompt_interval, 1, "1 = recompute the prompt at every call")
        check_choice(who, "span", self.span, SPANS)
        check_int(who, "refresh_interval", self.refresh_interval, 1, "1 = recompute the span at every call")
        check_fraction(who, "rho", self.rho, "0.25 in dLLM-Cache")
        if self.rho > 0 and self.refresh_interval == 1:
            raise ValueError(
                f"CombinedCache.rho={self.rho} does nothing with refresh_interval=1 (every call recomputes the whole "
                "span); set refresh_interval > 1 for V-verify between span refreshes, or rho=0"
            )

    def trigger(self) -> Trigger:
        """The core trigger of the span's refresh: an ``Interval`` of K_r over the block's calls (the prompt's is an
        ``Interval`` of K_p)."""
        return Interval(self.refresh_interval)

    def start(
        self, model: nn.Module, prompt_length: int, gen_length: int, block_length: int, *,
        storage: Storage | None = None,
    ) -> CombinedCacheState:
        """A fresh per-generation state for ``model`` (a ``LLaDAModel``); nothing is shared between states.
        ``storage``: a core ``Storage`` for the stored features (e.g. ``Storage(max_bytes=...)``: a byte budget);
        default: an unbounded one of this state's own."""
        check_model("CombinedCache", model, prompt_length, gen_length, block_length)
        return CombinedCacheState(self, model, prompt_length, gen_length, block_length, storage)


@preset(domain="dllm")
def fast_dllm_cache(
    prompt_interval: int = 20, span: str = "block", refresh_interval: int = 1, rho: float = 0.0
) -> Policy:
    """Fast-dLLM + dLLM-Cache: Fast-dLLM's dual cache (Wu et al., arXiv 2505.22618) that recomputes the prompt
    only every ``prompt_interval`` calls, as dLLM-Cache (Liu et al., arXiv 2506.06295) does, instead of at every
    block start.

    Defaults: K_p = 20, the current block recomputed at every call (DualCache), no V-verify; the reasons are in
    :mod:`forecache.dllm.combined`. ``fast_dllm_cache(1, "answer")`` is bit-identical to no cache. Meant for
    Fast-dLLM's threshold decoding (``generate(..., threshold=0.9, block_length=32, cache=fast_dllm_cache())``);
    works on any schedule. Returns the core policy; its method is ``policy.where.method``.
    """
    method = CombinedCache(prompt_interval=prompt_interval, span=span, refresh_interval=refresh_interval, rho=rho)
    return llada_policy(method, "fast_dllm_cache", "arXiv 2505.22618 + arXiv 2506.06295")


class _Plan(NamedTuple):
    """What one model call recomputes (the same tokens in every layer, V-verify's picks aside)."""

    prompt: bool  # the prompt [0, P)
    part: tuple[int, int] | None  # columns recomputed in full: the answer at a block start, the span on a refresh
    verify: int  # V-verify's picks per row among the span's tokens (0: none)
    span: tuple[int, int]  # the span's columns
    full: bool  # every token: the layer as the model computes it


class CombinedCacheState(CachedLayers):
    """The stored features and counters of one generation (one ``generate()`` call).

    Rows (2B under CFG) are independent: each has its own features and its own V-verify picks. The first call of a
    block is recognised by a change of ``block`` (or of the batch size), so blocks may take any number of calls.

    Decisions through core triggers (:mod:`forecache.dllm.call_trigger`), recorded in :meth:`~CachedLayers.trace`:
    the prompt is an :class:`~forecache.core.triggers.Interval` of K_p over the generation's calls; the span an
    ``Interval`` of K_r over the block's calls, the block's first call a forced compute (traced as ``"warmup"``:
    the whole answer is computed there) from which the period counts.
    """

    def __init__(
        self, policy: CombinedCache, model: nn.Module, prompt_length: int, gen_length: int, block_length: int,
        storage: Storage | None = None,
    ) -> None:
        super().__init__(model, prompt_length, gen_length, block_length, storage=storage)
        self.policy = policy
        self._block: int | None = None
        self._prompt = CallTrigger("prompt", Interval(policy.prompt_interval), self.decisions)
        self._span = CallTrigger("span", policy.trigger(), self.decisions)

    SITES = ("prompt", "span")  # the parts decided at every model call, in the order they are traced

    @property
    def steps(self) -> int:
        """The model calls made so far (one decision per part each, in :meth:`~CachedLayers.trace`)."""
        return len(self.decisions) // len(self.SITES)

    def runner(self, x: Tensor, step: int, block: int) -> LayerRunner:
        """The layer runner for model call ``step`` (0-based, global across blocks) on block ``block``."""
        P, R, bl = self.prompt_length, self.gen_length, self.block_length
        length = x.shape[1]
        if length != P + R:
            raise ValueError(
                f"CombinedCache: x has {length} columns, expected prompt_length + gen_length = {P + R}; start a new "
                "state for a new request"
            )
        if not 0 <= block < R // bl:
            raise ValueError(f"CombinedCache: block={block} is outside [0, {R // bl})")
        dropped = self.begin_call(x)
        empty = self.store[-1] is None
        first = dropped or block != self._block or empty
        if first:
            self._block = block
        policy = self.policy
        lo, hi = self._span_columns(block)
        k = math.floor(policy.rho * (hi - lo) + 1e-9)
        # the span's period counts from the block's first call, which recomputes the whole answer
        due, span_metric = self._span.decide(step, must=first)
        every = k >= hi - lo  # rho = 1 picks every span token: a span refresh (outside the period's count)
        refresh = not first and (due or every)
        part = (P, length) if first else (lo, hi) if refresh else None
        prompt, prompt_metric = self._prompt.decide(step)
        plan = _Plan(prompt, part, 0 if part else k, (lo, hi), prompt and part == (P, length))
        self._prompt.record(step, "compute" if prompt else "warmup" if empty else "cached", prompt_metric, block,
                            "no stored features (first call or new batch size)" if empty else None)
        if first:
            self._span.record(step, "warmup", span_metric, block, "block start: the whole answer computed")
        else:
            forced = "rho = 1: V-verify would pick every span token" if every and not due else None
            self._span.record(step, "compute" if refresh else "cached", span_metric, block, forced)

        def run(i: int, layer: LLaDABlock, h: Tensor, cos: Tensor, sin: Tensor, key_mask: Tensor) -> Tensor:
            return self._layer(plan, i, layer, h, cos, sin, key_mask)

        return run

    def _span_columns(self, block: int) -> tuple[int, int]:
        """The columns ``[lo, hi)`` of the span recomputed on a refresh while block ``block`` is decoded."""
        P, length = self.prompt_length, self.prompt_length + self.gen_length
        start = P + block * self.block_length
        return {"block": (start, start + self.block_length), "suffix": (start, length), "answer": (P, length)}[
            self.policy.span]

    def _layer(
        self, plan: _Plan, i: int, layer: LLaDABlock, x: Tensor, cos: Tensor, sin: Tensor, key_mask: Tensor
    ) -> Tensor:
        b, length, _ = x.shape
        self.note_layer(b, length)
        if self.store[i] is None or plan.full:
            return self.full_layer(i, layer, x, cos, sin, key_mask)
        hs, vs, pos = [], [], []
        for lo, hi in ([(0, self.prompt_length)] if plan.prompt else []) + ([plan.part] if plan.part else []):
            pos.append(columns(lo, hi, b, x.device))
            h, v = self.values(i, layer, x, pos[-1])
            hs.append(h)
            vs.append(v)
        fresh = None  # V-verify's fresh values of every candidate: attention reads them all, as in dLLM-Cache
        if plan.verify > 0:
            lo, hi = plan.span
            valid, k = valid_candidates(key_mask, lo, hi, plan.verify)  # pads are never picked
            verified = verify(self, i, layer, x, lo, hi, k, valid)
            if verified.pick is not None:
                h, v, picked = verified.picked()
                hs.append(h)
                vs.append(v)
                pos.append(picked)
                fresh = verified.fresh
        if not pos:  # nothing to recompute in this layer
            return self.reuse(i, x)
        return self.recompute(i, layer, x, cos, sin, key_mask, torch.cat(pos, dim=1), h=torch.cat(hs, dim=1),
                              v=torch.cat(vs, dim=2), fresh=fresh)

    def _stats(self) -> dict[str, Any]:
        """Telemetry: ``compute_fraction`` = token-layers computed (query, key/value, attention, FFN) / what the
        uncached model computes; ``flops``/``flops_full`` and their ratio ``compute_ratio`` (matmul FLOPs as
        computed, V-verify's values included, :mod:`forecache.dllm.flops`); the calls that started a block,
        refreshed the prompt, refreshed the span, or computed everything; V-verify's work; ``peak_cache_bytes``.
        ``steps`` and the steps lists are read from the decisions in :meth:`~CachedLayers.trace`."""
        layers = self.layer_stats()
        calls = per_call(self.decisions, self.SITES)
        answer = (self.prompt_length, self.prompt_length + self.gen_length)
        return {
            "method": "fast_dllm_cache",
            "params": asdict(self.policy),
            "steps": len(calls),
            **layers,
            "v_verify_fraction": self.verified / max(self.token_layers, 1),
            "avg_selected_per_row": self.selected / max(self.adaptive_row_layers, 1),
            "block_start_steps": steps_where(calls, 1, "warmup"),
            "prompt_refresh_steps": steps_where(calls, 0, "compute"),
            "span_refresh_steps": steps_where(calls, 1, "compute"),
            # every layer ran in full when the prompt was not reused and the whole answer was recomputed: at a
            # block's start ("warmup", also every call with nothing stored) or on a refresh of a span that is
            # the whole answer
            "full_steps": [p.step for p, s in calls if p.action != "cached" and (
                s.action == "warmup" or s.action == "compute" and self._span_columns(s.segment) == answer)],
        }
