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
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .feature_store import LayerFeatures, put_tokens, take_tokens
from .model import LayerRunner, LLaDABlock

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


def least_similar(v_new: Tensor, v_cached: Tensor, k: int, valid: Tensor | None = None) -> Tensor:
    """V-verify: per row, the ``k`` tokens whose value changed most, as sorted positions LongTensor ``(B, k)``.

    ``v_new``/``v_cached``: (B, Hkv, n, hd); similarity is the cosine between the tokens' whole value vectors
    (all heads). ``valid`` (bool (B, n)): tokens that may be picked; others (padding) never are, so ``k`` must
    not exceed any row's valid count. A NaN similarity counts as least similar (the token is recomputed). Ties
    go to the leftmost token.
    """
    def per_token(v: Tensor) -> Tensor:  # (B, Hkv, n, hd) -> (B, n, Hkv * hd), float32 for the cosine
        return v.transpose(1, 2).flatten(2).float()

    sim = torch.cosine_similarity(per_token(v_new), per_token(v_cached), dim=-1)
    sim = sim.nan_to_num(nan=-math.inf)
    if valid is not None:
        if k > int(valid.sum(-1).min()):
            raise ValueError(f"least_similar: k={k} exceeds a row's valid token count; lower k or rho")
        sim = sim.masked_fill(~valid, math.inf)
    return sim.argsort(dim=-1, stable=True)[:, :k].sort(dim=-1).values


@dataclass(frozen=True)
class DllmCache:
    """dLLM-Cache policy (arXiv 2506.06295); ``start()`` opens the state of one generation.

    Defaults are the reference code's LLaDA-8B-Instruct GSM8K setting (scripts/run_LLaDA_gsm8k_Instruct.sh);
    see ``LLADA_8B_INSTRUCT_SETTINGS`` for the other tasks (rho = 0.25 throughout).

    Attributes:
        prompt_interval: K_p, recompute the prompt every K_p model calls (50).
        response_interval: K_r, recompute every answer token every K_r model calls (7).
        rho: fraction of answer tokens V-verify recomputes on the other calls, in [0, 1] (0.25).
        always_full_layers: the first this many layers always compute in full (0; the reference code uses 1).
    """

    prompt_interval: int = 50
    response_interval: int = 7
    rho: float = 0.25
    always_full_layers: int = 0

    def __post_init__(self) -> None:
        for name in ("prompt_interval", "response_interval"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DllmCache.{name}={value!r} must be an int >= 1 (1 = recompute at every step)")
        if isinstance(self.rho, bool) or not isinstance(self.rho, (int, float)) or not 0.0 <= self.rho <= 1.0:
            raise ValueError(f"DllmCache.rho={self.rho!r} must be a number in [0, 1] (0.25 in the paper)")
        value = self.always_full_layers
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"DllmCache.always_full_layers={value!r} must be an int >= 0 (0 = none)")

    def start(self, model: nn.Module, prompt_length: int, gen_length: int, block_length: int) -> DllmCacheState:
        """A fresh per-generation state for ``model`` (a ``LLaDAModel``); nothing is shared between states."""
        blocks = getattr(model, "blocks", None)
        if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
            raise ValueError("DllmCache.start: model has no `blocks` ModuleList; pass a LLaDAModel")
        if prompt_length < 0 or gen_length < 1:
            raise ValueError(
                f"DllmCache.start: prompt_length={prompt_length}, gen_length={gen_length}; need >= 0 and >= 1"
            )
        return DllmCacheState(self, len(blocks), prompt_length, gen_length)


def dllm_cache(prompt_interval: int = 50, response_interval: int = 7, rho: float = 0.25) -> DllmCache:
    """dLLM-Cache (Liu et al., "dLLM-Cache: Accelerating Diffusion Large Language Models with Adaptive
    Caching", arXiv 2506.06295): long-interval prompt caching plus V-verify partial answer updates.

    Defaults K_p = 50, K_r = 7, rho = 0.25: the reference code's LLaDA-8B-Instruct GSM8K setting
    (``LLADA_8B_INSTRUCT_SETTINGS`` has the other tasks'). ``dllm_cache(1, 1, 0)`` is bit-identical to no cache.
    Deviations from the reference code (padding masked, V-verify against the last recomputation, per-request
    state) are listed in :mod:`forecache.dllm.dllm_cache`.
    """
    return DllmCache(prompt_interval=prompt_interval, response_interval=response_interval, rho=rho)


class DllmCacheState:
    """The caches and counters of one generation (one ``generate()`` call).

    Every row of the batch the model sees (2B under CFG: conditional rows, then unconditional) has its own
    cached tensors and its own V-verify picks. ``rho = 1`` makes every step a response refresh (V-verify would
    pick everything), so ``DllmCache(K_p, K, 1.0)`` computes exactly what ``DllmCache(K_p, 1, 0.0)`` does.
    """

    def __init__(self, policy: DllmCache, n_layers: int, prompt_length: int, gen_length: int) -> None:
        self.policy, self.prompt_length, self.gen_length = policy, prompt_length, gen_length
        self.store: list[LayerFeatures | None] = [None] * n_layers
        self._rows: int | None = None
        self._k = math.floor(policy.rho * gen_length + 1e-9)  # answer tokens V-verify picks per row
        self.steps = 0
        self.full_steps: list[int] = []
        self.prompt_refresh_steps: list[int] = []
        self.response_refresh_steps: list[int] = []
        # token-layer counters: seen, computed (attention query + FFN), V-verified, V-verify picks
        self.layer_calls = self.token_layers = self.computed = self.verified = self.selected = 0
        self.adaptive_row_layers = 0  # (row, layer) pairs where V-verify picked tokens
        self.cache_bytes_peak = 0

    def runner(self, x: Tensor, step: int, block: int) -> LayerRunner:
        """The layer runner for model call ``step`` (0-based, global across blocks; ``block`` is unused: the
        schedule of arXiv 2506.06295 ignores block boundaries). A new batch size drops the cache (full step)."""
        rows, length = x.shape
        if length != self.prompt_length + self.gen_length:
            raise ValueError(
                f"DllmCache: x has {length} columns, expected prompt_length + gen_length = "
                f"{self.prompt_length + self.gen_length}; start a new state for a new request"
            )
        if rows != self._rows:  # a new batch: cached rows would belong to other sequences
            self.store = [None] * len(self.store)
            self._rows = rows
        prompt = step % self.policy.prompt_interval == 0
        response = step % self.policy.response_interval == 0
        self.steps += 1
        if prompt and response or self.store[-1] is None:
            self.full_steps.append(step)
        if prompt:
            self.prompt_refresh_steps.append(step)
        if response:
            self.response_refresh_steps.append(step)

        per_step: dict[str, Any] = {}  # what every layer of this call shares (the answer's valid tokens)

        def run(i: int, layer: LLaDABlock, h: Tensor, cos: Tensor, sin: Tensor, key_mask: Tensor) -> Tensor:
            return self._layer(prompt, response, per_step, i, layer, h, cos, sin, key_mask)

        return run

    def _layer(
        self, prompt: bool, response: bool, per_step: dict[str, Any], i: int, layer: LLaDABlock, x: Tensor,
        cos: Tensor, sin: Tensor, key_mask: Tensor,
    ) -> Tensor:
        """One layer at one step: ``prompt``/``response`` say which parts the step refreshes."""
        b, length, _ = x.shape
        P, R = self.prompt_length, self.gen_length  # the paper's names
        self.token_layers += b * length
        self.layer_calls += 1
        store = self.store[i]
        if store is None or (prompt and response) or i < self.policy.always_full_layers:
            return self._full(i, layer, x, cos, sin, key_mask)
        hs, vs, pos = [], [], []
        v_fresh = None  # V-verify's fresh values of every answer token: attention reads them all
        if prompt:
            hs.append(layer.attn_norm(x[:, :P]))
            vs.append(layer.project_v(hs[-1]))
            pos.append(torch.arange(P, device=x.device).expand(b, P))
        if response or self._k >= R:  # rho = 1 recomputes every answer token: a response refresh
            hs.append(layer.attn_norm(x[:, P:]))
            vs.append(layer.project_v(hs[-1]))
            pos.append(torch.arange(P, length, device=x.device).expand(b, R))
        elif self._k > 0:
            h_answer = layer.attn_norm(x[:, P:])
            v_fresh = layer.project_v(h_answer)
            if not per_step:  # the sampler never pads the answer, but a caller might: pads are never picked
                valid = key_mask.reshape(b, length)[:, P:]
                per_step["k"] = min(self._k, int(valid.sum(-1).min()))
                per_step["valid"] = None if per_step["k"] == R else valid  # None: no per-layer check needed
            pick = least_similar(v_fresh, store.v[:, :, P:], per_step["k"], per_step["valid"])
            hs.append(take_tokens(h_answer, pick))
            vs.append(take_tokens(v_fresh, pick, dim=2))
            pos.append(pick + P)
            self.verified += b * R
            self.selected += pick.numel()
            self.adaptive_row_layers += b
        if not pos:  # nothing to recompute in this layer
            return x + store.attn + store.ffn
        pos_t = torch.cat(pos, dim=1)
        q, k = layer.project_qk(torch.cat(hs, dim=1), take_tokens(cos, pos_t), take_tokens(sin, pos_t))
        store.write_kv(pos_t, k, torch.cat(vs, dim=2))
        v = store.v if v_fresh is None else torch.cat([store.v[:, :, :P], v_fresh.to(store.v.dtype)], dim=2)
        put_tokens(store.attn, pos_t, layer.attend(q, store.k, v, key_mask))
        x = x + store.attn
        put_tokens(store.ffn, pos_t, layer.ffn(take_tokens(x, pos_t)))
        self.computed += pos_t.numel()
        return x + store.ffn

    def _full(self, i: int, layer: LLaDABlock, x: Tensor, cos: Tensor, sin: Tensor, key_mask: Tensor) -> Tensor:
        """The layer exactly as ``LLaDABlock.forward`` computes it, keeping what later steps reuse."""
        h = layer.attn_norm(x)
        q, k = layer.project_qk(h, cos, sin)
        v = layer.project_v(h)
        attn = layer.attend(q, k, v, key_mask)
        x = x + attn
        ffn = layer.ffn(x)
        self.store[i] = LayerFeatures(k.contiguous(), v.contiguous(), attn, ffn)
        self.computed += x.shape[0] * x.shape[1]
        self.cache_bytes_peak = max(self.cache_bytes_peak, sum(s.nbytes for s in self.store if s is not None))
        return x + ffn

    def stats(self) -> dict[str, Any]:
        """Telemetry: ``compute_fraction`` = token-layer attention (query) and FFN computations done / full (the
        method recomputes both for the same tokens), refresh steps, V-verify work and average selection."""
        full = max(self.token_layers, 1)
        return {
            "method": "dllm_cache",
            "params": asdict(self.policy),
            "steps": self.steps,
            "layer_calls": self.layer_calls,
            "compute_fraction": self.computed / full,
            "attention_fraction": self.computed / full,
            "ffn_fraction": self.computed / full,
            "v_verify_fraction": self.verified / full,
            "avg_selected_per_row": self.selected / max(self.adaptive_row_layers, 1),
            "full_steps": list(self.full_steps),
            "prompt_refresh_steps": list(self.prompt_refresh_steps),
            "response_refresh_steps": list(self.response_refresh_steps),
            "cache_bytes_peak": self.cache_bytes_peak,
        }
