"""CacheHandle: one policy applied to one model — building its sites and running each model call."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch
from torch import nn

from .adapters.base import Adapter
from .clock import StepClock, Tick
from .rows import put_rows, take_rows
from .runtime import Runtime, model_key
from .sites.base import CallContext, Site
from .sites.module import flatten, rebuild
from .storage import Storage
from .telemetry import Stats, Trace


class CacheHandle:
    """The live state of ``apply(model, policy)``.

    Everything lives here or in the handle's sites (no globals, no class patching): two handles on
    two models never see each other. ``remove()`` restores the model's original forwards exactly.
    Sites see the handle only through its :class:`~forecache.core.runtime.Runtime`.
    """

    def __init__(
        self, model: nn.Module, policy, adapter: Adapter, scheduler: Any = None, count_flops: bool = True
    ) -> None:
        self.model = model
        self.policy = policy
        self.adapter = adapter
        self.clock = StepClock()
        self.storage = Storage(policy.storage_dtype, policy.max_cache_bytes)
        self.runtime = Runtime(model, adapter, self.storage, count_flops)
        self._scheduler = scheduler
        self._must_compute = False
        self.sites: list[Site] = []
        self._root_sites: list[Site] = []
        self.removed = False
        try:
            for selector in policy.selectors:
                self.sites.extend(selector.build(self.runtime, model, adapter, policy))
            if not self.sites:
                raise ValueError(f"policy {policy.name!r} selected no site on {type(model).__name__}")
            for site in self.sites:
                site.install()
            self._root_sites = [s for s in self.sites if s.root]
            self.runtime.wrapping.wrap(model, self._root_call, "a forecache handle")
            if scheduler is not None:
                self._hook_scheduler(scheduler)
        except BaseException:
            self._unwrap_all()
            raise

    def _unwrap_all(self) -> None:
        self.runtime.wrapping.unwrap_all()
        if self._scheduler is not None and "set_timesteps" in self._scheduler.__dict__:
            del self._scheduler.set_timesteps

    def remove(self) -> None:
        """Restore the exact original behaviour and free the cache."""
        self._unwrap_all()
        for site in self.sites:
            site.reset()
        self.removed = True

    # -- the clock -------------------------------------------------------------------------------
    def step(
        self, t: float | torch.Tensor, call_times: Sequence[float] | None = None, segment: Hashable | None = None
    ) -> None:
        """Explicit clock for samplers whose model calls carry no timestep: call once per step,
        before the step's model calls (each call within a step is one branch, with a cache of its
        own: CFG's cond and uncond, or the stages of a multi-stage solver).

        ``call_times`` gives the time coordinate of each call of the step, in call order, when the
        calls evaluate the model at different times (Heun's second call at the next grid point);
        forecasts of each call then use its real times. Calls past the list, or all calls without
        it, are at ``t``. ``segment`` names the segment the step belongs to (a dLLM block, a
        world-model chunk): a new key starts the next segment of the same generation.
        """
        tick = self.clock.begin_step(_scalar_time(t), call_times, segment)
        if tick.new_generation:
            self._new_generation()

    def next_segment(self, key: Hashable | None = None) -> None:
        """The next step begins a new segment of the running generation, even if its timestep
        restarts the schedule (a dLLM block, a world-model chunk, an edit's denoising after its
        inversion, a 3D view). ``key`` names it (default: the previous integer key plus one); sites
        keyed by segment keep a history per key."""
        self.clock.next_segment(key)

    def reset(self) -> None:
        """Start a new generation at the next call (states are cleared then)."""
        self.clock.force_new_generation()

    def set_schedule(self, timesteps: Sequence[float] | torch.Tensor) -> None:
        """Tell the handle the time coordinates of the coming generation (the values the model
        will receive), for triggers that need the step count (cool-down, retention)."""
        self.clock.set_schedule(timesteps)

    def must_compute(self) -> _MustCompute:
        """``with handle.must_compute(): model(...)``: the calls inside write state (a clean pass
        that fills a KV cache, a prefix pass). They run uncached, are never skipped and are not
        steps of the clock."""
        return _MustCompute(self)

    def _hook_scheduler(self, scheduler: Any) -> None:
        original = scheduler.set_timesteps

        @functools.wraps(original)  # keeps the signature diffusers inspects for sigmas=/timesteps=
        def set_timesteps(*args, **kwargs):
            out = original(*args, **kwargs)
            self.clock.scheduler_set(scheduler.timesteps.flatten().tolist())
            return out

        scheduler.set_timesteps = set_timesteps

    def _new_generation(self) -> None:
        for site in self.sites:
            site.reset()
        self.runtime.stats.generations += 1

    # -- one model call --------------------------------------------------------------------------
    def _root_call(self, original: Callable, *args, **kwargs):
        runtime = self.runtime
        if runtime.in_call:  # a re-entrant call (e.g. a guidance model calling itself)
            return original(*args, **kwargs)
        model, adapter = self.model, self.adapter
        batch = adapter.batch_size(model, args, kwargs)
        if batch <= 0:
            raise ValueError(f"{type(model).__name__} was called on an empty batch; pass at least one row")
        key = model_key(args, kwargs)
        if key not in runtime.meter.counts and runtime.meter.enabled:
            analytic = adapter.flops(model, args, kwargs)
            if analytic is not None:
                runtime.meter.declare(key, analytic)
        if self._must_compute or adapter.must_compute(model, args, kwargs):
            runtime.enter(None, passthrough=True)
            try:
                out = runtime.run(key, batch, lambda: original(*args, **kwargs))
            finally:
                runtime.enter(None)
            runtime.model_call(key, batch)
            return out
        raw = None
        if self.clock.explicit:
            tick = self.clock.call()
        else:
            raw = adapter.timestep(model, args, kwargs)
            if raw is None:
                raise ValueError(
                    f"{type(model).__name__} was called without a timestep the adapter can read "
                    f"(looked for {adapter.timestep_args}); call handle.step(t) before each step"
                )
            tick = self.clock.tick(_scalar_time(raw), adapter.segment(model, args, kwargs))
            if tick.new_generation:
                self._new_generation()
        ctx = self._context(tick, batch, raw)
        call = original
        for site in reversed(self._root_sites):
            call = functools.partial(site.intercept, call)
        runtime.enter(ctx)
        try:
            out = runtime.run(key, batch, lambda: call(*args, **kwargs))
            bad = runtime.nonfinite()
            if bad:
                out = self._recompute(ctx, key, _model_rows(ctx, bad), call, args, kwargs, out)
        finally:
            runtime.enter(None)
            runtime.discard_checks()
        runtime.model_call(key, batch)
        if not runtime.fired:
            names = ", ".join(s.name for s in self.sites[:4])
            raise RuntimeError(
                f"forecache: {type(model).__name__} ran a whole call without reaching any cached "
                f"site ({names}): the adapter's blocks are not the ones this forward runs. "
                "Register the right adapter (forecache.core.adapters.diffusers.register) or pass adapter="
            )
        return out

    def _context(self, tick: Tick, batch: int, raw: Any) -> CallContext:
        return CallContext(
            tick.generation, tick.step, tick.branch, tick.t, batch, self.clock.timesteps(tick.t, tick.step),
            segment=tick.segment, index=tick.index, noise=self.adapter.noise_level(tick.t),
            time=raw if torch.is_tensor(raw) and raw.dim() > 1 else None,
        )

    def _recompute(self, ctx: CallContext, key, rows: list[int], call: Callable, args, kwargs, out: Any) -> Any:
        """Rows whose forecast had NaN/Inf run again with every site computing; the other rows keep
        their output and their caches."""
        idx = torch.tensor(rows)
        recompute = dataclasses.replace(ctx, recompute=True)
        self.runtime.enter(recompute)
        if len(rows) == ctx.batch or any(s.pairs_rows for s in self.sites):
            fresh = call(*args, **kwargs)  # rows that only exist together (a batched CFG pair) run together
            self.runtime.extra(key, ctx.batch)
            return fresh
        fresh = self.runtime.on_rows(
            recompute, idx, lambda: call(*take_rows(args, idx, ctx.batch), **take_rows(kwargs, idx, ctx.batch))
        )
        self.runtime.extra(key, len(rows))
        parts, template = flatten(out)
        new, _ = flatten(fresh)
        return rebuild(template, tuple(put_rows(p, idx, q) for p, q in zip(parts, new)))

    # -- telemetry -------------------------------------------------------------------------------
    def stats(self) -> Stats:
        """Compute ratio (FLOPs executed over uncached FLOPs), per-site hit rate, peak cache bytes;
        ``details``: the telemetry sites report of their own (:meth:`Site.telemetry`), by site."""
        stats = self.runtime.summary()
        stats.details = {s.name: t for s in self.sites if (t := s.telemetry()) is not None}
        return stats

    def trace(self) -> Trace:
        """Every decision (generation, segment, step, branch, row, site, t, action, metric);
        ``.to_json()``."""
        return self.runtime.trace

    def clear_telemetry(self) -> None:
        self.runtime.clear()

    def __enter__(self) -> CacheHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"CacheHandle({self.policy.name}, {type(self.model).__name__}, {len(self.sites)} sites)"


class _MustCompute:
    def __init__(self, handle: CacheHandle) -> None:
        self.handle = handle

    def __enter__(self) -> None:
        self.handle._must_compute = True

    def __exit__(self, *exc) -> None:
        self.handle._must_compute = False


def _model_rows(ctx: CallContext, bad: list[tuple[str, CallContext, int]]) -> list[int]:
    """The model call's rows behind the bad forecasts (every row when a site's rows are not the
    model's, as when attention folds frames into its batch)."""
    rows = set()
    for _, where, r in bad:
        if where.rows is None and where.batch != ctx.batch:
            return list(range(ctx.batch))
        rows.add(where.row_of(r))
    return sorted(rows)


def _scalar_time(t) -> float:
    """The clock's reading of a timestep. A per-frame timestep (``[B, F]``, diffusion forcing) is
    summarised by its mean over frames; rows of one call must agree."""
    if not torch.is_tensor(t):
        return float(t)
    flat = t.detach()
    if flat.numel() == 0:
        raise ValueError("the timestep tensor is empty")
    if flat.dim() > 1:
        rows = flat.flatten(1).float()
        if not bool((rows == rows[:1]).all()):
            raise NotImplementedError(
                "rows of one call carry different per-frame timesteps; forecache needs one schedule "
                "per call (split the batch, or call handle.step(t) per group)"
            )
        return float(rows[0].mean())
    flat = flat.flatten()
    if flat.numel() > 1 and not bool((flat == flat[0]).all()):
        raise NotImplementedError(
            "rows of one call carry different timesteps; forecache needs one time per call "
            "(split the batch, or call handle.step(t) per group)"
        )
    return float(flat[0])
