"""apply(): put a policy on a model or a pipeline."""

from __future__ import annotations

from typing import Any

from torch import nn

from .adapters.base import Adapter
from .handle import CacheHandle
from .policy import Policy


def apply(model: Any, policy: Policy, adapter: Adapter | None = None, count_flops: bool = True) -> CacheHandle:
    """Cache ``model`` (an ``nn.Module`` or a diffusers pipeline) under ``policy``.

    With a pipeline, the denoiser (``pipe.transformer`` or ``pipe.unet``) is cached and the
    scheduler's ``set_timesteps`` is watched, so the handle knows each generation's schedule.
    ``adapter`` defaults to the diffusers registry entry of the model's class. Returns the
    handle; ``handle.remove()`` restores the model exactly. ``count_flops=False`` skips the one
    FlopCounterMode-instrumented call per input shape that ``stats().compute_ratio`` needs (use it
    when timing).
    """
    if not isinstance(policy, Policy):
        raise ValueError(f"policy={policy!r} is not a Policy; use a preset such as forecache.core.teacache()")
    scheduler = None
    if not isinstance(model, nn.Module):
        denoiser = getattr(model, "transformer", None) or getattr(model, "unet", None)
        if not isinstance(denoiser, nn.Module):
            raise ValueError(
                f"cannot cache a {type(model).__name__}: pass an nn.Module or a pipeline with a "
                "`transformer` or `unet` component"
            )
        scheduler = getattr(model, "scheduler", None)
        model = denoiser
    if adapter is None:
        from .adapters.diffusers import adapter_for

        adapter = adapter_for(model)
    if not isinstance(adapter, Adapter):
        raise ValueError(f"adapter={adapter!r} is not a forecache Adapter")
    policy.validate()
    policy.check_model(model)
    return CacheHandle(model, policy, adapter, scheduler, count_flops)
