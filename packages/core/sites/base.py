"""A site is one place whose computation is cached: a block span, a submodule, a CFG branch."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..forecasters.base import Forecaster
from ..history import RowHistory
from ..rows import row
from ..triggers.base import Observation, Trigger, ask

if TYPE_CHECKING:
    from ..runtime import Runtime


@dataclass
class CallContext:
    """The clock's reading for the model call in progress."""

    generation: int
    step: int
    """Index of this step in its segment (in the generation when there are no segments)."""
    branch: int
    t: float
    batch: int
    timesteps: tuple[float, ...] | None
    rows: tuple[int, ...] | None = None
    """Row ``r`` of this call is row ``rows[r]`` of the model call's batch; ``None``: the same row.
    Set while a root site (``ModelOutput``) runs the model on the rows it does not forecast, so
    that inner sites keep each row's history under its row of the whole batch."""
    segment: Hashable = 0
    """The segment of the generation (a dLLM block, a world-model chunk, an edit phase, a view)."""
    index: int | None = None
    """Index of this step in the whole generation, across segments (``None``: ``step``)."""
    noise: float | None = None
    """The adapter's noise level of ``t`` (1 at pure noise, 0 at the data)."""
    recompute: bool = False
    """True while rows whose forecast was not finite run again: every site computes them."""
    time: Any = None
    """The timestep as the model received it, when it is more than a scalar (per-frame ``[B, F]``)."""

    def row_of(self, r: int) -> int:
        return r if self.rows is None else self.rows[r]

    @property
    def position(self) -> int:
        """The step's index in the generation (what histories count)."""
        return self.step if self.index is None else self.index


def by_row(ctx: CallContext, r: int) -> Hashable:
    """The default history key: each CFG branch and batch row has its own history."""
    return (ctx.branch, ctx.row_of(r))


def by_segment(ctx: CallContext, r: int) -> Hashable:
    """A history per segment too: each chunk (block, view) is forecast from its own steps only."""
    return (ctx.segment, ctx.branch, ctx.row_of(r))


@dataclass
class RowPlan:
    """One row's decision at one step: compute it, or use ``value`` (the forecast)."""

    compute: bool
    obs: Observation
    value: tuple[torch.Tensor, ...] | None = None


class Site:
    """Common machinery of every site: per (branch, row) histories, asking the trigger, forecasting,
    the NaN/Inf guard, and reporting each decision to the handle.

    ``window`` restricts caching to steps whose noise level (``adapter.noise_level(t)``: 1 at pure
    noise, 0 at the data) lies in ``[lo, hi]``; outside it the site computes (Δ-DiT's
    stage-dependent block ranges, FasterCache's timestep ranges).

    ``key(ctx, row)`` names the history a row's decision reads and writes: :func:`by_row` (each
    branch and row) by default, :func:`by_segment` for a history per segment, or any function of
    the context and row returning a hashable (a quantised camera pose and timestep).

    A site sees the handle only through ``runtime``, the contract in :mod:`forecache.core.runtime`.
    """

    def __init__(
        self,
        name: str,
        runtime: Runtime,
        trigger: Trigger,
        forecaster: Forecaster,
        window: tuple[float, float] | None = None,
        key: Callable[[CallContext, int], Hashable] | None = None,
    ) -> None:
        if key is not None and not callable(key):
            raise ValueError(f"key={key!r} is not callable; pass key(ctx, row) -> hashable, e.g. by_segment")
        self.name = name
        self.runtime = runtime
        self.trigger = trigger
        self.forecaster = forecaster
        self.window = window
        self.key = key or by_row
        self._rows: dict[Hashable, RowHistory] = {}

    # -- lifecycle -------------------------------------------------------------------------------
    def install(self) -> None:
        raise NotImplementedError

    def reset(self) -> None:
        for h in self._rows.values():
            h.clear()
        self._rows.clear()

    def history(self, ctx: CallContext, r: int) -> RowHistory:
        key = self.key(ctx, r)
        hist = self._rows.get(key)
        if hist is None:
            hist = self._rows[key] = RowHistory(
                self.trigger.new_state(), self.runtime.storage, self.forecaster.max_history
            )
        return hist

    # -- decisions -------------------------------------------------------------------------------
    def plan(
        self,
        ctx: CallContext,
        like: torch.Tensor,
        signal: torch.Tensor | None = None,
        rows: range | None = None,
        vet: Callable[[list[int], list[tuple[torch.Tensor, ...]]], Sequence[str | None]] | None = None,
    ) -> list[RowPlan]:
        """Ask the trigger for every row and forecast the rows that will not compute.

        Forecasts take the dtype and device of ``like``. Their finiteness is checked once per model
        call, not here (a check here would synchronise the GPU at every site): a NaN/Inf forecast
        makes the handle compute that row again, with every site computing it.

        ``vet(rows, values)``, when given, sees every forecast of the call at once (row indices and
        their forecasts) and returns one reason per row, ``None`` to accept: a row with a reason
        computes instead, recorded as ``guarded`` with the reason (a domain's plausibility check).
        """
        plans: list[RowPlan] = []
        forecast: list[tuple[int, int]] = []  # (index in plans, row) of every forecast row
        if ctx.recompute:  # a forecast of this step was not finite: these rows compute everywhere
            rows = rows if rows is not None else range(ctx.batch)
            return [RowPlan(True, self._observation(ctx, r, signal)) for r in rows]
        level = ctx.noise
        in_window = self.window is None or self.window[0] <= level <= self.window[1]
        for r in rows if rows is not None else range(ctx.batch):
            hist = self.history(ctx, r)
            obs = self._observation(ctx, r, signal)
            if not in_window:
                plans.append(RowPlan(True, obs))
                self.runtime.record(self, ctx, r, "window", None)
                continue
            must = not hist.ready(self.forecaster)
            compute, metric = ask(self.trigger, hist.trigger_state, obs, must, self.runtime.reduce)
            action = "warmup" if must else ("compute" if compute else "cached")
            value = None
            if not compute:
                value = hist.forecast(self.forecaster, ctx.t, like.dtype, like.device, ctx.position)
                forecast.append((len(plans), r))
            plans.append(RowPlan(compute, obs, value))
            self.runtime.record(self, ctx, r, action, metric)
        if forecast and vet is not None:
            reasons = list(vet([r for _, r in forecast], [plans[i].value for i, _ in forecast]))
            if len(reasons) != len(forecast):
                raise ValueError(
                    f"site {self.name}: the guard returned {len(reasons)} reasons for {len(forecast)} "
                    "forecast rows; return one reason (or None) per row"
                )
            for (i, r), reason in zip(forecast, reasons):
                if reason is not None:
                    plans[i].compute, plans[i].value = True, None
                    self.runtime.record(self, ctx, r, "guarded", None, note=str(reason))
        for i, r in forecast:
            if not plans[i].compute:
                self.runtime.check_finite(self, ctx, r, plans[i].value)
        return plans

    def _observation(self, ctx: CallContext, r: int, signal: torch.Tensor | None) -> Observation:
        return Observation(
            step=ctx.step,
            t=ctx.t,
            timesteps=ctx.timesteps,
            since_compute=self.history(ctx, r).since_compute(ctx.position),
            signal=row(signal, r),
        )

    def observe(
        self,
        ctx: CallContext,
        plans: list[RowPlan],
        inputs: torch.Tensor | None,
        outputs: tuple[torch.Tensor, ...] | None,
        cached: tuple[torch.Tensor, ...] | None,
        rows: range | None = None,
    ) -> None:
        """After the step: store what computed rows produced (``cached``: the parts the forecaster
        learns from, e.g. residuals) and let the trigger see every row."""
        for r, plan in zip(rows if rows is not None else range(ctx.batch), plans):
            hist = self.history(ctx, r)
            if plan.compute and cached is not None:
                hist.record(ctx.position, ctx.t, tuple(row(p, r) for p in cached))
            out = row(outputs[0], r) if (plan.compute and outputs is not None) else None
            self.trigger.observe(hist.trigger_state, plan.obs, plan.compute, row(inputs, r), out)
