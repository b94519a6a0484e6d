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
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .drift import row_drift, step_drift
from .feature_store import LayerFeatures, changed_first, put_tokens, take_tokens
from .flops import FlopTally, LayerShapes
from .model import LayerRunner, LLaDABlock
from .v_verify import least_similar, pick_least_similar, value_similarity

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


def _check_int(name: str, value: Any, low: int, hint: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"DllmCache.{name}={value!r} must be an int >= {low} ({hint})")


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
        _check_int("prompt_interval", self.prompt_interval, 1, "1 = recompute at every step")
        _check_int("response_interval", self.response_interval, 1, "1 = recompute at every step")
        if isinstance(self.rho, bool) or not isinstance(self.rho, (int, float)) or not 0.0 <= self.rho <= 1.0:
            raise ValueError(f"DllmCache.rho={self.rho!r} must be a number in [0, 1] (0.25 in the paper)")
        _check_int("always_full_layers", self.always_full_layers, 0, "0 = none")
        _check_int("reuse_unchanged_qkv", self.reuse_unchanged_qkv, 0, "0 = off, 1 = layer 0")
        if self.verify_scope not in VERIFY_SCOPES:
            raise ValueError(f"DllmCache.verify_scope={self.verify_scope!r}: use one of {VERIFY_SCOPES}")
        if self.response_refresh not in RESPONSE_REFRESH:
            raise ValueError(f"DllmCache.response_refresh={self.response_refresh!r}: use one of {RESPONSE_REFRESH}")
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
            _check_int("drift_layer", self.drift_layer, 0, "None = every layer")
        if type(self.drift_accumulate) is not bool:  # 0/1 would pass a truth test silently
            raise ValueError(f"DllmCache.drift_accumulate={self.drift_accumulate!r} must be True or False")

    def start(self, model: nn.Module, prompt_length: int, gen_length: int, block_length: int) -> DllmCacheState:
        """A fresh per-generation state for ``model`` (a ``LLaDAModel``); nothing is shared between states."""
        blocks = getattr(model, "blocks", None)
        if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
            raise ValueError("DllmCache.start: model has no `blocks` ModuleList; pass a LLaDAModel")
        if prompt_length < 0 or gen_length < 1:
            raise ValueError(
                f"DllmCache.start: prompt_length={prompt_length}, gen_length={gen_length}; need >= 0 and >= 1"
            )
        if block_length < 1 or gen_length % block_length:
            raise ValueError(
                f"DllmCache.start: block_length={block_length} does not divide gen_length={gen_length}; choose "
                "a block_length that divides it"
            )
        layer = self.drift_layer
        if layer is not None and not self.always_full_layers <= layer < len(blocks):
            raise ValueError(
                f"DllmCache.drift_layer={layer} does not run V-verify in a {len(blocks)}-layer model with "
                f"always_full_layers={self.always_full_layers}; pick a layer in "
                f"[{self.always_full_layers}, {len(blocks)}) or None"
            )
        return DllmCacheState(self, model, prompt_length, gen_length, block_length)


def dllm_cache(
    prompt_interval: int = 50, response_interval: int = 7, rho: float = 0.25, **options: Any
) -> DllmCache:
    """dLLM-Cache (Liu et al., "dLLM-Cache: Accelerating Diffusion Large Language Models with Adaptive
    Caching", arXiv 2506.06295): long-interval prompt caching plus V-verify partial answer updates.

    Defaults K_p = 50, K_r = 7, rho = 0.25: the reference code's LLaDA-8B-Instruct GSM8K setting
    (``LLADA_8B_INSTRUCT_SETTINGS`` has the other tasks'). ``dllm_cache(1, 1, 0)`` is bit-identical to no cache.
    ``options`` are :class:`DllmCache`'s other fields (all off by default). Deviations from the reference code
    (padding masked, V-verify against the last recomputation, per-request state) are listed in
    :mod:`forecache.dllm.dllm_cache`.
    """
    return DllmCache(prompt_interval=prompt_interval, response_interval=response_interval, rho=rho, **options)


class DllmCacheState:
    """The caches and counters of one generation (one ``generate()`` call).

    Every row of the batch the model sees (2B under CFG: conditional rows, then unconditional) has its own
    cached tensors and its own V-verify picks. ``rho = 1`` makes every step a response refresh (V-verify would
    pick everything), so ``DllmCache(K_p, K, 1.0)`` computes exactly what ``DllmCache(K_p, 1, 0.0)`` does.
    """

    def __init__(
        self, policy: DllmCache, model: nn.Module, prompt_length: int, gen_length: int, block_length: int
    ) -> None:
        self.policy, self.prompt_length, self.gen_length = policy, prompt_length, gen_length
        self.block_length = block_length
        self.store: list[LayerFeatures | None] = [None] * len(model.blocks)
        self._rows: int | None = None
        self._k = math.floor(policy.rho * gen_length + 1e-9)  # answer tokens V-verify picks per row
        self.steps = 0
        self.full_steps: list[int] = []
        self.prompt_refresh_steps: list[int] = []
        self.response_refresh_steps: list[int] = []
        # token-layer counters: seen, computed (attention query + FFN), V-verified, V-verify picks
        self.layer_calls = self.token_layers = self.computed = self.verified = self.selected = 0
        self.adaptive_row_layers = 0  # (row, layer) pairs where V-verify picked tokens
        self.reused_qk = self.reused_v = 0  # token projections taken from the cache by reuse_unchanged_qkv
        self.cache_bytes_peak = 0
        shapes = LayerShapes.of(model)
        self.flops, self.flops_full = FlopTally(shapes), FlopTally(shapes)
        self.drift: list[tuple[int, float, float]] = []  # (step, drift, accumulated) of every call measuring it
        self._accumulated = 0.0  # drift summed since the last response refresh
        self._open: dict[str, Any] | None = None  # the last call's per-step record, closed at the next call
        self._refresh_due = False

    def runner(self, x: Tensor, step: int, block: int) -> LayerRunner:
        """The layer runner for model call ``step`` (0-based, global across blocks). ``block`` (the block being
        decoded) only bounds V-verify's candidates under ``verify_scope`` "prefix"/"block": the paper's schedule
        ignores block boundaries. A new batch size drops the cache (full step)."""
        rows, length = x.shape
        if length != self.prompt_length + self.gen_length:
            raise ValueError(
                f"DllmCache: x has {length} columns, expected prompt_length + gen_length = "
                f"{self.prompt_length + self.gen_length}; start a new state for a new request"
            )
        self._close_step()
        if rows != self._rows:  # a new batch: cached rows would belong to other sequences
            self.store = [None] * len(self.store)
            self._rows = rows
        policy = self.policy
        prompt = step % policy.prompt_interval == 0
        if policy.response_refresh == "interval":
            response = step % policy.response_interval == 0
        else:  # the first call (or a new batch) computes everything anyway
            response = self._refresh_due or self.store[-1] is None
        self._refresh_due = False
        if response:
            self._accumulated = 0.0
        self.steps += 1
        if prompt and response or self.store[-1] is None:
            self.full_steps.append(step)
        if prompt:
            self.prompt_refresh_steps.append(step)
        if response:
            self.response_refresh_steps.append(step)
        self.flops.head(rows * self.block_length)  # the sampler reads the current block's logits (logits_at)
        self.flops_full.head(rows * self.block_length)

        P, R, bl = self.prompt_length, self.gen_length, self.block_length
        lo, hi = {"answer": (0, R), "prefix": (0, (block + 1) * bl), "block": (block * bl, (block + 1) * bl)}[
            policy.verify_scope
        ]
        if not 0 <= lo < hi <= R:
            raise ValueError(f"DllmCache: block={block} is outside the answer's {R // bl} blocks of {bl} tokens")
        # what every layer of this call shares: V-verify's candidate columns and (filled by the first layer
        # that needs them) the valid candidates and the pick count, and the drift of the layers that measure it
        per_step: dict[str, Any] = {"step": step, "cand": (P + lo, P + hi), "drift": []}
        per_step["k"] = self._k if policy.verify_scope == "answer" else math.floor(policy.rho * (hi - lo) + 1e-9)
        self._open = per_step

        def run(i: int, layer: LLaDABlock, h: Tensor, cos: Tensor, sin: Tensor, key_mask: Tensor) -> Tensor:
            return self._layer(prompt, response, per_step, i, layer, h, cos, sin, key_mask)

        return run

    def _close_step(self) -> None:
        """Fold the last call's per-layer drifts into its drift and decide whether the next call refreshes."""
        if self._open is not None and self._open["drift"]:
            value = step_drift(self._open["drift"])
            self._accumulated = value + (self._accumulated if self.policy.drift_accumulate else 0.0)
            self.drift.append((self._open["step"], value, self._accumulated))
            self._refresh_due = self._accumulated > self.policy.drift_threshold
        self._open = None

    def _measures_drift(self, i: int) -> bool:
        layer = self.policy.drift_layer
        return self.policy.response_refresh == "drift" and (layer is None or layer == i)

    def _layer(
        self, prompt: bool, response: bool, per_step: dict[str, Any], i: int, layer: LLaDABlock, x: Tensor,
        cos: Tensor, sin: Tensor, key_mask: Tensor,
    ) -> Tensor:
        """One layer at one step: ``prompt``/``response`` say which parts the step refreshes."""
        b, length, _ = x.shape
        P, R = self.prompt_length, self.gen_length  # the paper's names
        self.token_layers += b * length
        self.layer_calls += 1
        self.flops_full.full_layer(b, length)
        store = self.store[i]
        if store is None or (prompt and response) or i < self.policy.always_full_layers:
            return self._full(i, layer, x, cos, sin, key_mask)
        changed = store.changed(x) if i < self.policy.reuse_unchanged_qkv else None
        hs, vs, pos = [], [], []  # hs: normed inputs of the recomputed tokens (not kept when reusing)
        v_fresh = None  # V-verify's fresh values of every candidate: attention reads them all
        lo, hi = per_step["cand"]
        if prompt:
            h, v = self._values(layer, store, x, 0, P, changed)
            hs.append(h)
            vs.append(v)
            pos.append(torch.arange(P, device=x.device).expand(b, P))
        if response or (self.policy.verify_scope == "answer" and self._k >= R):
            # rho = 1 over the whole answer picks every answer token: a response refresh
            h, v = self._values(layer, store, x, P, length, changed)
            hs.append(h)
            vs.append(v)
            pos.append(torch.arange(P, length, device=x.device).expand(b, R))
        elif per_step["k"] > 0 or self._measures_drift(i):
            h_cand, v_cand = self._values(layer, store, x, lo, hi, changed)
            if "valid" not in per_step:  # the sampler never pads the answer, but a caller might: pads are never picked
                valid = key_mask.reshape(b, length)[:, lo:hi]
                per_step["k"] = min(per_step["k"], int(valid.sum(-1).min()))
                per_step["valid"] = valid
            sim = value_similarity(v_cand, store.v[:, :, lo:hi])
            self.verified += b * (hi - lo)
            if self._measures_drift(i):
                per_step["drift"].append(row_drift(sim, per_step["valid"]))
            if per_step["k"] > 0:
                # None: every candidate valid and picked, no per-layer check needed
                valid = None if per_step["k"] == hi - lo else per_step["valid"]
                pick = pick_least_similar(sim, per_step["k"], valid)
                if h_cand is not None:
                    hs.append(take_tokens(h_cand, pick))
                vs.append(take_tokens(v_cand, pick, dim=2))
                pos.append(pick + lo)
                v_fresh = v_cand
                self.selected += pick.numel()
                self.adaptive_row_layers += b
        if not pos:  # nothing to recompute in this layer
            return x + store.attn + store.ffn
        pos_t = torch.cat(pos, dim=1)
        if changed is None:
            q, k = layer.project_qk(torch.cat(hs, dim=1), take_tokens(cos, pos_t), take_tokens(sin, pos_t))
            self.flops.q(pos_t.numel())
            self.flops.k(pos_t.numel())
        else:
            q, k = self._queries_keys(layer, store, x, pos_t, cos, sin, changed)
            store.write_inputs(pos_t, q, take_tokens(x, pos_t))
        store.write_kv(pos_t, k, torch.cat(vs, dim=2))
        v = store.v
        if v_fresh is not None:
            parts = [store.v[:, :, :lo], v_fresh.to(store.v.dtype)] + ([store.v[:, :, hi:]] if hi < length else [])
            v = torch.cat(parts, dim=2)
        put_tokens(store.attn, pos_t, layer.attend(q, store.k, v, key_mask))
        x = x + store.attn
        put_tokens(store.ffn, pos_t, layer.ffn(take_tokens(x, pos_t)))
        self.computed += pos_t.numel()
        self.flops.attention(pos_t.numel(), length)
        self.flops.out_ffn(pos_t.numel())
        return x + store.ffn

    def _values(
        self, layer: LLaDABlock, store: LayerFeatures, x: Tensor, lo: int, hi: int, changed: Tensor | None
    ) -> tuple[Tensor | None, Tensor]:
        """Fresh values (B, Hkv, hi - lo, hd) of the tokens in columns [lo, hi) and their normed inputs; with
        ``changed`` (reuse on) only changed tokens are projected, the others keep their cached values (no h)."""
        b = x.shape[0]
        if changed is None:
            h = layer.attn_norm(x[:, lo:hi])
            self.flops.v(b * (hi - lo))
            return h, layer.project_v(h)
        v = store.v[:, :, lo:hi].clone()
        idx = changed_first(changed[:, lo:hi])
        n = 0 if idx is None else idx.numel()
        if idx is not None:
            put_tokens(v, idx, layer.project_v(layer.attn_norm(take_tokens(x, idx + lo))), dim=2)
        self.flops.v(n)
        self.reused_v += b * (hi - lo) - n
        return None, v

    def _queries_keys(
        self, layer: LLaDABlock, store: LayerFeatures, x: Tensor, pos: Tensor, cos: Tensor, sin: Tensor,
        changed: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Queries and keys of the tokens ``pos`` (B, n): cached for tokens whose input is unchanged, fresh
        (RoPE at their own positions) for the others."""
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

    def _full(self, i: int, layer: LLaDABlock, x: Tensor, cos: Tensor, sin: Tensor, key_mask: Tensor) -> Tensor:
        """The layer exactly as ``LLaDABlock.forward`` computes it, keeping what later steps reuse (with
        ``reuse_unchanged_qkv``, unchanged tokens keep their cached query/key/value: exact, see the module)."""
        b, length, _ = x.shape
        keep_inputs = i < self.policy.reuse_unchanged_qkv
        store = self.store[i]
        changed = store.changed(x) if keep_inputs and store is not None else None
        if changed is None:
            h = layer.attn_norm(x)
            q, k = layer.project_qk(h, cos, sin)
            v = layer.project_v(h)
            self.flops.q(b * length)
            self.flops.k(b * length)
            self.flops.v(b * length)
        else:
            _, v = self._values(layer, store, x, 0, length, changed)
            all_tokens = torch.arange(length, device=x.device).expand(b, length)
            q, k = self._queries_keys(layer, store, x, all_tokens, cos, sin, changed)
        attn = layer.attend(q, k, v, key_mask)
        x_mid = x + attn
        ffn = layer.ffn(x_mid)
        self.flops.attention(b * length, length)
        self.flops.out_ffn(b * length)
        kept = (q.contiguous(), x.clone()) if keep_inputs else (None, None)
        self.store[i] = LayerFeatures(k.contiguous(), v.contiguous(), attn, ffn, *kept)
        self.computed += b * length
        self.cache_bytes_peak = max(self.cache_bytes_peak, sum(s.nbytes for s in self.store if s is not None))
        return x_mid + ffn

    def stats(self) -> dict[str, Any]:
        """Telemetry: ``compute_fraction`` = token-layer attention (query) and FFN computations done / full (the
        method recomputes both for the same tokens); ``flops_fraction`` = matmul FLOPs done / the uncached
        model's (:mod:`forecache.dllm.flops`: projections as computed, V-verify's values, attention of the
        recomputed queries over every key, the head at the current block), refresh steps, V-verify work, the
        tokens whose projections were reused, and the drift of each call that measured it (``[step, drift,
        accumulated]``)."""
        self._close_step()
        full = max(self.token_layers, 1)
        return {
            "method": "dllm_cache",
            "params": asdict(self.policy),
            "steps": self.steps,
            "layer_calls": self.layer_calls,
            "token_layers": self.token_layers,
            "computed": self.computed,
            "compute_fraction": self.computed / full,
            "attention_fraction": self.computed / full,
            "ffn_fraction": self.computed / full,
            "v_verify_fraction": self.verified / full,
            "avg_selected_per_row": self.selected / max(self.adaptive_row_layers, 1),
            "flops": self.flops.total,
            "flops_full": self.flops_full.total,
            "flops_fraction": self.flops.total / max(self.flops_full.total, 1),
            "reused_qk_tokens": self.reused_qk,
            "reused_v_tokens": self.reused_v,
            "drift": [list(entry) for entry in self.drift],  # [step, drift, accumulated since the last refresh]
            "full_steps": list(self.full_steps),
            "prompt_refresh_steps": list(self.prompt_refresh_steps),
            "response_refresh_steps": list(self.response_refresh_steps),
            "cache_bytes_peak": self.cache_bytes_peak,
        }
