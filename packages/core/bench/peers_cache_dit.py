"""cache-dit (PyPI ``cache-dit``, the ``[peers]`` extra) as a peer: DBCache, with or without its TaylorSeer
calibrator, through its public API (``cache_dit.enable_cache`` / ``cache_dit.disable_cache``).

Target: a diffusers ``DiffusionPipeline`` whose class, or whose transformer's class, cache-dit supports
(``FluxPipeline``; the reference ``ShapesPipeline`` around a ``FluxTransformer2DModel``). cache-dit
resets its cache context at every pipeline call by wrapping the pipeline class's ``__call__``; its
transformer-only path keeps one context across generations (repeated generations then differ), so a bare
transformer is refused. While enabled, cache-dit's wrapper sits on the pipeline *class*, so other instances of
that class in the process go through it too; the undo puts the class back.

``disable_cache`` leaves the transformer running cache-dit's own copy of its forward (for Flux, its patch
functor's), with ``_is_patched`` set; the undo restores the transformer's modules exactly (the shared guard in
``peers.py``), the pipeline's instance attributes and the class attributes cache-dit set.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
from typing import Any

from torch import nn

from .peers import Guard, PeerUnsupported, _version, check_free, make_undo
from .protocol import Method

#: class attributes cache-dit sets on the pipeline class
_CLASS_KEYS = ("__call__", "_original_call", "_is_cached")
_MISSING = object()


@functools.cache
def unavailable_reason() -> str | None:
    """Why cache-dit cannot run here, or None when it imports."""
    try:
        import cache_dit  # noqa: F401
    except Exception as exc:  # not installed, or an incompatible install
        return (f"cache-dit is not importable ({type(exc).__name__}: {exc}); install the [peers] extra "
                "(pip install 'forecache[peers]')")
    return None


@contextlib.contextmanager
def _quiet():
    """cache-dit logs every step of enable/disable at INFO (and a warning at every disable) to stdout."""
    from cache_dit import logger as cd_logger

    handler = getattr(cd_logger, "_default_handler", None)
    level = handler.level if handler is not None else None
    if handler is not None:
        handler.setLevel(logging.ERROR)
    try:
        yield
    finally:
        if handler is not None:
            handler.setLevel(level)


def _block_lengths(blocks: Any) -> list[int]:
    if isinstance(blocks, nn.ModuleList):
        return [len(blocks)]
    if isinstance(blocks, list | tuple):
        return [n for b in blocks for n in _block_lengths(b)]
    return []


def _block_adapter(pipe: Any, model: nn.Module):
    """cache-dit's own block adapter for ``pipe``, not yet initialised (nothing patched): the one it registers
    for the pipeline class, or else, for a pipeline of our own around a transformer it supports (the reference
    ``ShapesPipeline`` around a ``FluxTransformer2DModel``), the one it registers for that transformer's family,
    pointed at ``pipe`` so that cache-dit wraps this pipeline's calls (one cache context per generation).
    ``dataclasses.replace(adapter, skip_post_init=False)`` initialises it."""
    from cache_dit import BlockAdapterRegister

    for key in (pipe, model):
        if BlockAdapterRegister.is_supported(key):
            return dataclasses.replace(BlockAdapterRegister.get_adapter(key, skip_post_init=True), pipe=pipe)
    raise PeerUnsupported(f"cache-dit {_version('cache-dit')} has no block adapter for {type(pipe).__name__} "
                          f"or its {type(model).__name__}")


def cache_dit_dbcache(threshold: float = 0.08, Fn: int = 8, Bn: int = 0, max_warmup_steps: int = 8,
                      warmup_interval: int = 1, max_cached_steps: int = -1, max_continuous_cached_steps: int = -1,
                      taylorseer: bool = False, taylorseer_order: int = 1) -> Method:
    """cache-dit ``DBCacheConfig``: the first ``Fn`` blocks always run; when their output residual changed
    by less than ``threshold`` (relative L1) since the last full step, the middle blocks are replaced by their
    cached residual and the last ``Bn`` blocks run to correct it. No caching in the first
    ``max_warmup_steps`` steps; ``max_cached_steps`` / ``max_continuous_cached_steps`` (-1: unlimited) cap
    the reuse. ``taylorseer`` adds cache-dit's TaylorSeer calibrator (order ``taylorseer_order``), which
    forecasts the cached residual instead of reusing it. Defaults are cache-dit's. Stronger: higher
    threshold."""
    params = {"threshold": threshold, "Fn": Fn, "Bn": Bn, "max_warmup_steps": max_warmup_steps}
    for key, value, default in (("warmup_interval", warmup_interval, 1), ("max_cached_steps", max_cached_steps, -1),
                                ("max_continuous_cached_steps", max_continuous_cached_steps, -1)):
        if value != default:
            params[key] = value
    if taylorseer:
        params["taylorseer_order"] = taylorseer_order
    name = "cache_dit_dbcache_taylorseer" if taylorseer else "cache_dit_dbcache"
    method = Method(name=name, params=params, peer=True,
                    note=f"cache-dit {_version('cache-dit')}: DBCache F{Fn}B{Bn}"
                    + (f" + TaylorSeer calibrator (order {taylorseer_order})" if taylorseer else ""))

    def enable(target: Any):
        reason = unavailable_reason()
        if reason:
            raise PeerUnsupported(reason)
        import cache_dit
        from cache_dit import DBCacheConfig, TaylorSeerCalibratorConfig
        from diffusers import DiffusionPipeline

        if not isinstance(target, DiffusionPipeline):
            raise PeerUnsupported(f"cache-dit needs a diffusers DiffusionPipeline target, got {type(target).__name__} "
                                  "(its transformer-only path carries its cache across generations)")
        model = getattr(target, "transformer", None)
        if not isinstance(model, nn.Module):
            raise PeerUnsupported(f"{type(target).__name__} has no `transformer` module")
        adapter = _block_adapter(target, model)
        lengths = _block_lengths(adapter.blocks)
        if lengths and Fn + Bn >= min(lengths):
            raise PeerUnsupported(f"DBCache F{Fn}B{Bn} leaves no block to cache in a block list of {min(lengths)} "
                                  f"({type(model).__name__}); use Fn + Bn < {min(lengths)}")
        check_free(model)

        cls = type(target)
        class_saved = {k: cls.__dict__.get(k, _MISSING) for k in _CLASS_KEYS}
        pipe_keys = set(target.__dict__)
        added: set[str] = set()  # the pipeline attributes enable_cache adds
        guard = Guard(model, method.label)

        def restore_pipeline() -> None:
            for key in added & set(target.__dict__):
                del target.__dict__[key]
            for key, value in class_saved.items():
                if cls.__dict__.get(key, _MISSING) is not value:
                    if value is _MISSING:
                        delattr(cls, key)
                    else:
                        setattr(cls, key, value)

        def disable() -> None:
            with _quiet():
                cache_dit.disable_cache(target)

        cache_config = DBCacheConfig(
            Fn_compute_blocks=Fn, Bn_compute_blocks=Bn, residual_diff_threshold=threshold,
            max_warmup_steps=max_warmup_steps, warmup_interval=warmup_interval, max_cached_steps=max_cached_steps,
            max_continuous_cached_steps=max_continuous_cached_steps)
        calibrator = TaylorSeerCalibratorConfig(taylorseer_order=taylorseer_order) if taylorseer else None
        try:
            with _quiet():  # initialising the adapter patches the transformer: inside the guard
                adapter = dataclasses.replace(adapter, skip_post_init=False)
                cache_dit.enable_cache(adapter, cache_config=cache_config, calibrator_config=calibrator)
            added.update(set(target.__dict__) - pipe_keys)
            guard.mark()
        except BaseException:
            with contextlib.suppress(Exception):
                disable()
            guard.restore()
            restore_pipeline()
            raise
        return make_undo(guard, disable, restore_pipeline)

    method.enable = enable
    return method


def cache_dit_methods(quick: bool) -> list[Method]:
    """cache-dit's sweep, or nothing when it is not installed (``skipped_peers`` says why)."""
    if unavailable_reason():
        return []
    if quick:
        return [cache_dit_dbcache(0.16, Fn=1, Bn=0), cache_dit_dbcache(0.16, Fn=1, Bn=0, taylorseer=True)]
    return [*(cache_dit_dbcache(t, Fn=1, Bn=0) for t in (0.04, 0.08, 0.12, 0.16, 0.24)),
            *(cache_dit_dbcache(t, Fn=8, Bn=0) for t in (0.08, 0.16)),
            *(cache_dit_dbcache(t, Fn=1, Bn=0, taylorseer=True) for t in (0.08, 0.16, 0.24))]
