"""A prompt prefix computed once and reused by later requests: few-shot prefixes shared across requests.

Evaluation and serving prompts often begin with the same few-shot block (the first ``n`` real tokens of every
prompt). A :class:`PrefixStore` keeps, per stored prefix, every layer's key, value, attention output and FFN
output at the prefix's ``n`` positions, computed by the first request that had the prefix. At the first model
call of a later request (step 0, where the wrapped policy would compute every token), the rows whose real tokens
start with a stored prefix get those positions *filled from the store*, not computed; the rest of the row is
computed and attends over the stored prefix keys/values (:meth:`CachedLayers.recompute`). Each row uses the
longest stored prefix of its real tokens (exact token match). A row without a stored prefix of
``prefix_length`` tokens computes in full and stores its first ``prefix_length`` real tokens' features.

**An approximation, not a KV cache.** LLaDA's attention is bidirectional (arXiv 2502.09992): a prefix token's
features depend on every token of the sequence, the rest of the prompt and the answer included. (A causal LM's
prefix K/V depend on the prefix alone, which is why its prefix caching is exact.) Reusing features computed in
another request is therefore an approximation of the same kind as dLLM-Cache's prompt reuse across steps (Liu et
al., arXiv 2506.06295): there the prompt's features are computed against one state of the answer and reused
while the answer changes; here they were computed against another request's suffix and answer. The equality that
does hold: when the earlier request was identical, the stored features are exactly the ones this request would
compute, and the request runs exactly as without the store (bitwise with row-invariant kernels; the tests build
them; stock BLAS kernels round a row differently depending on how many rows they multiply at once). The wrapped
policy's next prompt refresh (dLLM-Cache's ``step % K_p == 0``) recomputes the prefix against this request.

Positions are counted per row from the attention mask (:meth:`LLaDAModel.positions`), so a prefix at the start
of a row's real tokens has positions ``0 .. n - 1`` whatever the left padding, and its RoPE-rotated keys are the
same in every request. Under classifier-free guidance the unconditional rows' prompts are mask tokens; they are
matched by their ids like any row (all unconditional rows of at least ``n`` prompt tokens share one entry).

Use::

    store = PrefixStore(max_entries=16)                  # one store per model, shared by its requests
    policy = with_prefix(dllm_cache(), store, prefix_length=n_fewshot_tokens)
    generate(model, ids, mask, cache=policy)             # every request, in turn

``with_prefix`` works with every policy whose state computes layers through :class:`CachedLayers` (dLLM-Cache,
:mod:`forecache.dllm.combined`), not with ``reuse_unchanged_qkv`` (the store keeps no queries or inputs).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from forecache.core.lru_store import LruStore
from forecache.core.policy import Policy
from forecache.core.storage import Storage, nbytes
from forecache.core.triggers import Trigger
from forecache.core.validation import check_int

from .cached_layers import CachedLayers
from .feature_store import LayerFeatures
from .model import LLaDABlock
from .site import LLaDALayers, llada_policy

__all__ = ["PrefixEntry", "PrefixPolicy", "PrefixStore", "with_prefix"]


@dataclass
class PrefixEntry:
    """One stored prefix: its token ids and every layer's features at its ``n`` positions (one row's).

    Attributes:
        tokens: the prefix's token ids (the key).
        k, v: keys and values (layers, Hkv, n, hd), RoPE at positions ``0 .. n - 1``.
        attn, ffn: attention and FFN residual deltas (layers, n, D).
    """

    tokens: tuple[int, ...]
    k: Tensor
    v: Tensor
    attn: Tensor
    ffn: Tensor

    @property
    def n(self) -> int:
        return len(self.tokens)

    @property
    def nbytes(self) -> int:
        return nbytes((self.k, self.v, self.attn, self.ffn))


class PrefixStore:
    """Prefix features shared across requests, keyed by the prefix's token ids; least recently used out first.

    Args:
        max_entries: how many prefixes to keep (16); storing one more evicts the least recently used.
        max_bytes: byte budget over all entries (None = unbounded); storing evicts least recently used entries
            until the new one fits, and a prefix larger than the whole budget is a ValueError.

    A store holds one model's features: it binds to the first model it serves and refuses any other (make one
    store per model; call :meth:`clear` after changing the model's weights).
    """

    def __init__(self, max_entries: int = 16, max_bytes: int | None = None) -> None:
        self._entries = LruStore("PrefixStore", max_entries, max_bytes)  # keyed by the prefix's token ids
        self._model: weakref.ref[nn.Module] | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, tokens: Sequence[int]) -> bool:
        return tuple(tokens) in self._entries

    def keys(self) -> list[tuple[int, ...]]:
        """The stored prefixes, least recently used first."""
        return self._entries.keys()

    @property
    def nbytes(self) -> int:
        return self._entries.bytes

    @property
    def evictions(self) -> int:
        return self._entries.evictions

    @property
    def max_entries(self) -> int:
        return self._entries.max_entries

    @property
    def max_bytes(self) -> int | None:
        return self._entries.max_bytes

    def bind(self, model: nn.Module) -> None:
        """Tie the store to ``model`` on first use; a ValueError for any other model."""
        bound = None if self._model is None else self._model()
        if bound is None:
            self._model = weakref.ref(model)
            self._entries.clear()  # features of a model that is gone are nobody's
        elif bound is not model:
            raise ValueError("PrefixStore holds another model's features; make one PrefixStore per model")

    def lookup(self, tokens: Sequence[int]) -> PrefixEntry | None:
        """The entry of the longest stored prefix of ``tokens`` (exact match of the first ``n`` ids), marked as
        recently used; None when no stored prefix matches."""
        tokens = tuple(tokens)
        for n in sorted({len(key) for key in self._entries.keys()}, reverse=True):
            if n <= len(tokens) and tokens[:n] in self._entries:
                return self._entries.get(tokens[:n])
        return None

    def check_fits(self, nbytes: int, n: int) -> None:
        """A ValueError when an ``n``-token entry of ``nbytes`` bytes exceeds the byte budget on its own."""
        self._entries.check_fits(nbytes, f"a {n}-token prefix", "lower prefix_length")

    def put(self, entry: PrefixEntry) -> None:
        """Store ``entry`` (replacing one with the same tokens) as the most recently used; evict the least
        recently used entries beyond ``max_entries`` or the byte budget."""
        if entry.n == 0:
            raise ValueError("PrefixStore.put: the prefix is empty; store at least one token")
        self._entries.put(entry.tokens, entry, entry.nbytes, f"a {entry.n}-token prefix", "lower prefix_length")

    def clear(self) -> None:
        self._entries.clear()

    def stats(self) -> dict[str, Any]:
        return self._entries.stats()


class _Plan(NamedTuple):
    """How one request's first call uses the store, decided at its first layer."""

    starts: list[int]  # per row: the first real column (its left padding)
    entries: list[PrefixEntry | None]  # per row: the stored prefix it reuses
    rest: Tensor | None  # (B, m) the positions computed when some row reuses (the others repeat L - 1)
    saves: dict[tuple[int, ...], int]  # new prefix -> the row whose features are stored


class PrefixReuse:
    """The hook a :class:`CachedLayers` state calls for a layer's first computation (see the module docstring)."""

    def __init__(self, store: PrefixStore, prefix_length: int, n_layers: int) -> None:
        self.store, self.prefix_length, self.n_layers = store, prefix_length, n_layers
        self._plan: _Plan | None = None
        self._pending: dict[tuple[int, ...], list[tuple[Tensor, ...]]] = {}
        self.rows = self.hits = self.reused_tokens = self.stored = 0

    def layer(
        self, state: CachedLayers, i: int, layer: LLaDABlock, x: Tensor, cos: Tensor, sin: Tensor, key_mask: Tensor
    ) -> Tensor:
        """Layer ``i`` of the first call: stored prefixes filled in and the rest computed, or (no row reuses) the
        full layer; then the features of new prefixes are set aside, and stored after the last layer."""
        if i == 0:
            self._plan = self._make_plan(state, layer, x, key_mask)
            self._pending = {key: [] for key in self._plan.saves}
        plan = self._plan
        if plan is None:
            raise ValueError("prefix reuse: layer 0 must run first in a request's first call")
        if plan.rest is None:
            out = state.full_layer(i, layer, x, cos, sin, key_mask, use_prefix=False)
        else:
            self._fill(state, plan, i, layer, x)
            out = state.recompute(i, layer, x, cos, sin, key_mask, plan.rest)
        features = state.store[i]
        for key, row in plan.saves.items():
            cols = slice(plan.starts[row], plan.starts[row] + len(key))
            self._pending[key].append((features.k[row, :, cols], features.v[row, :, cols],
                                       features.attn[row, cols], features.ffn[row, cols]))
        if i == self.n_layers - 1:
            for key, per_layer in self._pending.items():
                k, v, attn, ffn = (torch.stack(parts) for parts in zip(*per_layer, strict=True))
                self.store.put(PrefixEntry(key, k, v, attn, ffn))  # stack copies: no view of the live cache
                self.stored += 1
            self._pending = {}
        return out

    def _make_plan(self, state: CachedLayers, layer: LLaDABlock, x: Tensor, key_mask: Tensor) -> _Plan:
        ids, P = state.ids, state.prompt_length
        b, length = ids.shape
        real = key_mask.reshape(b, length)[:, :P]
        starts, entries, saves = [], [], {}
        for row in range(b):
            start = P - int(real[row].sum())
            if not bool(real[row, start:].all()):
                raise ValueError("prefix reuse needs left-padded prompts (real tokens last); pad with pad_prompts")
            tokens = ids[row, start:P].tolist()
            entry = self.store.lookup(tokens)
            starts.append(start)
            entries.append(entry)
            if (entry is None or entry.n < self.prefix_length) and len(tokens) >= self.prefix_length:
                saves.setdefault(tuple(tokens[: self.prefix_length]), row)
        if saves:  # fail before computing anything when a new prefix could never be stored
            per_token = 2 * layer.n_kv_heads * layer.head_dim + 2 * x.shape[-1]
            self.store.check_fits(self.n_layers * self.prefix_length * per_token * x.element_size(), self.prefix_length)
        self.rows += b
        self.hits += sum(e is not None for e in entries)
        self.reused_tokens += sum(e.n for e in entries if e is not None)
        if all(e is None for e in entries):
            return _Plan(starts, entries, None, saves)
        is_prefix = torch.zeros(b, length, dtype=torch.bool, device=ids.device)
        for row, entry in enumerate(entries):
            if entry is not None:
                is_prefix[row, starts[row] : starts[row] + entry.n] = True
        # per row its other columns in order (a stable sort puts them first), as many as the row with the most;
        # rows with fewer repeat the last answer column, which every row computes
        width = length - min(0 if e is None else e.n for e in entries)
        rest = is_prefix.long().argsort(dim=1, stable=True)[:, :width]
        rest = rest.masked_fill(is_prefix.gather(1, rest), length - 1)
        return _Plan(starts, entries, rest, saves)

    @staticmethod
    def _fill(state: CachedLayers, plan: _Plan, i: int, layer: LLaDABlock, x: Tensor) -> None:
        """Layer ``i``'s features: the stored prefixes at their rows' columns, zeros elsewhere (computed next)."""
        b, length, d = x.shape
        k = x.new_zeros(b, layer.n_kv_heads, length, layer.head_dim)
        features = LayerFeatures(k, torch.zeros_like(k), x.new_zeros(b, length, d), x.new_zeros(b, length, d))
        for row, entry in enumerate(plan.entries):
            if entry is not None:
                cols = slice(plan.starts[row], plan.starts[row] + entry.n)
                features.k[row, :, cols] = entry.k[i]
                features.v[row, :, cols] = entry.v[i]
                features.attn[row, cols] = entry.attn[i]
                features.ffn[row, cols] = entry.ffn[i]
        state.keep(i, features)

    def stats(self) -> dict[str, Any]:
        """Rows seen at first calls, rows that reused a stored prefix, the token-layers filled from the store
        instead of computed, the prefixes this generation stored, and the store's own counters."""
        return {"prefix_length": self.prefix_length, "rows": self.rows, "hits": self.hits,
                "reused_token_layers": self.reused_tokens * self.n_layers, "stored": self.stored,
                "store": self.store.stats()}


class PrefixPolicy:
    """``policy`` with shared-prefix reuse from ``store`` (see :func:`with_prefix`)."""

    def __init__(self, policy: Any, store: PrefixStore, prefix_length: int) -> None:
        # every bad argument is a ValueError naming the fix (DESIGN.md), wrong types included
        if isinstance(policy, Policy) and isinstance(policy.where, LLaDALayers):
            policy = policy.where.method  # a preset's policy: wrap its method
        if not callable(getattr(policy, "start", None)):
            raise ValueError(  # noqa: TRY004
                f"with_prefix: {policy!r} is not a cache policy; pass e.g. dllm_cache() or fast_dllm_cache()"
            )
        if not isinstance(store, PrefixStore):
            raise ValueError(f"with_prefix: store={store!r} is not a PrefixStore; pass one")  # noqa: TRY004
        check_int("with_prefix", "prefix_length", prefix_length, 1,
                  "the number of shared leading real tokens, e.g. the few-shot block's length")
        self.policy, self.store, self.prefix_length = policy, store, prefix_length

    def start(
        self, model: nn.Module, prompt_length: int, gen_length: int, block_length: int, *,
        storage: Storage | None = None,
    ) -> CachedLayers:
        """The wrapped policy's state with the prefix hook attached (its ``stats()`` then has ``"prefix"``);
        ``storage`` (a core ``Storage``) is passed to the wrapped policy's ``start`` when given."""
        extra = {} if storage is None else {"storage": storage}
        state = self.policy.start(model, prompt_length, gen_length, block_length, **extra)
        if not isinstance(state, CachedLayers):
            raise ValueError(  # noqa: TRY004
                f"with_prefix: {type(self.policy).__name__} keeps no per-token features to fill; use a feature "
                "cache (DllmCache, CombinedCache)"
            )
        if state.reuse_unchanged_qkv:
            raise ValueError("with_prefix: the store keeps no queries or layer inputs; set reuse_unchanged_qkv=0")
        self.store.bind(model)
        hook = PrefixReuse(self.store, self.prefix_length, len(model.blocks))
        state.prefix = hook
        return state

    def trigger(self) -> Trigger:
        """The wrapped policy's main refresh trigger."""
        return self.policy.trigger()

    def __repr__(self) -> str:
        return f"with_prefix({self.policy!r}, prefix_length={self.prefix_length})"


def with_prefix(policy: Any, store: PrefixStore, prefix_length: int) -> Policy:
    """``policy`` whose first call per request fills the rows' stored prefixes from ``store`` instead of computing
    them, and stores the first ``prefix_length`` real tokens of rows with no stored prefix that long.

    ``policy``: a feature cache (``dllm_cache()``, ``fast_dllm_cache()``, or their methods ``DllmCache(...)``,
    ``CombinedCache(...)``); ``store``: shared by the requests (one per model); ``prefix_length``: the shared
    prefix's length in tokens. Returns the core policy (for ``generate(cache=...)``). An approximation under
    bidirectional attention, exact for an identical earlier request: see :mod:`forecache.dllm.prefix_store`.
    """
    name = policy.name if isinstance(policy, Policy) else type(policy).__name__
    paper = policy.paper if isinstance(policy, Policy) else ""
    return llada_policy(PrefixPolicy(policy, store, prefix_length), f"{name}+prefix", paper)
