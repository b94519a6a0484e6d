"""dLLM-Cache's per-generation state (Liu et al., arXiv 2506.06295): which tokens each model call recomputes.

The policy, its options and their defaults are described in :mod:`forecache.dllm.dllm_cache`; how a layer is
computed once the tokens are chosen (full, or some tokens over stored keys/values) is
:class:`~forecache.dllm.cached_layers.CachedLayers`, this state's base. Per call ``step`` (counted from 0, globally
across blocks) the state recomputes the prompt when ``step % K_p == 0``, the whole answer when ``step % K_r == 0``
(or, under ``response_refresh="drift"``, the call after the drift crossed its threshold), and in between, per
row and layer, V-verify's ``floor(rho * candidates)`` least-similar answer tokens.

The two refresh decisions are core triggers asked once per call (:mod:`forecache.dllm.call_trigger`): the prompt an
:class:`~forecache.core.triggers.Interval` of K_p, the answer an ``Interval`` of K_r or, under drift, a
:class:`~forecache.core.triggers.MeasuredChange` fed the drift V-verify measured at the previous call (a call with
no stored features must refresh it). Both are recorded in the state's :meth:`~CachedLayers.trace`.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from forecache.core.storage import Storage
from forecache.core.triggers import Interval

from .cached_layers import CachedLayers, columns
from .call_trigger import CallTrigger, per_call, steps_where
from .drift import row_drift, step_drift
from .model import LLaDABlock
from .site import LayerRunner
from .v_verify import valid_candidates, verify

if TYPE_CHECKING:
    from .dllm_cache import DllmCache


class DllmCacheState(CachedLayers):
    """The caches and counters of one generation (one ``generate()`` call).

    Every row of the batch the model sees (2B under CFG: conditional rows, then unconditional) has its own
    cached tensors and its own V-verify picks. ``rho = 1`` makes every step a response refresh (V-verify would
    pick everything), so ``DllmCache(K_p, K, 1.0)`` computes exactly what ``DllmCache(K_p, 1, 0.0)`` does.

    The layer primitives a policy built on these features needs are public, from :class:`CachedLayers`:
    ``full_layer`` (every token, storing its features), ``recompute`` (the tokens ``pos`` (B, n) over stored
    keys/values, stored outputs for the rest), ``values`` (fresh values, for V-verify) and ``reuse``.
    """

    def __init__(
        self, policy: DllmCache, model: nn.Module, prompt_length: int, gen_length: int, block_length: int,
        storage: Storage | None = None,
    ) -> None:
        super().__init__(model, prompt_length, gen_length, block_length,
                         reuse_unchanged_qkv=policy.reuse_unchanged_qkv, storage=storage)
        self.policy = policy
        self._prompt = CallTrigger("prompt", Interval(policy.prompt_interval), self.decisions)
        self._response = CallTrigger("response", policy.trigger(), self.decisions)
        self._k = math.floor(policy.rho * gen_length + 1e-9)  # answer tokens V-verify picks per row
        self.drift: list[tuple[int, float, float]] = []  # (step, drift, accumulated) of every call measuring it
        self._open: dict[str, Any] | None = None  # the last call's per-step record, closed at the next call
        self._change: float | None = None  # the last call's drift, for the response trigger's next decision

    SITES = ("prompt", "response")  # the parts decided at every model call, in the order they are traced

    @property
    def steps(self) -> int:
        """The model calls made so far (one decision per part each, in :meth:`~CachedLayers.trace`)."""
        return len(self.decisions) // len(self.SITES)

    def runner(self, x: Tensor, step: int, block: int) -> LayerRunner:
        """The layer runner for model call ``step`` (0-based, global across blocks). ``block`` (the block being
        decoded) only bounds V-verify's candidates under ``verify_scope`` "prefix"/"block": the paper's schedule
        ignores block boundaries. A new batch size drops the cache (full step)."""
        length = x.shape[1]
        if length != self.prompt_length + self.gen_length:
            raise ValueError(
                f"DllmCache: x has {length} columns, expected prompt_length + gen_length = "
                f"{self.prompt_length + self.gen_length}; start a new state for a new request"
            )
        self._close_step()
        self.begin_call(x)
        policy = self.policy
        empty = self.store[-1] is None  # the first call, or a new batch size: every layer computes in full
        prompt, prompt_metric = self._prompt.decide(step)
        if policy.response_refresh == "interval":
            response, response_metric = self._response.decide(step)
        else:  # the drift of the last call decides; a call with nothing stored refreshes anyway
            response, response_metric = self._response.decide(step, must=empty, signal=self._change)
        self._change = None
        note = "no stored features (first call or new batch size)" if empty else None
        for part, computed, metric in ((self._prompt, prompt, prompt_metric),
                                       (self._response, response, response_metric)):
            part.record(step, "compute" if computed else "warmup" if empty else "cached", metric, block, note)

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
        """Fold the last call's per-layer drifts into its drift, record it with the total the response trigger
        will compare (its metric: ``MeasuredChange``'s running sum), and hand it to the next call's decision."""
        if self._open is not None and self._open["drift"]:
            step, value = self._open["step"], step_drift(self._open["drift"])
            if self.reduce is not None:  # every rank decides on the same drift
                value = self.reduce(value)
            self.drift.append((step, value, self._response.peek(step, value)))
            self._change = value
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
        self.note_layer(b, length)
        if self.store[i] is None or (prompt and response) or i < self.policy.always_full_layers:
            return self.full_layer(i, layer, x, cos, sin, key_mask)
        changed = self.changed(i, x) if i < self.policy.reuse_unchanged_qkv else None
        hs, vs, pos = [], [], []  # hs: normed inputs of the recomputed tokens (not kept when reusing)
        fresh = None  # V-verify's fresh values of every candidate: attention reads them all
        lo, hi = per_step["cand"]
        if prompt:
            pos.append(columns(0, P, b, x.device))
            h, v = self.values(i, layer, x, pos[-1], changed)
            hs.append(h)
            vs.append(v)
        if response or (self.policy.verify_scope == "answer" and self._k >= R):
            # rho = 1 over the whole answer picks every answer token: a response refresh
            pos.append(columns(P, length, b, x.device))
            h, v = self.values(i, layer, x, pos[-1], changed)
            hs.append(h)
            vs.append(v)
        elif per_step["k"] > 0 or self._measures_drift(i):
            if "valid" not in per_step:  # the same for every layer of the call: read once (pads are never picked)
                per_step["valid"], per_step["k"] = valid_candidates(key_mask, lo, hi, per_step["k"])
            verified = verify(self, i, layer, x, lo, hi, per_step["k"], per_step["valid"], changed=changed)
            if self._measures_drift(i):
                per_step["drift"].append(row_drift(verified.sim, per_step["valid"]))
            if verified.pick is not None:
                h, v, picked = verified.picked()
                if h is not None:
                    hs.append(h)
                vs.append(v)
                pos.append(picked)
                fresh = verified.fresh
        if not pos:  # nothing to recompute in this layer
            return self.reuse(i, x)
        h = torch.cat(hs, dim=1) if changed is None else None
        return self.recompute(i, layer, x, cos, sin, key_mask, torch.cat(pos, dim=1), h=h, v=torch.cat(vs, dim=2),
                              fresh=fresh, changed=changed)

    def _stats(self) -> dict[str, Any]:
        """Telemetry: ``compute_fraction`` = token-layer attention (query) and FFN computations done / full (the
        method recomputes both for the same tokens); ``compute_ratio`` = matmul FLOPs done / the uncached
        model's (:mod:`forecache.dllm.flops`: projections as computed, V-verify's values, attention of the
        recomputed queries over every key, the head at the current block), on the model calls made (what that
        compares with under threshold decoding: :meth:`~CachedLayers.layer_stats`), refresh steps, V-verify work, the
        tokens whose projections were reused, the drift of each call that measured it (``[step, drift,
        accumulated]``) and ``peak_cache_bytes``. ``steps`` and the refresh steps (``full_steps``, ``prompt_refresh_steps``, ``response_refresh_steps``) are read from the
        decisions in :meth:`~CachedLayers.trace`."""
        self._close_step()
        full = max(self.token_layers, 1)
        layers = self.layer_stats()
        calls = per_call(self.decisions, self.SITES)
        return {
            "method": "dllm_cache",
            "params": asdict(self.policy),
            "steps": len(calls),
            "layer_calls": self.layer_calls,
            "token_layers": self.token_layers,
            "computed": self.computed,
            "compute_fraction": layers["compute_fraction"],
            "attention_fraction": layers["compute_fraction"],
            "ffn_fraction": layers["compute_fraction"],
            "v_verify_fraction": self.verified / full,
            "avg_selected_per_row": self.selected / max(self.adaptive_row_layers, 1),
            "flops": layers["flops"],
            "flops_full": layers["flops_full"],
            "reused_qk_tokens": self.reused_qk,
            "reused_v_tokens": self.reused_v,
            "drift": [list(entry) for entry in self.drift],  # [step, drift, accumulated since the last refresh]
            # read back from the trace: a call computed everything when neither part was reused (both computed, or
            # a part was a "warmup": nothing was stored, so every layer ran in full)
            "full_steps": [p.step for p, r in calls if "cached" not in (p.action, r.action)],
            "prompt_refresh_steps": steps_where(calls, 0, "compute"),
            "response_refresh_steps": steps_where(calls, 1, "compute"),
            "compute_ratio": layers["compute_ratio"],
            "peak_cache_bytes": layers["peak_cache_bytes"],
        }
