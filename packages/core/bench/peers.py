"""Peer implementations as benchmark methods (``Method(peer=True)``): diffusers' own cache hooks and,
when installed, cache-dit (``bench/peers_cache_dit.py``), run on the benchmark's model in the same process.

``enable(target)`` takes a pipeline-like object with a ``.transformer`` (a diffusers pipeline) or a bare
transformer, and returns an undo callable that restores every module of the transformer exactly: the
same ``__dict__`` entries, the same ``forward`` objects, the same torch hook tables (checked in
``tests/core/test_peers.py``). A peer that cannot run on a target raises :class:`PeerUnsupported` with
the reason, which the runner records as a skipped row.

One cache per model: a peer refuses a transformer that a forecache handle or another peer holds, and while
a peer holds it the transformer carries forecache's ownership mark, so ``forecache.core.apply`` refuses it
too (``ValueError: ... is already cached by peer ...``).

The time-dependent diffusers hooks (PAB, FasterCache) take a ``current_timestep_callback`` in the
scheduler's 0-1000 units. It is fed by a forward pre-hook on the transformer (removed on undo) that reads,
once per model call, the pipeline's ``_current_timestep`` (set by diffusers pipelines before each step), or
else the timestep argument of the call, converted with the forecache adapter's ``time_unit``. For a target that
is not a diffusers ``DiffusionPipeline`` (a bare transformer, a sampler of our own) the same pre-hook also supplies
what a diffusers pipeline otherwise does: a cache context (``"cond"``, one for every call: two-call CFG then
shares one state) when none is set, and a reset of the hooks' state when the timestep rises (a new generation).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..wrapping import OWNER as _OWNER
from .protocol import Method

__all__ = [
    "PeerUnsupported", "available_peers", "cache_dit_dbcache", "diffusers_fastercache", "diffusers_fbcache",
    "diffusers_magcache", "diffusers_pab", "diffusers_taylorseer", "skipped_peers",
]

_MISSING = object()
#: torch.nn.Module's per-instance tables whose contents a peer may change
_TABLES = ("_parameters", "_buffers", "_modules", "_forward_hooks", "_forward_pre_hooks",
           "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called")


class PeerUnsupported(RuntimeError):
    """This peer cannot run on this target; the message says why (the runner reports it as skipped)."""


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def split_target(target: Any) -> tuple[Any, nn.Module]:
    """(pipeline or None, transformer) of a benchmark target."""
    if isinstance(target, nn.Module):
        return None, target
    model = getattr(target, "transformer", None)
    if not isinstance(model, nn.Module):
        raise PeerUnsupported(f"{type(target).__name__} has no `transformer` module to cache")
    return target, model


def check_free(model: nn.Module) -> None:
    """Raise if a forecache handle or a peer already caches ``model``."""
    for name, module in model.named_modules():
        owner = module.__dict__.get(_OWNER)
        if owner is not None:
            where = f"{type(model).__name__}.{name}" if name else type(model).__name__
            raise ValueError(f"{where} is already cached by {owner[1]}; remove that first (handle.remove() "
                             "or the peer's undo) before enabling another cache")
    if getattr(model, "_cache_config", None) is not None:
        raise ValueError(f"{type(model).__name__} already has a diffusers cache enabled "
                         f"({type(model._cache_config).__name__}); call disable_cache() first")
    if getattr(model, "_is_cached", False):
        raise ValueError(f"{type(model).__name__} is already cached by cache-dit; call cache_dit.disable_cache first")


class Guard:
    """The exact state of every module under ``model`` before a peer is enabled, and its restoration.

    ``restore()`` removes every instance attribute added since, puts back every one replaced (``forward``
    first of all) and restores the contents of torch's parameter, submodule and hook tables.
    """

    def __init__(self, model: nn.Module, label: str) -> None:
        self.model, self.label = model, label
        self.saved = [(m, dict(m.__dict__), {t: dict(m.__dict__[t]) for t in _TABLES if t in m.__dict__})
                      for m in model.modules()]
        self.restored = False

    def hooked(self) -> list[nn.Module]:
        """Modules whose ``forward`` the peer replaced."""
        return [m for m, d, _ in self.saved if m.__dict__.get("forward", _MISSING) is not d.get("forward", _MISSING)]

    def mark(self) -> None:
        setattr(self.model, _OWNER, (self, f"peer {self.label} (call the undo its enable() returned)"))

    def restore(self) -> None:
        for module, saved, tables in self.saved:
            d = module.__dict__
            for key in [k for k in d if k not in saved]:
                del d[key]
            for key, value in saved.items():
                if d.get(key, _MISSING) is not value:
                    d[key] = value
            for key, contents in tables.items():
                now = d[key]  # compared in order: a child deleted and set again moves to the end of _modules
                if list(now) != list(contents) or any(now[k] is not v for k, v in contents.items()):
                    now.clear()
                    now.update(contents)
        self.restored = True


class _Undo:
    """The undo callable a peer's ``enable`` returns; idempotent."""

    def __init__(self, guard: Guard, steps: list[Callable[[], Any]]) -> None:
        self.guard, self.steps = guard, steps

    def __call__(self) -> None:
        if self.guard.restored:
            return
        try:
            for step in self.steps:
                step()
        finally:
            self.guard.restore()


def make_undo(guard: Guard, *steps: Callable[[], Any]) -> _Undo:
    return _Undo(guard, list(steps))


# -- the clock that diffusers pipelines otherwise provide ------------------------------------------------


class _Clock:
    """A forward pre-hook on the transformer: the current timestep (0-1000) for PAB and FasterCache, and
    for a bare transformer a default cache context and a state reset when the timesteps restart."""

    def __init__(self, pipe: Any, model: nn.Module, needs_time: bool, on_call: Callable[[], None] | None = None):
        from diffusers import DiffusionPipeline

        self.pipe, self.model, self.needs_time, self.on_call = pipe, model, needs_time, on_call
        # a diffusers pipeline enters a cache context around each call and resets the hooks after each
        # generation; for anything else (a bare transformer, a sampler of our own) the clock does both
        self.managed = isinstance(pipe, DiffusionPipeline)
        self.t: float | None = None
        self.last: float | None = None
        self.managers: list = []
        self.handle = None
        self.adapter = None
        try:
            from ..adapters.diffusers import adapter_for

            self.adapter = adapter_for(model)
        except Exception:  # an unregistered model: only the pipeline's timestep can be used
            pass
        if needs_time and self.adapter is None and not hasattr(pipe, "_current_timestep"):
            raise PeerUnsupported(
                f"cannot tell the timestep of {type(model).__name__} calls: forecache has no adapter for it and the "
                "target is not a diffusers pipeline that sets `_current_timestep`")

    def install(self) -> None:
        from diffusers.hooks.hooks import StateManager

        seen = {}
        for module in self.model.modules():
            registry = module.__dict__.get("_diffusers_hook")
            for hook in (registry.hooks.values() if registry is not None else ()):
                for value in vars(hook).values():
                    if isinstance(value, StateManager):
                        seen[id(value)] = value
        self.managers = list(seen.values())
        self.handle = self.model.register_forward_pre_hook(self, with_kwargs=True)

    def remove(self) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None

    def _raw(self, args: tuple, kwargs: dict) -> float | None:
        if self.adapter is not None:
            raw = self.adapter.timestep(self.model, args, kwargs)
        else:
            raw = kwargs.get("timestep", kwargs.get("t"))
        if raw is None:
            return None
        return float(torch.as_tensor(raw).detach().float().max())

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        current = getattr(self.pipe, "_current_timestep", None) if self.needs_time else None
        raw = self._raw(args, kwargs) if not self.managed or (self.needs_time and current is None) else None
        if self.needs_time:
            if current is not None:
                self.t = float(current)
            elif raw is not None and self.adapter is not None:
                self.t = raw * 1000.0 / self.adapter.time_unit
            else:
                self.t = None
        if not self.managed:
            if raw is not None and self.last is not None and raw > self.last:
                self._new_generation()
            self.last = raw if raw is not None else self.last
            from diffusers.hooks.hooks import CacheContext

            for manager in self.managers:
                if manager._context is None:
                    manager.set_context(CacheContext("cond"))
        if self.on_call is not None:
            self.on_call()

    def _new_generation(self) -> None:
        contexts = [(m, m._context) for m in self.managers]
        self.model._reset_stateful_cache()
        for manager, context in contexts:
            manager.set_context(context)

    def timestep(self) -> float:
        if self.t is None:
            raise RuntimeError(f"no timestep was read for this {type(self.model).__name__} call")
        return self.t


# -- diffusers' cache hooks -------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_diffusers_hooks():
    """FasterCache warns that it is experimental at every enable, and the runner enables once per repeat."""
    log = logging.getLogger("diffusers.hooks")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _diffusers_peer(name: str, params: dict, build: Callable[[_Clock, Any, nn.Module], Any], note: str,
                    needs_time: bool = False, on_call: Callable[[_Clock, Any], Callable[[], None]] | None = None,
                    ) -> Method:
    """A Method enabling ``build(clock, pipe, model)`` (a diffusers cache config) through
    ``model.enable_cache`` and undoing it through ``disable_cache`` and the guard."""
    method = Method(name=name, params=params, peer=True, note=f"diffusers {_version('diffusers')}: {note}")

    def enable(target: Any) -> _Undo:
        from diffusers.models.cache_utils import CacheMixin

        pipe, model = split_target(target)
        if not isinstance(model, CacheMixin):
            raise PeerUnsupported(f"{type(model).__name__} is not a diffusers model with enable_cache (CacheMixin)")
        check_free(model)
        clock = _Clock(pipe, model, needs_time)
        config = build(clock, pipe, model)
        if on_call is not None:
            clock.on_call = on_call(clock, config)
        guard = Guard(model, method.label)
        try:
            try:
                with _quiet_diffusers_hooks():
                    model.enable_cache(config)
            except Exception as exc:
                raise PeerUnsupported(f"diffusers {type(config).__name__} cannot hook {type(model).__name__}: "
                                      f"{type(exc).__name__}: {exc}") from exc
            if not guard.hooked():
                raise PeerUnsupported(
                    f"diffusers {type(config).__name__} found nothing to hook in {type(model).__name__}")
            clock.install()
            guard.mark()
        except BaseException:
            if getattr(model, "_cache_config", None) is config:
                model.disable_cache()
            clock.remove()
            guard.restore()
            raise
        return make_undo(guard, clock.remove, model.disable_cache)

    method.enable = enable
    return method


def diffusers_fbcache(threshold: float = 0.05) -> Method:
    """diffusers ``FirstBlockCacheConfig(threshold)``: the first block always runs; when its residual changed
    by less than ``threshold`` (relative mean absolute) since the last full step, the remaining blocks are
    replaced by their cached residual. Stronger: higher threshold."""

    def build(clock, pipe, model):
        from diffusers import FirstBlockCacheConfig

        return FirstBlockCacheConfig(threshold=threshold)

    return _diffusers_peer("diffusers_fbcache", {"threshold": threshold}, build,
                           "FirstBlockCacheConfig (ParaAttention's first-block cache) on the block lists")


def diffusers_magcache(threshold: float = 0.06, max_skip_steps: int = 3, retention_ratio: float = 0.2,
                       num_inference_steps: int | None = None, mag_ratios: Any = None) -> Method:
    """diffusers ``MagCacheConfig``: skips the whole block stack while the accumulated magnitude-ratio error
    stays under ``threshold`` (at most ``max_skip_steps`` in a row, never in the first ``retention_ratio`` of
    the steps). Stronger: higher threshold.

    ``mag_ratios`` default to diffusers' ``FLUX_MAG_RATIOS`` (calibrated on FLUX.1-dev) for a
    FluxTransformer2DModel; other models need them passed (MagCacheConfig(calibrate=True) measures them).
    The hook counts steps itself and must know their number: ``num_inference_steps``, or by default the
    pipeline's ``_num_timesteps`` (or its scheduler's timesteps) read at every call, the ratios being
    re-interpolated when it changes. A bare transformer needs ``num_inference_steps``."""
    params = {"threshold": threshold, "max_skip_steps": max_skip_steps, "retention_ratio": retention_ratio}
    if num_inference_steps is not None:
        params["num_inference_steps"] = num_inference_steps
    if mag_ratios is not None:
        params["mag_ratios"] = [float(x) for x in mag_ratios]

    def base_ratios(model):
        if mag_ratios is not None:
            return torch.as_tensor([float(x) for x in mag_ratios])
        from diffusers import FluxTransformer2DModel
        from diffusers.hooks.mag_cache import FLUX_MAG_RATIOS

        if isinstance(model, FluxTransformer2DModel):
            return FLUX_MAG_RATIOS.clone()
        raise PeerUnsupported(f"diffusers MagCache has no magnitude ratios for {type(model).__name__}: pass "
                              "mag_ratios= (measure them with MagCacheConfig(calibrate=True))")

    def build(clock, pipe, model):
        from diffusers import MagCacheConfig

        ratios = base_ratios(model)
        steps = num_inference_steps or _pipeline_steps(pipe)
        if steps is None:
            if pipe is None:
                raise PeerUnsupported("diffusers MagCache counts steps itself: give a bare transformer "
                                      "num_inference_steps=")
            steps = len(ratios)  # replaced at the first call, once the pipeline has set its timesteps
        config = MagCacheConfig(threshold=threshold, max_skip_steps=max_skip_steps, retention_ratio=retention_ratio,
                                num_inference_steps=steps, mag_ratios=ratios.clone())
        config._forecache_base_ratios = ratios
        return config

    def follow_steps(clock, config):
        def on_call():
            if num_inference_steps is not None:
                return
            steps = _pipeline_steps(clock.pipe)
            if steps is not None and steps != config.num_inference_steps:
                from diffusers.hooks.mag_cache import nearest_interp

                config.num_inference_steps = steps
                config.mag_ratios = nearest_interp(config._forecache_base_ratios, steps)

        return on_call

    note = "MagCacheConfig (MagCache's head/tail block hooks)"
    if mag_ratios is None:
        note += ("; ratios: diffusers' FLUX_MAG_RATIOS, calibrated on FLUX.1-dev, so on other weights they are "
                 "not the model's own")
    return _diffusers_peer("diffusers_magcache", params, build, note, on_call=follow_steps)


def _pipeline_steps(pipe: Any) -> int | None:
    if pipe is None:
        return None
    steps = getattr(pipe, "_num_timesteps", None)
    if isinstance(steps, int) and steps > 0:
        return steps
    timesteps = getattr(getattr(pipe, "scheduler", None), "timesteps", None)
    return len(timesteps) if timesteps is not None and len(timesteps) else None


def diffusers_taylorseer(cache_interval: int = 5, max_order: int = 1, disable_cache_before_step: int = 3,
                         disable_cache_after_step: int | None = None, factors_dtype: str = "bfloat16",
                         lite: bool = False) -> Method:
    """diffusers ``TaylorSeerCacheConfig``: every attention module of the blocks computes every
    ``cache_interval`` steps (after ``disable_cache_before_step`` warm-up steps) and is forecast by a Taylor
    series of order ``max_order`` in between; ``lite`` forecasts only ``proj_out`` and skips the blocks.
    Factors are stored in ``factors_dtype`` (diffusers' default bfloat16). Stronger: longer interval."""
    params = {"cache_interval": cache_interval, "max_order": max_order,
              "disable_cache_before_step": disable_cache_before_step}
    if disable_cache_after_step is not None:
        params["disable_cache_after_step"] = disable_cache_after_step
    params["factors_dtype"] = factors_dtype
    if lite:
        params["lite"] = True

    def build(clock, pipe, model):
        from diffusers import TaylorSeerCacheConfig

        return TaylorSeerCacheConfig(
            cache_interval=cache_interval, disable_cache_before_step=disable_cache_before_step,
            disable_cache_after_step=disable_cache_after_step, max_order=max_order,
            taylor_factors_dtype=getattr(torch, factors_dtype), use_lite_mode=lite)

    return _diffusers_peer("diffusers_taylorseer", params, build,
                           "TaylorSeerCacheConfig (Taylor forecast of every block attention module)")


def diffusers_pab(spatial_skip: int = 2, timestep_range: tuple[int, int] = (100, 800),
                  temporal_skip: int | None = None, cross_skip: int | None = None) -> Method:
    """diffusers ``PyramidAttentionBroadcastConfig``: inside ``timestep_range`` (0-1000 units) each spatial
    self-attention computes once every ``spatial_skip`` calls and broadcasts its output otherwise (temporal
    and cross attention likewise when their ranges are given). Stronger: larger skip."""
    params = {"spatial_skip": spatial_skip, "timestep_range": list(timestep_range)}
    if temporal_skip is not None:
        params["temporal_skip"] = temporal_skip
    if cross_skip is not None:
        params["cross_skip"] = cross_skip

    def build(clock, pipe, model):
        from diffusers import PyramidAttentionBroadcastConfig

        rng = tuple(timestep_range)
        return PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=spatial_skip, temporal_attention_block_skip_range=temporal_skip,
            cross_attention_block_skip_range=cross_skip, spatial_attention_timestep_skip_range=rng,
            temporal_attention_timestep_skip_range=rng, cross_attention_timestep_skip_range=rng,
            current_timestep_callback=clock.timestep)

    return _diffusers_peer("diffusers_pab", params, build,
                           "PyramidAttentionBroadcastConfig; its per-module state is not kept per CFG branch, so "
                           "with two-call CFG the branches share a broadcast", needs_time=True)


def diffusers_fastercache(spatial_skip: int = 2, timestep_range: tuple[int, int] = (-1, 681),
                          attention_weight: float = 0.5, cfg_cache: bool = False, uncond_skip: int = 5,
                          tensor_format: str = "BCFHW") -> Method:
    """diffusers ``FasterCacheConfig``: inside ``timestep_range`` (0-1000 units) each block attention
    computes once every ``spatial_skip`` calls and is extrapolated from its last two outputs otherwise
    (weight ``attention_weight``). ``cfg_cache`` turns on the CFG-Cache half (the unconditional branch
    reused every ``uncond_skip`` steps through its frequency delta), which needs CFG batched as
    ``[uncond, cond]`` in one call and a ``tensor_format`` latent; off (the default) the model is treated as
    guidance-distilled, as Flux is, and only attention is cached. Stronger: larger skip."""
    params = {"spatial_skip": spatial_skip, "timestep_range": list(timestep_range),
              "attention_weight": attention_weight, "cfg_cache": cfg_cache}
    if cfg_cache:
        params.update(uncond_skip=uncond_skip, tensor_format=tensor_format)

    def build(clock, pipe, model):
        from diffusers import FasterCacheConfig

        return FasterCacheConfig(
            spatial_attention_block_skip_range=spatial_skip,
            spatial_attention_timestep_skip_range=tuple(timestep_range),
            attention_weight_callback=lambda _module: attention_weight, unconditional_batch_skip_range=uncond_skip,
            tensor_format=tensor_format, is_guidance_distilled=not cfg_cache, current_timestep_callback=clock.timestep)

    note = "FasterCacheConfig"
    if not cfg_cache:
        note += " with is_guidance_distilled=True: attention reuse only, no CFG-Cache"
    return _diffusers_peer("diffusers_fastercache", params, build, note, needs_time=True)


def cache_dit_dbcache(threshold: float = 0.08, Fn: int = 8, Bn: int = 0, **knobs: Any) -> Method:
    """cache-dit's DBCache (optionally with its TaylorSeer calibrator); see ``bench/peers_cache_dit.py``."""
    from .peers_cache_dit import cache_dit_dbcache as make

    return make(threshold=threshold, Fn=Fn, Bn=Bn, **knobs)


# -- the sweep --------------------------------------------------------------------------------------------

_SWEEPS: dict[str, tuple[Callable[..., Method], str, tuple, tuple]] = {
    # name: (factory, strength knob, quick points, full points)
    "diffusers_fbcache": (diffusers_fbcache, "threshold", (0.12,), (0.03, 0.05, 0.08, 0.12, 0.2)),
    "diffusers_magcache": (diffusers_magcache, "threshold", (0.06,), (0.03, 0.06, 0.12, 0.24)),
    "diffusers_taylorseer": (diffusers_taylorseer, "cache_interval", (3,), (2, 3, 4, 5, 7)),
    "diffusers_pab": (diffusers_pab, "spatial_skip", (4,), (2, 3, 4, 6)),
    "diffusers_fastercache": (diffusers_fastercache, "spatial_skip", (4,), (2, 3, 4)),
}


def available_peers(quick: bool = False, *, num_inference_steps: int | None = None) -> list[Method]:
    """Every peer that can be imported here, each at a few strengths of its main knob (``quick``: one).

    ``num_inference_steps`` is passed to the peers that must know the step count up front on a bare
    transformer (diffusers MagCache); pipelines report it themselves."""
    methods: list[Method] = []
    for name, (factory, knob, quick_points, points) in _SWEEPS.items():
        steps_known = name == "diffusers_magcache" and num_inference_steps
        extra = {"num_inference_steps": num_inference_steps} if steps_known else {}
        methods += [factory(**{knob: v}, **extra) for v in (quick_points if quick else points)]
    from .peers_cache_dit import cache_dit_methods

    return methods + cache_dit_methods(quick)


def skipped_peers() -> list[tuple[str, str]]:
    """Peers known to forecache that this run leaves out, with the reason."""
    from .peers_cache_dit import unavailable_reason

    out = []
    reason = unavailable_reason()
    if reason:
        out.append(("cache_dit_dbcache", reason))
    out += [
        ("diffusers_seacache", (
            "SeaCacheConfig needs a pipeline that passes step_index, sigma and num_inference_steps through "
            "cache_context and a video latent adapter (Cosmos 3 in diffusers 0.42); elsewhere it runs uncached")),
        ("diffusers_text_kv_cache", (
            "TextKVCacheConfig precomputes the text tokens' K/V once, losslessly; it is not a step cache and "
            "composes with every method here")),
    ]
    return out
