"""The per-layer features of one generation, and the two ways a feature cache runs a layer on them.

dLLM-Cache (Liu et al., arXiv 2506.06295) and the policies built on its features (the Fast-dLLM + dLLM-Cache
combination, :mod:`forecache.dllm.combined`; prefix reuse across requests, :mod:`forecache.dllm.prefix_store`)
differ only in *which* tokens they recompute at a model call. How a layer is then computed is the same for all of
them, and lives here, in :class:`CachedLayers`, the base of their per-generation states:

- :meth:`CachedLayers.full_layer`: the layer exactly as ``LLaDABlock.forward`` computes it (bit-identical),
  keeping every token's key, value, attention output and FFN output
  (:class:`~forecache.dllm.feature_store.LayerFeatures`);
- :meth:`CachedLayers.recompute`: the layer for the tokens ``pos`` (B, n) only: their query, key and value, their
  attention over *every* key (fresh for ``pos``, stored for the others; core's
  :func:`~forecache.core.tokens.attend_stored`), their FFN. Every other token leaves the
  layer as ``(x_in + stored attn) + stored ffn`` with its current input ``x_in`` (:meth:`CachedLayers.reuse`), so
  what changed in lower layers flows on;
- :meth:`CachedLayers.values`: fresh value vectors of some tokens, which V-verify compares with the stored ones.

The class also keeps what every such policy reports: token-layers seen and computed, matmul FLOPs done and those
of the uncached model (:mod:`forecache.dllm.flops`), the bytes of the stored features (through a core
:class:`~forecache.core.storage.Storage`: its byte budget raises core's ``CacheBudgetError``), the projections
reused by ``reuse_unchanged_qkv`` (in the first that many layers, a token whose layer input is bitwise the one its
stored query/key/value came from keeps them; see :mod:`forecache.dllm.dllm_cache`), and the trace of the refresh
decisions its subclass records (a core ``Trace``, see :mod:`forecache.dllm.call_trigger`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from forecache.core.storage import Storage
from forecache.core.telemetry import Trace
from forecache.core.tokens import attend_stored
from forecache.core.validation import check

from .feature_store import LayerFeatures, changed_first, put_tokens, take_tokens
from .flops import FlopTally, LayerShapes
from .model import LLaDABlock

if TYPE_CHECKING:
    from .prefix_store import PrefixReuse


def columns(lo: int, hi: int, rows: int, device: torch.device) -> Tensor:
    """The positions ``[lo, hi)`` of every row, LongTensor ``(rows, hi - lo)``: a contiguous span as ``pos``."""
    return torch.arange(lo, hi, device=device).expand(rows, hi - lo)


def check_model(name: str, model: nn.Module, prompt_length: int, gen_length: int, block_length: int) -> None:
    """The ``start()`` checks every feature-cache policy shares; ``name`` prefixes the error."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise ValueError(f"{name}.start: model has no `blocks` ModuleList; pass a LLaDAModel")
    if prompt_length < 0 or gen_length < 1:
        raise ValueError(f"{name}.start: prompt_length={prompt_length}, gen_length={gen_length}; need >= 0 and >= 1")
    if block_length < 1 or gen_length % block_length:
        raise ValueError(
            f"{name}.start: block_length={block_length} does not divide gen_length={gen_length}; choose "
            "a block_length that divides it"
        )


def cache_storage(who: str, storage: Storage | None) -> Storage:
    """The core :class:`~forecache.core.storage.Storage` a dLLM cache state keeps its tensors through: ``storage``
    itself, or a fresh unbounded one for None. Its ``dtype`` must be None: the caches keep keys/values in the
    model's dtype, because partial recomputes write fresh ones into the stored tensors in place and attention
    reads them with fresh queries. ``who`` names the state in the ValueError."""
    check(storage is None or isinstance(storage, Storage), who, "storage", storage,
          "must be a forecache.core.storage.Storage or None", "pass Storage(max_bytes=...) for a byte budget, or None")
    if storage is None:
        return Storage()
    check(storage.dtype is None, who, "storage.dtype", storage.dtype,
          "dLLM caches store keys/values in the model's dtype (partial recomputes write into them in place)",
          "pass Storage(dtype=None, max_bytes=...)")
    return storage


class CachedLayers:
    """Stored features of every layer for one generation, the primitives that compute a layer from them, and the
    counters. Subclasses decide, per call and layer, which tokens to recompute.

    Attributes:
        store: per layer, the :class:`LayerFeatures` of every row and token, or None before the first computation
            (and after a change of batch size).
        ids: the token ids ``(B', L)`` of the current call (set by :meth:`begin_call`).
        prefix: an optional hook that fills a layer's first computation from features stored by earlier requests
            (:mod:`forecache.dllm.prefix_store`); None = compute it in full.
        storage: the core :class:`~forecache.core.storage.Storage` that owns the stored features' bytes: its
            ``max_bytes`` budget raises :class:`~forecache.core.storage.CacheBudgetError` when a layer's features
            do not fit, its ``peak_bytes`` is the ``peak_cache_bytes`` of :meth:`layer_stats`. Default: a fresh
            unbounded one. Its ``dtype`` must be None (features are stored in the model's dtype: partial
            recomputes write fresh features into the stored tensors in place).
    """

    def __init__(
        self, model: nn.Module, prompt_length: int, gen_length: int, block_length: int, *,
        reuse_unchanged_qkv: int = 0, storage: Storage | None = None,
    ) -> None:
        self.storage = cache_storage(type(self).__name__, storage)
        self.prompt_length, self.gen_length, self.block_length = prompt_length, gen_length, block_length
        self.store: list[LayerFeatures | None] = [None] * len(model.blocks)
        self.reuse_unchanged_qkv = reuse_unchanged_qkv
        self.ids: Tensor | None = None
        self.prefix: PrefixReuse | None = None
        self.decisions = Trace()  # the subclass's refresh decisions, one per part and model call
        #: averages a measured signal across ranks (the runtime's reducer under torch.distributed), or None
        self.reduce: Callable[[float], float] | None = None
        self._rows: int | None = None
        # token-layer counters: seen (what the uncached model computes), computed (attention query + FFN)
        self.layer_calls = self.token_layers = self.computed = 0
        self.reused_qk = self.reused_v = 0  # token projections taken from the store by reuse_unchanged_qkv
        # V-verify (forecache.dllm.v_verify.verify): candidate token-layers, picks, (row, layer) pairs that picked
        self.verified = self.selected = self.adaptive_row_layers = 0
        shapes = LayerShapes.of(model)
        self.flops, self.flops_full = FlopTally(shapes), FlopTally(shapes)

    # ------------------------------------------------------------------ bookkeeping
    def begin_call(self, x: Tensor) -> bool:
        """Start model call on tokens ``x`` (B', L): a new batch size drops every stored feature (cached rows would
        belong to other sequences); counts the head on the current block (the sampler's ``logits_at``). Returns
        True when the store was dropped."""
        rows = x.shape[0]
        dropped = rows != self._rows
        if dropped:
            for i in range(len(self.store)):
                self._release(i)
            self._rows = rows
        self.ids = x
        self.flops.head(rows * self.block_length)
        self.flops_full.head(rows * self.block_length)
        return dropped

    def note_layer(self, rows: int, length: int) -> None:
        """Count one layer call on ``rows`` x ``length`` tokens: what the uncached model computes there."""
        self.token_layers += rows * length
        self.layer_calls += 1
        self.flops_full.full_layer(rows, length)

    def keep(self, i: int, features: LayerFeatures) -> None:
        """Store layer ``i``'s features, replacing its old ones, through :attr:`storage`: the features are handed
        over as they are (no copy) and their bytes counted, so the peak counts what is held after the replacement;
        over the storage's byte budget, :class:`~forecache.core.storage.CacheBudgetError` (and the layer holds
        nothing)."""
        self._release(i)
        kept = iter(self.storage.adopt([t for t in _tensors(features) if t is not None]))
        self.store[i] = LayerFeatures(*(None if t is None else next(kept) for t in _tensors(features)))

    def close(self) -> None:
        """Drop every stored feature (the generation is over): their bytes go back to the storage."""
        for i in range(len(self.store)):
            self._release(i)

    def stats(self) -> dict[str, Any]:
        """The subclass's telemetry (:meth:`_stats`), with ``"prefix"`` (the prefix hook's) when one is attached."""
        out = self._stats()
        if self.prefix is not None:
            out["prefix"] = self.prefix.stats()
        return out

    def _stats(self) -> dict[str, Any]:
        raise NotImplementedError

    def _release(self, i: int) -> None:
        """Drop layer ``i``'s stored features and give their bytes back to the storage."""
        old = self.store[i]
        if old is not None:
            for t in _tensors(old):
                if t is not None:
                    self.storage.drop(t)
        self.store[i] = None

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored features now."""
        return sum(s.nbytes for s in self.store if s is not None)

    @property
    def peak_cache_bytes(self) -> int:
        """The most bytes the stored features held at once (the storage's peak): core's ``peak_cache_bytes``."""
        return self.storage.peak_bytes

    def trace(self) -> Trace:
        """The refresh decisions of this generation, in order (a core ``Trace``: ``trace().to_json()``); the
        conventions (one decision per part and model call, ``row=-1``) are in :mod:`forecache.dllm.call_trigger`."""
        return self.decisions

    def changed(self, i: int, x: Tensor) -> Tensor | None:
        """Bool (B, L): tokens whose input ``x`` to layer ``i`` differs from the one their stored projections came
        from; None when the layer keeps no inputs (``reuse_unchanged_qkv`` off there)."""
        store = self.store[i]
        return None if store is None else store.changed(x)

    # ------------------------------------------------------------------ the layer primitives
    def full_layer(
        self, i: int, layer: LLaDABlock, x: Tensor, cos: Tensor, sin: Tensor, key_mask: Tensor, *,
        use_prefix: bool = True,
    ) -> Tensor:
        """Layer ``i`` for every token, exactly as ``LLaDABlock.forward`` computes it, storing every token's key,
        value, attention and FFN output for later calls.

        With ``reuse_unchanged_qkv``, tokens whose input is unchanged keep their stored query/key/value (exact in
        real arithmetic; see :mod:`forecache.dllm.dllm_cache`). When a prefix hook is attached and the layer has
        no stored features yet (the request's first call), the hook fills the shared prefix from earlier requests
        instead (``use_prefix=False``: never).
        """
        if use_prefix and self.prefix is not None and self.store[i] is None:
            return self.prefix.layer(self, i, layer, x, cos, sin, key_mask)
        b, length, _ = x.shape
        keep_inputs = i < self.reuse_unchanged_qkv
        changed = self.changed(i, x) if keep_inputs else None
        if changed is None:
            h = layer.attn_norm(x)
            q, k = layer.project_qk(h, cos, sin)
            v = layer.project_v(h)
            self.flops.q(b * length)
            self.flops.k(b * length)
            self.flops.v(b * length)
        else:
            everything = columns(0, length, b, x.device)
            _, v = self.values(i, layer, x, everything, changed)
            q, k = self._queries_keys(i, layer, x, everything, cos, sin, changed)
        attn = layer.attend(q, k, v, key_mask)
        x_mid = x + attn
        ffn = layer.ffn(x_mid)
        self.flops.attention(b * length, length)
        self.flops.out_ffn(b * length)
        kept = (q.contiguous(), x.clone()) if keep_inputs else (None, None)
        self.keep(i, LayerFeatures(k.contiguous(), v.contiguous(), attn, ffn, *kept))
        self.computed += b * length
        return x_mid + ffn

    def values(
        self, i: int, layer: LLaDABlock, x: Tensor, pos: Tensor, changed: Tensor | None = None
    ) -> tuple[Tensor | None, Tensor]:
        """Fresh values (B, Hkv, n, hd) of the tokens ``pos`` (B, n) at layer ``i``, and their normed inputs
        ``attn_norm(x)`` (B, n, D), which :meth:`recompute` takes to skip renorming. With ``changed`` (from
        :meth:`changed`) only changed tokens are projected, the others keep their stored values (and no normed
        inputs are returned)."""
        if changed is None:
            h = layer.attn_norm(take_tokens(x, pos))
            self.flops.v(pos.numel())
            return h, layer.project_v(h)
        v = take_tokens(self.store[i].v, pos, dim=2).clone()
        idx = changed_first(changed.gather(1, pos))
        n = 0 if idx is None else idx.numel()
        if idx is not None:
            put_tokens(v, idx, layer.project_v(layer.attn_norm(take_tokens(x, pos.gather(1, idx)))), dim=2)
        self.flops.v(n)
        self.reused_v += pos.numel() - n
        return None, v

    def recompute(
        self, i: int, layer: LLaDABlock, x: Tensor, cos: Tensor, sin: Tensor, key_mask: Tensor, pos: Tensor, *,
        h: Tensor | None = None, v: Tensor | None = None, fresh: tuple[int, Tensor] | None = None,
        changed: Tensor | None = None,
    ) -> Tensor:
        """Layer ``i`` recomputed for the tokens ``pos`` (B, n) of each row only; returns the layer output (B, L, D).

        The tokens of ``pos`` get fresh queries, keys and values; their queries attend over every key (the fresh
        ones of ``pos``, the stored ones of every other token, padded keys masked); then their FFN. Their key,
        value, attention and FFN outputs replace the stored ones. Every other token leaves as
        ``(x_in + stored attn) + stored ffn``. A position listed twice in a row is computed twice (same result).

        Args:
            pos: per row, the positions to recompute (rows may differ); the layer must have stored features
                (call :meth:`full_layer` first).
            h: ``attn_norm`` of the tokens' inputs (B, n, D), if already computed (:meth:`values`).
            v: their fresh values (B, Hkv, n, hd), if already computed (:meth:`values`).
            fresh: ``(lo, v_span)``: fresh values of the columns ``[lo, lo + n_span)`` that attention reads instead
                of the stored ones (V-verify's candidates, whose values it computed anyway).
            changed: :meth:`changed` of this layer and input, when the caller has it; None = derive it here.
        """
        store = self.store[i]
        if store is None:
            raise ValueError(f"recompute: layer {i} has no stored features yet; compute it with full_layer first")
        length = x.shape[1]
        n = pos.numel()
        if changed is None:
            changed = store.changed(x)
        if changed is None:
            if h is None:
                h = layer.attn_norm(take_tokens(x, pos))
            if v is None:
                v = layer.project_v(h)
                self.flops.v(n)
            q, k = layer.project_qk(h, take_tokens(cos, pos), take_tokens(sin, pos))
            self.flops.q(n)
            self.flops.k(n)
        else:
            if v is None:
                _, v = self.values(i, layer, x, pos, changed)
            q, k = self._queries_keys(i, layer, x, pos, cos, sin, changed)
            store.write_inputs(pos, q, take_tokens(x, pos))
        store.write_kv(pos, k, v)
        values = store.v
        if fresh is not None:
            lo, span = fresh
            hi = lo + span.shape[2]
            parts = [store.v[:, :, :lo], span.to(store.v.dtype)] + ([store.v[:, :, hi:]] if hi < length else [])
            values = torch.cat(parts, dim=2)
        # the fresh queries over every stored key/value (padded keys masked): core's token attention, whose
        # SDPA call (grouped heads repeated as the model repeats them) is LLaDABlock.attend's, so bit-identical
        heads = attend_stored(q, store.k, values, key_mask=key_mask)
        put_tokens(store.attn, pos, layer.project_out(heads))
        x = x + store.attn
        put_tokens(store.ffn, pos, layer.ffn(take_tokens(x, pos)))
        self.computed += n
        self.flops.attention(n, length)
        self.flops.out_ffn(n)
        return x + store.ffn

    def reuse(self, i: int, x: Tensor) -> Tensor:
        """Layer ``i`` with nothing recomputed: every token leaves as ``(x_in + stored attn) + stored ffn``."""
        store = self.store[i]
        return x + store.attn + store.ffn

    def _queries_keys(
        self, i: int, layer: LLaDABlock, x: Tensor, pos: Tensor, cos: Tensor, sin: Tensor, changed: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Queries and keys of the tokens ``pos`` (B, n): stored for tokens whose input is unchanged, fresh (RoPE at
        their own positions) for the others."""
        store = self.store[i]
        q, k = take_tokens(store.q, pos, dim=2), take_tokens(store.k, pos, dim=2)
        idx = changed_first(changed.gather(1, pos))
        n = 0 if idx is None else idx.numel()
        if idx is not None:
            sub = pos.gather(1, idx)
            q_new, k_new = layer.project_qk(
                layer.attn_norm(take_tokens(x, sub)), take_tokens(cos, sub), take_tokens(sin, sub)
            )
            put_tokens(q, idx, q_new, dim=2)
            put_tokens(k, idx, k_new, dim=2)
        self.flops.q(n)
        self.flops.k(n)
        self.reused_qk += pos.numel() - n
        return q, k

    def layer_stats(self) -> dict[str, Any]:
        """The counters every feature-cache state reports (its ``stats()`` adds its own).

        Core's vocabulary: ``compute_ratio`` = ``flops / flops_full``, the matmul FLOPs executed over
        ``flops_full``, the FLOPs the uncached model spends on the model calls this generation made;
        ``peak_cache_bytes`` = the most bytes the stored features held. ``compute_fraction`` is another measure
        (token-layers computed / seen).

        What ``compute_ratio`` compares with. The uncached model's cost of one call depends on the shapes only
        (rows, length, the block's head), so ``flops_full`` = model calls x the cost of one uncached call. On
        LLaDA's fixed schedule a request makes ``steps`` calls with or without a cache, so ``flops_full`` *is* the
        uncached run of the same request and ``compute_ratio`` is core's ratio. Under threshold or factor
        decoding (Fast-dLLM) a block ends when its masks are committed, which depends on the logits a cache
        changes: the uncached run with the same settings makes its own number of calls, unknown without running
        it. ``compute_ratio`` stays the ratio over the calls made (the cache's saving per call); the ratio to that
        uncached run is ``compute_ratio * model_calls / uncached model_calls`` (the sampler's ``model_calls`` of
        both runs), exactly; the benchmark's ``speedup_flops`` compares the whole runs' counted FLOPs with its
        uncached baseline run (LLaDA's fixed schedule), so it also counts what parallel decoding saves.
        """
        full = max(self.token_layers, 1)
        return {
            "layer_calls": self.layer_calls,
            "token_layers": self.token_layers,
            "computed": self.computed,
            "compute_fraction": self.computed / full,
            "flops": self.flops.total,
            "flops_full": self.flops_full.total,
            "compute_ratio": self.flops.total / max(self.flops_full.total, 1),
            "peak_cache_bytes": self.peak_cache_bytes,
        }


def _tensors(features: LayerFeatures) -> tuple[Tensor | None, ...]:
    """A layer's stored tensors in :class:`LayerFeatures` field order (absent ones as None)."""
    return (features.k, features.v, features.attn, features.ffn, features.q, features.x_in)
