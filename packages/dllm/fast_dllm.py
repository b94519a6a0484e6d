"""Fast-dLLM's block-wise approximate KV cache (Wu et al., arXiv 2505.22618, Sec. 3.2) and its presets.

Under semi-autoregressive decoding only the current block changes within a block, and the keys/values of the
other tokens barely move from one step to the next. So at the first model call of each block every token is
computed and every layer's K/V are stored; at the block's other calls

- the prefix cache (``FastDllmCache(dual=False)``) reuses the K/V of the prefix (prompt and earlier blocks) and
  recomputes the current block *and the whole still-masked suffix*, as the reference's prefix cache does (it
  runs the model on ``x[:, block_start:]``);
- DualCache (``FastDllmCache(dual=True)``, the default) also reuses the suffix's K/V and computes the current block's
  tokens only (queries, K/V, attention, FFN), attending over cached prefix, fresh block and cached suffix.

The first call of a block is bit-identical to the uncached model; it refreshes the whole cache, which is the
method's only cache update. The runner returns the full ``(B', L, D)`` hidden states, but on the other calls
only the computed span holds real outputs: every other position passes its layer *input* on unchanged (stale).
That is enough because the sampler reads logits at the current block only (``logits_at``); do not use this
cache with a caller that reads logits elsewhere.

Its ``compute_ratio`` (core's name) is the matmul FLOPs this cache executed over those of the uncached model on the
same model calls, tallied from the layer shapes as dLLM-Cache's are (:mod:`forecache.dllm.flops`): the head at the
current block (the sampler's ``logits_at``), every layer in full at a block's start, and on the other calls the
span's projections, its queries' attention over every key, and its FFN.

The stored keys/values are kept through a core :class:`~forecache.core.storage.Storage` (``start(..., storage=...)``):
it counts their bytes (``peak_cache_bytes``) and its byte budget raises core's
:class:`~forecache.core.storage.CacheBudgetError`. The cached calls' fresh queries attend over them with core's
:func:`~forecache.core.tokens.attend_stored`.

Confidence-aware parallel decoding, the paper's other half, is a sampler option
(``generate(..., threshold=0.9)``); :func:`fast_dllm` bundles both with the paper's settings.

Deviations from the reference code (NVlabs/Fast-dLLM ``llada/generate.py``), on purpose:
- left-padded batches: padded keys stay masked on every call, and positions are per row (the reference's
  cached path takes one unpadded prompt);
- CFG: the 2B-row guided batch is cached row by row like any other batch (the reference has no CFG);
- one state per ``generate()`` call; a change of batch size refreshes the cache.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from forecache.core.presets.registry import preset
from forecache.core.storage import Storage, nbytes
from forecache.core.policy import Policy
from forecache.core.telemetry import Trace
from forecache.core.triggers import SegmentStart, Trigger
from forecache.core.tokens import attend_stored
from forecache.core.validation import check, check_bool, check_choice, check_int

from .cached_layers import cache_storage
from .call_trigger import CallTrigger
from .flops import FlopTally, LayerShapes
from .model import LLaDABlock
from .site import LayerRunner, llada_policy

CacheKind = Literal["dual", "prefix"]


@dataclass(frozen=True)
class FastDllmCache:
    """Fast-dLLM's block-wise KV cache (arXiv 2505.22618) as a dLLM cache method; ``start()`` opens one generation.

    Attributes:
        dual: True (default, the paper's fastest setting) = DualCache, reuse prefix and suffix K/V and compute
            the current block only; False = prefix cache, reuse the prefix and recompute block and suffix.
    """

    dual: bool = True

    def __post_init__(self) -> None:
        check_bool("FastDllmCache", "dual", self.dual, "True = DualCache, False = prefix cache")

    def trigger(self) -> Trigger:
        """The core trigger of the K/V refresh: at the first call of every block (:class:`SegmentStart`)."""
        return SegmentStart()

    def start(
        self, model: nn.Module, prompt_length: int, gen_length: int, block_length: int, *,
        storage: Storage | None = None,
    ) -> FastDllmCacheState:
        """A fresh per-generation state for ``model`` (a ``LLaDAModel``); nothing is shared between states.
        ``storage``: a core ``Storage`` for the stored keys/values (e.g. ``Storage(max_bytes=...)``: a byte
        budget; its ``dtype`` must be None); default: an unbounded one of this state's own."""
        blocks = getattr(model, "blocks", None)
        if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
            raise ValueError("FastDllmCache.start: model has no `blocks` ModuleList; pass a LLaDAModel")
        if prompt_length < 0 or gen_length < 1 or block_length < 1 or gen_length % block_length:
            raise ValueError(
                f"FastDllmCache.start: prompt_length={prompt_length}, gen_length={gen_length}, "
                f"block_length={block_length}; need prompt_length >= 0 and block_length dividing gen_length"
            )
        return FastDllmCacheState(self, len(blocks), prompt_length, gen_length, block_length, storage,
                                  shapes=LayerShapes.of(model))


class FastDllmCacheState:
    """The per-layer K/V of one generation (one ``generate()`` call), refreshed at the first call of each block.

    Rows (2B under CFG) are independent: each keeps its own K/V and only its own keys are ever attended to.

    Attributes:
        k, v: per layer, the stored keys/values (B', Hkv, L or the prefix's length, hd), or None.
        storage: the core :class:`~forecache.core.storage.Storage` that owns their bytes: its ``max_bytes`` budget
            raises :class:`~forecache.core.storage.CacheBudgetError` when a layer's K/V do not fit (the layer
            then holds nothing, and the next call refreshes); its ``peak_bytes`` is ``peak_cache_bytes``.
        flops, flops_full: :class:`~forecache.dllm.flops.FlopTally` of the matmul FLOPs this cache executed and
            of those the uncached model executes on the same calls.
    """

    def __init__(
        self, policy: FastDllmCache, n_layers: int, prompt_length: int, gen_length: int, block_length: int,
        storage: Storage | None = None, *, shapes: LayerShapes,
    ) -> None:
        """``shapes``: the model's matmul shapes, for the FLOP tally (``start`` reads them off the model)."""
        self.policy, self.prompt_length = policy, prompt_length
        self.gen_length, self.block_length = gen_length, block_length
        self.k: list[Tensor | None] = [None] * n_layers
        self.v: list[Tensor | None] = [None] * n_layers
        self._block: int | None = None
        self._rows: int | None = None
        self.token_layers = self.computed = 0  # token-layer computations a full model does / this cache did
        self.storage = cache_storage("FastDllmCacheState", storage)
        self.decisions = Trace()
        self._kv = CallTrigger("kv", policy.trigger(), self.decisions)
        self._in_block = 0  # calls of the current block before this one (the trigger's step)
        self.reduce: Callable[[float], float] | None = None  # measures nothing to average across ranks
        self.flops, self.flops_full = FlopTally(shapes), FlopTally(shapes)

    @property
    def steps(self) -> int:
        """The model calls made so far (one ``"kv"`` decision each, in :meth:`trace`)."""
        return len(self.decisions)

    def runner(self, x: Tensor, step: int, block: int) -> LayerRunner:
        """The layer runner for model call ``step`` on block ``block``: a full, cache-refreshing call when the
        block (or the batch size) is new, else the cached call. Assumes, as the sampler guarantees, that only
        the current block's tokens change between two calls of one block."""
        rows, length = x.shape
        if length != self.prompt_length + self.gen_length:
            raise ValueError(
                f"FastDllmCache: x has {length} columns, expected prompt_length + gen_length = "
                f"{self.prompt_length + self.gen_length}; start a new state for a new request"
            )
        if not 0 <= block < self.gen_length // self.block_length:
            raise ValueError(f"FastDllmCache: block={block} is outside [0, {self.gen_length // self.block_length})")
        self._in_block = 0 if block != self._block else self._in_block + 1
        empty = rows != self._rows or self.k[-1] is None  # nothing stored for these rows: compute whatever
        refresh, metric = self._kv.decide(self._in_block, must=empty)  # SegmentStart: a block's first call
        if refresh:
            self._block, self._rows = block, rows
            self._release()  # drop the old block's K/V first
        self._kv.record(step, "warmup" if empty else "compute" if refresh else "cached", metric, block,
                        "no stored K/V (first call or new batch size)" if empty else None)
        # the head runs on the current block only (the sampler's logits_at), with or without a cache
        self.flops.head(rows * self.block_length)
        self.flops_full.head(rows * self.block_length)
        start = self.prompt_length + block * self.block_length
        span = slice(start, start + self.block_length if self.policy.dual else length)

        def run(i: int, layer: LLaDABlock, h: Tensor, cos: Tensor, sin: Tensor, key_mask: Tensor) -> Tensor:
            self.token_layers += h.shape[0] * h.shape[1]
            self.flops_full.full_layer(h.shape[0], h.shape[1])
            if refresh:
                return self._full(i, layer, h, cos, sin, key_mask, span.start)
            return self._cached(i, layer, h, cos, sin, key_mask, span)

        return run

    def _full(
        self, i: int, layer: LLaDABlock, x: Tensor, cos: Tensor, sin: Tensor, key_mask: Tensor, start: int
    ) -> Tensor:
        """The layer exactly as ``LLaDABlock.forward`` computes it, storing the K/V later calls reuse: all of
        them (DualCache) or the prefix's ``[0, start)`` only (prefix cache)."""
        h = layer.attn_norm(x)
        q, k = layer.project_qk(h, cos, sin)
        v = layer.project_v(h)
        x = x + layer.attend(q, k, v, key_mask)
        keep = slice(None) if self.policy.dual else slice(0, start)
        # handed over to the storage as they are (contiguous, nothing else writes them), their bytes counted
        self.k[i], self.v[i] = self.storage.adopt([k[:, :, keep].contiguous(), v[:, :, keep].contiguous()])
        self.computed += x.shape[0] * x.shape[1]
        self.flops.full_layer(x.shape[0], x.shape[1])
        return x + layer.ffn(x)

    def _cached(
        self, i: int, layer: LLaDABlock, x: Tensor, cos: Tensor, sin: Tensor, key_mask: Tensor, span: slice
    ) -> Tensor:
        """Compute the tokens of ``span`` only; their queries attend over every key: stored ones outside the
        span, fresh ones inside. Positions outside the span leave with their input (stale, never read)."""
        xs = x[:, span]
        h = layer.attn_norm(xs)
        q, k = layer.project_qk(h, cos[:, span], sin[:, span])
        v = layer.project_v(h)
        k_all, v_all = self.k[i], self.v[i]
        if self.policy.dual:  # overwrite the block's slot in place (the reference's replace_position)
            k_all[:, :, span], v_all[:, :, span] = k, v
        else:  # the prefix, then the fresh block and suffix
            k_all, v_all = torch.cat([k_all, k.to(k_all.dtype)], dim=2), torch.cat([v_all, v.to(v_all.dtype)], dim=2)
        xs = xs + layer.project_out(attend_stored(q, k_all, v_all, key_mask=key_mask))  # = layer.attend, bitwise
        xs = xs + layer.ffn(xs)
        n = xs.shape[0] * xs.shape[1]
        self.computed += n
        # the span's projections and FFN; its queries attend over every key (stored and fresh: the row's length)
        self.flops.span(n, k_all.shape[2])
        out = x.clone()  # the model's buffer is not ours to overwrite
        out[:, span] = xs
        return out

    def close(self) -> None:
        """Drop the stored K/V (the generation is over): their bytes go back to the storage."""
        self._release()

    def _release(self) -> None:
        """Drop every layer's stored K/V and give their bytes back to the storage."""
        for t in (*self.k, *self.v):
            if t is not None:
                self.storage.drop(t)
        self.k, self.v = [None] * len(self.k), [None] * len(self.v)

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored keys and values now."""
        return nbytes((*self.k, *self.v))

    @property
    def peak_cache_bytes(self) -> int:
        """The most bytes the stored keys/values held at once (the storage's peak)."""
        return self.storage.peak_bytes

    def trace(self) -> Trace:
        """The K/V decision of every model call (site ``"kv"``, ``row=-1``): ``"warmup"`` at a block's first call
        (everything computed and stored), ``"cached"`` at the others; a core ``Trace`` (``.to_json()``)."""
        return self.decisions

    def stats(self) -> dict[str, Any]:
        """Telemetry: ``compute_fraction`` = token-layers computed (queries, K/V, FFN) / what the uncached model
        computes; ``flops`` / ``flops_full`` = matmul FLOPs executed / the uncached model's on the calls made, and
        ``compute_ratio`` (core's name) their ratio, defined as dLLM-Cache's (``CachedLayers.layer_stats``: under
        threshold decoding it is the saving per call, not the ratio to the uncached run); ``steps`` (model
        calls) and ``refresh_steps`` (the full calls, the first of each block), read from :meth:`trace`;
        ``peak_cache_bytes`` (the storage's peak)."""
        return {
            "method": "fast_dllm_dual_cache" if self.policy.dual else "fast_dllm_prefix_cache",
            "params": asdict(self.policy),
            "steps": self.steps,
            "compute_fraction": self.computed / max(self.token_layers, 1),
            "flops": self.flops.total,
            "flops_full": self.flops_full.total,
            "compute_ratio": self.flops.total / max(self.flops_full.total, 1),
            "refresh_steps": [d.step for d in self.decisions if d.action != "cached"],
            "peak_cache_bytes": self.peak_cache_bytes,
        }


@dataclass(frozen=True)
class FastDllm:
    """Fast-dLLM's settings for :func:`~forecache.dllm.sampler.generate`: a commit rule plus a KV cache.

    ``generate(model, ids, mask, gen_length=256, **FastDllm().generate_kwargs())``. Only one of ``threshold``
    and ``factor`` may be set; with neither the fixed schedule runs (then pass ``steps``).

    Attributes:
        threshold: confidence threshold of parallel decoding (0.9), or None.
        factor: the factor-based rule's f (None; 1.0 in the reference's factor runs).
        cache: ``"dual"`` (default), ``"prefix"`` or None (no KV cache).
        block_length: semi-autoregressive block size (32); ``gen_length`` must be a multiple of it.
    """

    threshold: float | None = 0.9
    factor: float | None = None
    cache: CacheKind | None = "dual"
    block_length: int = 32

    def __post_init__(self) -> None:
        who = "FastDllm"
        check(self.threshold is None or self.factor is None, who, "factor", self.factor,
              "set threshold or factor, not both (they are alternative commit rules)", "pass threshold=None")
        check(self.threshold is None or _real(self.threshold) and 0.0 < self.threshold <= 1.0, who, "threshold",
              self.threshold, "must be in (0, 1] or None", "0.9 in the paper")
        check(self.factor is None or _real(self.factor) and self.factor > 0.0, who, "factor", self.factor,
              "must be > 0 or None", "1.0 in the reference code")
        check_choice(who, "cache", self.cache, ("dual", "prefix", None), "use 'dual', 'prefix' or None")
        check_int(who, "block_length", self.block_length, 1, "32 in the paper")

    def policy(self) -> Policy | None:
        """The core policy of the KV cache for ``generate(cache=...)``, or None without one."""
        if self.cache is None:
            return None
        return llada_policy(FastDllmCache(dual=self.cache == "dual"), f"fast_dllm_{self.cache}_cache",
                            "arXiv 2505.22618")

    def generate_kwargs(self) -> dict[str, Any]:
        """``threshold``, ``factor``, ``cache`` and ``block_length`` for :func:`~forecache.dllm.sampler.generate`."""
        return {"threshold": self.threshold, "factor": self.factor, "cache": self.policy(),
                "block_length": self.block_length}


def _real(value: object) -> bool:
    """A number (not a bool), so that comparing it is meaningful."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@preset(domain="dllm")
def fast_dllm(
    threshold: float | None = 0.9, cache: CacheKind | None = "dual", factor: float | None = None,
    block_length: int = 32,
) -> FastDllm:
    """Fast-dLLM (Wu et al., "Fast-dLLM: Training-free Acceleration of Diffusion LLM by Enabling KV Cache and
    Parallel Decoding", arXiv 2505.22618): block-wise KV cache plus confidence-aware parallel decoding.

    Defaults are the reference evaluation's fastest LLaDA setting (``llada/eval_gsm8k.sh``: DualCache,
    threshold 0.9, block length 32, gen length 256): ``fast_dllm()``. ``fast_dllm(None, factor=1.0)`` is the
    factor rule of the reference's later scripts; ``fast_dllm(cache="prefix")`` the prefix cache;
    ``fast_dllm(threshold=None)`` the cache alone on LLaDA's fixed schedule. Use as
    ``generate(model, ids, mask, gen_length=256, **fast_dllm().generate_kwargs())``.
    """
    return FastDllm(threshold=threshold, factor=factor, cache=cache, block_length=block_length)
