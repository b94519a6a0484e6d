"""CacheHandle: one policy applied to one model, with its clock, storage, telemetry and undo."""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from . import distributed
from .adapters.base import Adapter
from .clock import StepClock
from .flops import FlopMeter
from .sites.base import CallContext, Site
from .storage import Storage
from .telemetry import Decision, Stats, Trace

log = logging.getLogger("forecache")

_OWNER = "_forecache_owner"


class CacheHandle:
    """The live state of ``apply(model, policy)``.

    Everything lives here or in the handle's sites (no globals, no class patching): two handles on
    two models never see each other. ``remove()`` restores the model's original forwards exactly.
    """

    def __init__(
        self, model: nn.Module, policy, adapter: Adapter, scheduler: Any = None, count_flops: bool = True
    ) -> None:
        self.model = model
        self.policy = policy
        self.adapter = adapter
        self.storage = Storage(policy.storage_dtype, policy.max_cache_bytes)
        self.meter = FlopMeter(count_flops)
        self.clock = StepClock()
        self._stats = Stats(flops_counted=count_flops)
        self._trace = Trace()
        self._ctx: CallContext | None = None
        self._fired = False
        self._explicit = False
        self._calls_in_step = 0
        self._call_times: tuple[float, ...] | None = None
        self._schedule: tuple[float, ...] | None = None
        self._scheduler_times: tuple[float, ...] | None = None
        self._wrapped: dict[nn.Module, tuple[Any, bool]] = {}
        self._scheduler = scheduler
        self.sites: list[Site] = []
        self._root_sites: list[Site] = []
        self._checks: list[tuple] = []
        self.recomputing = False
        self.removed = False
        try:
            for selector in policy.selectors:
                self.sites.extend(selector.build(self, model, adapter, policy))
            if not self.sites:
                raise ValueError(f"policy {policy.name!r} selected no site on {type(model).__name__}")
            for site in self.sites:
                site.install()
            self._root_sites = [s for s in self.sites if getattr(s, "root", False)]
            self.wrap(model, self._root_call, self)
            if scheduler is not None:
                self._hook_scheduler(scheduler)
        except BaseException:
            self._unwrap_all()
            raise

    # -- wrapping forwards (instance attributes only) --------------------------------------------
    def wrap(self, module: nn.Module, fn: Callable, owner: Any) -> Callable:
        """Route ``module.forward`` through ``fn(original_forward, *args, **kwargs)``; returns the
        original forward. A module belongs to at most one site of one handle."""
        previous = getattr(module, _OWNER, None)
        if previous is not None:
            raise ValueError(
                f"{type(module).__name__} is already cached by {previous[1]}; call remove() on that "
                "handle first, or select disjoint modules"
            )
        had_instance_forward = "forward" in module.__dict__
        original = module.forward
        self._wrapped[module] = (module.__dict__.get("forward"), had_instance_forward)

        @functools.wraps(original)
        def forward(*args, **kwargs):
            return fn(original, *args, **kwargs)

        module.forward = forward
        setattr(module, _OWNER, (self, getattr(owner, "name", "a forecache handle")))
        return original

    def unwrap(self, module: nn.Module) -> None:
        saved, had = self._wrapped.pop(module, (None, False))
        if had:
            module.forward = saved
        else:
            module.__dict__.pop("forward", None)
        module.__dict__.pop(_OWNER, None)

    def _unwrap_all(self) -> None:
        for module in list(self._wrapped):
            self.unwrap(module)
        if self._scheduler is not None and "set_timesteps" in self._scheduler.__dict__:
            del self._scheduler.set_timesteps

    def remove(self) -> None:
        """Restore the exact original behaviour and free the cache."""
        self._unwrap_all()
        for site in self.sites:
            site.reset()
        self.removed = True

    # -- the clock -------------------------------------------------------------------------------
    def step(self, t: float | torch.Tensor, call_times: Sequence[float] | None = None) -> None:
        """Explicit clock for samplers whose model calls carry no timestep: call once per step,
        before the step's model calls (each call within a step is one branch, with a cache of its
        own: CFG's cond and uncond, or the stages of a multi-stage solver).

        ``call_times`` gives the time coordinate of each call of the step, in call order, when the
        calls evaluate the model at different times (Heun's second call at the next grid point);
        forecasts of each call then use its real times. Calls past the list, or all calls without
        it, are at ``t``.
        """
        self._explicit = True
        self._calls_in_step = 0
        self._call_times = None if call_times is None else tuple(_scalar_time(c) for c in call_times)
        tick = self.clock.tick(_scalar_time(t))
        if tick.new_generation:
            self._new_generation()

    def reset(self) -> None:
        """Start a new generation at the next call (states are cleared then)."""
        self.clock.force_new_generation()

    def set_schedule(self, timesteps: Sequence[float] | torch.Tensor) -> None:
        """Tell the handle the time coordinates of the coming generation (the values the model
        will receive), for triggers that need the step count (cool-down, retention)."""
        self._schedule = tuple(float(x) for x in torch.as_tensor(timesteps).flatten().tolist())
        self._scheduler_times = None
        self.reset()

    def _hook_scheduler(self, scheduler: Any) -> None:
        original = scheduler.set_timesteps

        @functools.wraps(original)  # keeps the signature diffusers inspects for sigmas=/timesteps=
        def set_timesteps(*args, **kwargs):
            out = original(*args, **kwargs)
            self._scheduler_times = tuple(float(x) for x in scheduler.timesteps.flatten().tolist())
            self._schedule = None
            self.reset()
            return out

        scheduler.set_timesteps = set_timesteps

    def _new_generation(self) -> None:
        for site in self.sites:
            site.reset()
        self._stats.generations += 1

    def _root_call(self, original: Callable, *args, **kwargs):
        if self._ctx is not None:  # a re-entrant call (e.g. a guidance model calling itself)
            return original(*args, **kwargs)
        model = self.model
        if self._explicit:
            branch = self._calls_in_step
            self._calls_in_step += 1
            t = self.clock._t
            if t is None:
                raise RuntimeError("handle.step(t) has not been called for this generation")
            if self._call_times is not None and branch < len(self._call_times):
                t = self._call_times[branch]
        else:
            raw = self.adapter.timestep(model, args, kwargs)
            if raw is None:
                raise ValueError(
                    f"{type(model).__name__} was called without a timestep the adapter can read "
                    f"(looked for {self.adapter.timestep_args}); call handle.step(t) before each step"
                )
            tick = self.clock.tick(_scalar_time(raw))
            if tick.new_generation:
                self._new_generation()
            branch, t = tick.branch, tick.t
        batch = self.adapter.batch_size(model, args, kwargs)
        self._ctx = CallContext(
            self.clock.generation, self.clock.step, branch, t, batch, self._timesteps(t)
        )
        self._fired = False
        key = self.model_key(args, kwargs)
        call = original
        for site in reversed(self._root_sites):
            call = functools.partial(site.intercept, call)
        try:
            out = self.meter.run(key, batch, lambda: call(*args, **kwargs))
            if self._checks:
                out = self._settle(key, batch, call, args, kwargs, out)
        finally:
            self._ctx = None
            self._checks.clear()
            self.recomputing = False
        self._stats.calls += 1
        self._stats.flops_full += (self.meter.per_row(key) or 0.0) * batch
        self._stats.peak_cache_bytes = max(self._stats.peak_cache_bytes, self.storage.peak_bytes)
        if not self._fired:
            names = ", ".join(s.name for s in self.sites[:4])
            raise RuntimeError(
                f"forecache: {type(model).__name__} ran a whole call without reaching any cached "
                f"site ({names}): the adapter's blocks are not the ones this forward runs. "
                "Register the right adapter (forecache.core.adapters.diffusers.register) or pass adapter="
            )
        return out

    def check_finite(self, site: Site, ctx: CallContext, r: int, value: tuple[torch.Tensor, ...]) -> None:
        """Queue a forecast's finiteness, as a device tensor: checked once per model call."""
        flag = torch.stack([torch.isfinite(p).all() for p in value]).all()
        self._checks.append((site, ctx, r, flag))

    def _settle(self, key, batch: int, call: Callable, args: tuple, kwargs: dict, out: Any) -> Any:
        """One synchronisation for all forecasts of the call; if any had NaN/Inf, the whole step
        is computed again with every site computing, and the bad forecasts are recorded."""
        flags = torch.stack([c[3].to("cpu") for c in self._checks]).tolist()
        bad = [c for c, ok in zip(self._checks, flags) if not ok]
        self._checks.clear()
        if not bad:
            return out
        for site, ctx, r, _ in bad:
            self.record(site, ctx, r, "nonfinite", None)
        self.recomputing = True
        out = call(*args, **kwargs)
        self._stats.flops_extra += (self.meter.per_row(key) or 0.0) * batch
        return out

    @staticmethod
    def model_key(args: tuple, kwargs: dict) -> tuple:
        """The FLOP-meter key of a whole model call (input shapes without the batch)."""
        return ("__model__", _shapes(args, kwargs))

    def _timesteps(self, t: float) -> tuple[float, ...] | None:
        if self._schedule is not None:
            return self._schedule
        ts = self._scheduler_times
        if ts is None or self.clock.step != 0 or not ts or ts[0] == 0:
            return self._schedule
        # pipelines may pass the scheduler's timesteps rescaled (Flux divides by 1000): map the
        # schedule to the model's units by the first step, which both sides know
        scale = t / ts[0]
        self._schedule = tuple(x * scale for x in ts)
        return self._schedule

    def on_rows(self, ctx: CallContext, idx: torch.Tensor, run: Callable[[], Any]) -> Any:
        """``run()``, a call of the model on rows ``idx`` of ``ctx``'s batch, with the context of those
        rows: sites inside see a batch of ``len(idx)`` rows and keep each row's history under its
        row of the whole batch."""
        self._ctx = dataclasses.replace(ctx, batch=len(idx), rows=tuple(ctx.row_of(int(i)) for i in idx))
        try:
            return run()
        finally:
            self._ctx = ctx

    def context_for(self, site: Site) -> CallContext:
        if self._ctx is None:
            raise RuntimeError(
                f"site {site.name} ran outside a call of the model the handle was applied to "
                f"({type(self.model).__name__}); apply the policy to the model that is called"
            )
        self._fired = True
        return self._ctx

    # -- accounting ------------------------------------------------------------------------------
    def record(
        self, site: Site, ctx: CallContext, r: int, action: str, metric: float | None, note: str | None = None
    ) -> None:
        d = Decision(ctx.generation, ctx.step, ctx.branch, ctx.row_of(r), site.name, ctx.t, action, metric, note)
        self._trace.append(d)
        s = self._stats.sites[site.name]
        if action in ("rejected", "nonfinite", "guarded"):  # a cached row that was computed after all
            s["cached"] -= 1
            if action == "rejected":
                self._stats.rejected_forecasts += 1
            elif action == "guarded":
                self._stats.guarded_forecasts += 1
                log.info("forecache: %s vetoed the forecast at step %d row %d (%s); computed", site.name, ctx.step, r, note)
            else:
                self._stats.nonfinite_recomputes += 1
                log.warning("forecache: non-finite forecast at %s step %d row %d; step recomputed", site.name, ctx.step, r)
            return
        s["rows"] += 1
        s["cached"] += 0 if d.computed else 1

    def skipped(self, key, rows: int) -> None:
        per_row = self.meter.per_row(key)
        if per_row is None:
            if not self.meter.enabled:
                return
            log.warning("forecache: no FLOP count yet for %s; its skip is not counted in stats()", key[:2])
            return
        self._stats.flops_skipped += per_row * rows

    def extra(self, key, rows: int) -> None:
        self._stats.flops_extra += (self.meter.per_row(key) or 0.0) * rows

    @staticmethod
    def reduce(metric: float) -> float:
        return distributed.mean(metric)

    # -- telemetry -------------------------------------------------------------------------------
    def stats(self) -> Stats:
        """Compute ratio (FLOPs executed over uncached FLOPs), per-site hit rate, peak cache bytes."""
        self._stats.peak_cache_bytes = max(self._stats.peak_cache_bytes, self.storage.peak_bytes)
        return self._stats

    def trace(self) -> Trace:
        """Every decision (generation, step, branch, row, site, t, action, metric); ``.to_json()``."""
        return self._trace

    def clear_telemetry(self) -> None:
        self._stats = Stats(flops_counted=self.meter.enabled)
        self._trace = Trace()
        self.storage.reset_peak()

    def __enter__(self) -> CacheHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"CacheHandle({self.policy.name}, {type(self.model).__name__}, {len(self.sites)} sites)"


def _scalar_time(t) -> float:
    if torch.is_tensor(t):
        flat = t.detach().flatten()
        if flat.numel() == 0:
            raise ValueError("the timestep tensor is empty")
        if flat.numel() > 1 and not bool((flat == flat[0]).all()):
            raise NotImplementedError(
                "rows of one call carry different timesteps; forecache needs one time per call "
                "(split the batch, or call handle.step(t) per group)"
            )
        return float(flat[0])
    return float(t)


def _shapes(args: tuple, kwargs: dict) -> tuple:
    def one(v):
        return tuple(v.shape[1:]) if torch.is_tensor(v) and v.dim() > 0 else None

    return tuple(one(a) for a in args) + tuple((k, one(v)) for k, v in sorted(kwargs.items()))
