"""Cache presets by name, for callers that pick a cache from a string (the lm-eval model's ``cache=NAME``).

Each name maps to the preset function that builds the ``CachePolicy`` (``None``: uncached); the preset's
arguments are the knobs a caller may set (``prompt_interval=50,rho=0.25`` for ``dllm_cache``):

- ``dllm_cache``: dLLM-Cache (arXiv 2506.06295), :func:`forecache.dllm.dllm_cache.dllm_cache`;
- ``fast_dllm_cache``: Fast-dLLM's dual cache (arXiv 2505.22618) with dLLM-Cache's long prompt interval,
  :func:`forecache.dllm.combined.fast_dllm_cache`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from .cache_protocol import CachePolicy
from .combined import fast_dllm_cache
from .dllm_cache import dllm_cache

__all__ = ["CACHE_PRESETS", "resolve_cache"]

CACHE_PRESETS: dict[str, Callable[..., CachePolicy] | None] = {
    "none": None, "dllm_cache": dllm_cache, "fast_dllm_cache": fast_dllm_cache,
}
"""``cache=NAME`` -> the preset that builds the policy (``None``: uncached). Knobs are the preset's arguments."""


def resolve_cache(name: str | None, **knobs: Any) -> CachePolicy | None:
    """The cache policy ``CACHE_PRESETS[name](**knobs)``; ``None`` (or ``"none"``) means no cache."""
    key = "none" if name is None else str(name)
    if key not in CACHE_PRESETS:
        raise ValueError(f"unknown cache={name!r}; use one of {sorted(CACHE_PRESETS)} (cache=none runs uncached)")
    preset = CACHE_PRESETS[key]
    accepted = set(inspect.signature(preset).parameters) if preset is not None else set()
    unknown = sorted(set(knobs) - accepted)
    if unknown:
        raise ValueError(
            f"unknown model_args {unknown}: neither a forecache-llada argument nor a knob of cache={key} "
            f"(its knobs: {sorted(accepted) or 'none'}); check the spelling or pick another cache"
        )
    return None if preset is None else preset(**knobs)
