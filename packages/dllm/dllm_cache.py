"""dLLM-Cache: adaptive feature caching for diffusion language models (Liu et al., arXiv 2506.06295).

A masked-diffusion LM (LLaDA) re-reads the whole sequence at every denoising step, yet the prompt never
changes and most answer tokens barely move from one step to the next. dLLM-Cache keeps, per layer and per
token, the key, value, attention output and FFN output (:mod:`forecache.dllm.feature_store`) and recomputes

- the prompt every ``prompt_interval`` (K_p) model calls, reusing it in between;
- every answer ("response") token every ``response_interval`` (K_r) calls;
- in between, per row, the ``floor(rho * R)`` answer tokens whose fresh value vector is least cosine-similar
  to the one cached at their last recomputation ("V-verify"; R = gen_length, all blocks). Their queries attend
  over every key: fresh keys/values for recomputed tokens, cached keys and fresh values for the other answer
  tokens, cached (or, on prompt refreshes, fresh) prompt keys/values.

Steps count model calls from 0, globally across blocks (the reference code's counter); call 0 computes all.
A reused token leaves a layer as ``(x_in + cached attn) + cached ffn`` with its current input ``x_in``.

Deviations from the reference code (maomaocun/dLLM-cache), each on purpose:
- padding: padded keys are masked in every attention (the reference drops the mask on its cached path);
- V-verify compares with the value stored at the token's last recomputation; the reference overwrites every
  answer token's cached value each step, so it compares with the previous step and misses slow drift (both
  attend with the fresh values, which V-verify computed anyway);
- one state per ``generate()`` call (the reference keeps a process-wide singleton); the CFG batch is 2B
  independent rows (the reference runs the branches as two calls, which is the same while both run each step);
- ``always_full_layers`` (default 0, the paper): the reference computes layer 0 in full since commit 1ef9d03.

Options beyond the paper, all off by default (the defaults compute exactly what the paper's method does):
- ``reuse_unchanged_qkv``: in the first n layers, a token whose layer input is bitwise the one its cached
  query/key/value came from keeps them instead of recomputing them (its attention output is still recomputed
  when the method says so: it depends on the other tokens' keys). At layer 0 the input is the token's
  embedding, so that is every token whose id did not change; deeper, a token the cache reused in every lower
  layer leaves each with ``x_in + cached deltas``, bitwise unchanged too, so most of V-verify's value
  projections are skipped. Costs a query and an input tensor per such layer. Exact in real arithmetic, but
  *not* bitwise identical to recomputing, which is why it is off: BLAS kernels round a row differently
  depending on how many rows they multiply at once (measured on CPU, widths 32 to 4096: rows of a linear layer
  computed for a subset of tokens differ in the last bits from the same rows computed with all tokens), and
  V-verify's picks at layer 0 among unchanged tokens (cosines within rounding of 1) follow that noise. With
  row-invariant kernels it is bitwise identical, tokens and logits (the tests prove it).
- ``verify_scope``: V-verify candidates over the whole answer (``"answer"``, the paper), the answer up to the
  current block (``"prefix"``) or the current block (``"block"``); ``floor(rho * candidates)`` are picked.
  Later blocks are all masks and cannot be committed in this block; they are not checked any more (lossy).
- ``response_refresh="drift"``: refresh the whole answer after the call at which the drift measured by V-verify
  (:mod:`forecache.dllm.drift`), summed over the calls since the last refresh (``drift_accumulate``), exceeds
  ``drift_threshold``, instead of every K_r calls; :func:`forecache.dllm.drift_calibration.calibrate_drift`
  finds the threshold for a target compute fraction.

This module holds the policy (:class:`DllmCache`, its checks and defaults) and the preset; the per-generation
state that carries the schedule out is :class:`~forecache.dllm.dllm_cache_state.DllmCacheState`, which computes
layers through :class:`~forecache.dllm.cached_layers.CachedLayers` (shared with the Fast-dLLM combination,
:mod:`forecache.dllm.combined`, and prefix reuse across requests, :mod:`forecache.dllm.prefix_store`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from forecache.core.policy import Policy
from forecache.core.presets.registry import preset
from forecache.core.triggers import Interval, MeasuredChange, Trigger
from forecache.core.storage import Storage
from forecache.core.validation import check_bool, check_choice, check_fraction, check_int

from .cached_layers import check_model
from .dllm_cache_state import DllmCacheState
from .site import llada_policy
from .v_verify import least_similar

__all__ = ["LLADA_8B_INSTRUCT_SETTINGS", "DllmCache", "DllmCacheState", "dllm_cache", "least_similar"]

# (K_p, K_r, rho) of the reference scripts (scripts/run_LLaDA_*_Instruct.sh) for LLaDA-8B-Instruct.
LLADA_8B_INSTRUCT_SETTINGS: dict[str, tuple[int, int, float]] = {
    "gsm8k": (50, 7, 0.25),
    "bbh": (50, 6, 0.25),
    "gpqa": (50, 6, 0.25),
    "humaneval": (50, 8, 0.25),
    "mbpp": (100, 5, 0.25),
    "minerva_math": (50, 1, 0.25),
    "mmlu_generative": (100, 7, 0.25),
    "mmlu_pro": (51, 3, 0.25),
    "longbench_hotpotqa": (100, 8, 0.25),
}
VERIFY_SCOPES = ("answer", "prefix", "block")
RESPONSE_REFRESH = ("interval", "drift")


@dataclass(frozen=True)
class DllmCache:
    """dLLM-Cache policy (arXiv 2506.06295); ``start()`` opens the state of one generation.

    Defaults are the reference code's LLaDA-8B-Instruct GSM8K setting (scripts/run_LLaDA_gsm8k_Instruct.sh);
    see ``LLADA_8B_INSTRUCT_SETTINGS`` for the other tasks (rho = 0.25 throughout). The options after
    ``always_full_layers`` are ours (see the module docstring); their defaults are the paper's method.

    Attributes:
        prompt_interval: K_p, recompute the prompt every K_p model calls (50).
        response_interval: K_r, recompute every answer token every K_r model calls (7); unused under drift.
        rho: fraction of V-verify's candidates it recomputes, in [0, 1] (0.25).
        always_full_layers: the first this many layers always compute in full (0; the reference code uses 1).
        reuse_unchanged_qkv: in the first this many layers, reuse the query/key/value of tokens whose layer
            input is bitwise unchanged (0 = off; 1 = layer 0, whose input is the token embedding; the layer
            count or more = every layer).
        verify_scope: V-verify's candidates: ``"answer"`` (all R answer tokens, the paper), ``"prefix"`` (the
            answer up to the current block) or ``"block"`` (the current block).
        response_refresh: ``"interval"`` (every K_r calls, the paper) or ``"drift"`` (the call after the drift
            exceeds ``drift_threshold``).
        drift_threshold: the drift above which the next call refreshes the answer; needed by and only by
            ``response_refresh="drift"`` (no paper default: calibrate it with ``calibrate_drift``).
        drift_accumulate: compare the sum of the calls' drifts since the last response refresh (True, default)
            or the last call's drift alone (False; each in [0, 2]) with the threshold.
        drift_layer: the layer whose V-verify measures the drift; None (default) = the mean over every layer
            that runs V-verify. With rho = 0 those layers compute the candidates' values for the measure only.
    """

    prompt_interval: int = 50
    response_interval: int = 7
    rho: float = 0.25
    always_full_layers: int = 0
    reuse_unchanged_qkv: int = 0
    verify_scope: str = "answer"
    response_refresh: str = "interval"
    drift_threshold: float | None = None
    drift_accumulate: bool = True
    drift_layer: int | None = None

    def __post_init__(self) -> None:
        who = "DllmCache"
        check_int(who, "prompt_interval", self.prompt_interval, 1, "1 = recompute at every step")
        check_int(who, "response_interval", self.response_interval, 1, "1 = recompute at every step")
        check_fraction(who, "rho", self.rho, "0.25 in the paper")
        check_int(who, "always_full_layers", self.always_full_layers, 0, "0 = none")
        check_int(who, "reuse_unchanged_qkv", self.reuse_unchanged_qkv, 0, "0 = off, 1 = layer 0")
        check_choice(who, "verify_scope", self.verify_scope, VERIFY_SCOPES)
        check_choice(who, "response_refresh", self.response_refresh, RESPONSE_REFRESH)
        drift = self.response_refresh == "drift"
        t = self.drift_threshold
        if drift and (isinstance(t, bool) or not isinstance(t, (int, float)) or not t >= 0.0):
            raise ValueError(
                f"DllmCache.drift_threshold={t!r}: response_refresh='drift' needs a number >= 0 (no paper "
                "default; find one for a target compute fraction with calibrate_drift)"
            )
        if not drift and (t is not None or self.drift_layer is not None):
            raise ValueError(
                "DllmCache.drift_threshold/drift_layer only apply with response_refresh='drift'; set that, or "
                "leave them None"
            )
        if self.drift_layer is not None:
            check_int(who, "drift_layer", self.drift_layer, 0, "None = every layer")
        # 0/1 would pass a truth test silently
        check_bool(who, "drift_accumulate", self.drift_accumulate, "True sums the drift since the last refresh")

    def trigger(self) -> Trigger:
        """The core trigger of the answer's refresh: an ``Interval`` of K_r, or under ``response_refresh="drift"``
        a ``MeasuredChange`` of the drift (the prompt's is an ``Interval`` of K_p)."""
        if self.response_refresh == "interval":
            return Interval(self.response_interval)
        return MeasuredChange(self.drift_threshold, self.drift_accumulate)

    def start(
        self, model: nn.Module, prompt_length: int, gen_length: int, block_length: int, *,
        storage: Storage | None = None,
    ) -> DllmCacheState:
        """A fresh per-generation state for ``model`` (a ``LLaDAModel``); nothing is shared between states.
        ``storage``: a core ``Storage`` for the stored features (e.g. ``Storage(max_bytes=...)``: a byte budget
        that raises ``CacheBudgetError``); default: an unbounded one of this state's own."""
        check_model("DllmCache", model, prompt_length, gen_length, block_length)
        blocks = model.blocks
        layer = self.drift_layer
        if layer is not None and not self.always_full_layers <= layer < len(blocks):
            raise ValueError(
                f"DllmCache.drift_layer={layer} does not run V-verify in a {len(blocks)}-layer model with "
                f"always_full_layers={self.always_full_layers}; pick a layer in "
                f"[{self.always_full_layers}, {len(blocks)}) or None"
            )
        return DllmCacheState(self, model, prompt_length, gen_length, block_length, storage)


@preset(domain="dllm")
def dllm_cache(
    prompt_interval: int = 50, response_interval: int = 7, rho: float = 0.25, **options: Any
) -> Policy:
    """dLLM-Cache (Liu et al., "dLLM-Cache: Accelerating Diffusion Large Language Models with Adaptive
    Caching", arXiv 2506.06295): long-interval prompt caching plus V-verify partial answer updates.

    Defaults K_p = 50, K_r = 7, rho = 0.25: the reference code's LLaDA-8B-Instruct GSM8K setting
    (``LLADA_8B_INSTRUCT_SETTINGS`` has the other tasks'). ``dllm_cache(1, 1, 0)`` is bit-identical to no cache.
    ``options`` are :class:`DllmCache`'s other fields (all off by default). Deviations from the reference code
    (padding masked, V-verify against the last recomputation, per-request state) are listed in
    :mod:`forecache.dllm.dllm_cache`. Returns the core policy (``generate(cache=...)``, or
    :func:`~forecache.dllm.adapter.cache_llada` for a handle); its method is ``policy.where.method``.
    """
    method = DllmCache(prompt_interval=prompt_interval, response_interval=response_interval, rho=rho, **options)
    return llada_policy(method, "dllm_cache", "arXiv 2506.06295")
