"""Cache presets by name, for callers that pick a cache from a string (the lm-eval model's ``cache=NAME``).

Each name maps to the preset function that builds the ``CachePolicy`` (``None``: uncached); the preset's
arguments are the knobs a caller may set (``prompt_interval=50,rho=0.25`` for ``dllm_cache``). The names are
the dllm presets of core's registry (``forecache presets --domain dllm``) that build a ``CachePolicy``
(``fast_dllm`` builds sampler settings, not a cache):

- ``dllm_cache``: dLLM-Cache (arXiv 2506.06295), :func:`forecache.dllm.dllm_cache.dllm_cache`;
- ``fast_dllm_cache``: Fast-dLLM's dual cache (arXiv 2505.22618) with dLLM-Cache's long prompt interval,
  :func:`forecache.dllm.combined.fast_dllm_cache`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from forecache.core.presets.registry import preset_infos

from . import combined, dllm_cache  # noqa: F401  (their imports register the presets read below)
from .cache_protocol import CachePolicy

__all__ = ["CACHE_PRESETS", "resolve_cache"]

# discover=False: the imports above registered dllm's presets; loading the entry points would only import
# the other domains (and their dependencies), whose presets the domain filter drops
CACHE_PRESETS: dict[str, Callable[..., CachePolicy] | None] = {
    "none": None,
    **{name: info.function for name, info in preset_infos("dllm", discover=False).items()
       if issubclass(info.returns, CachePolicy)},
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
