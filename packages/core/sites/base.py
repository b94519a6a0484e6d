"""A site is one place whose computation is cached: a block span, a submodule, a CFG branch."""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..forecasters.base import Forecaster
from ..history import RowHistory, forecast_together, record_together
from ..triggers.base import Observation, Trigger

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
    index: int = -1
    """Index of this step in the whole generation, across segments (what histories count; -1 when
    made: ``step``)."""
    noise: float | None = None
    """The adapter's noise level of ``t`` (1 at pure noise, 0 at the data)."""
    recompute: bool = False
    """True while rows whose forecast was not finite run again: every site computes them."""
    time: Any = None
    """The timestep as the model received it, when it is more than a scalar (per-frame ``[B, F]``)."""

    def __post_init__(self) -> None:
        if self.index < 0:
            self.index = self.step

    def row_of(self, r: int) -> int:
        return r if self.rows is None else self.rows[r]


def _stack(values: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    """Per-row forecasts (a tuple of parts each, batch 1) as each part stacked over the rows."""
    return values[0] if len(values) == 1 else tuple([torch.cat(c, dim=0) for c in zip(*values)])


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
    hist: RowHistory | None = None


class Plans(list):
    """The decisions of one site call, a :class:`RowPlan` per row, with what sites ask of them as a
    whole: which rows compute, and the forecasts of the others stacked in row order."""

    forecast: tuple[torch.Tensor, ...] | None = None
    """Each forecast part, stacked over the rows that do not compute (``None``: every row computes)."""
    computing: int = 0
    """How many rows compute."""

    def rows(self, compute: bool) -> torch.Tensor:
        """Indices of the rows that compute (``True``) or take the forecast (``False``)."""
        return torch.tensor([i for i, p in enumerate(self) if p.compute is compute], dtype=torch.long)


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

    #: True for a site on the whole model call: it is installed on no module, and the handle routes
    #: every model call through its ``intercept(call, *args, **kwargs)`` (``call`` runs the model)
    root: bool = False
    #: True when a row only runs together with another (a batched CFG pair): a non-finite forecast
    #: then recomputes the whole batch instead of its own row
    pairs_rows: bool = False

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
        self._watches = type(trigger).observe is not Trigger.observe  # False: observe() would do nothing
        self._measures_rows = type(trigger).measure_rows is not Trigger.measure_rows

    # -- lifecycle -------------------------------------------------------------------------------
    def install(self) -> None:
        raise NotImplementedError

    def reset(self) -> None:
        for h in self._rows.values():
            h.clear()
        self._rows.clear()

    def telemetry(self) -> dict | None:
        """What this site reports beyond the decisions in the trace (``handle.stats().details``);
        ``None``: nothing."""
        return None

    def history(self, ctx: CallContext, r: int) -> RowHistory:
        """Row ``r``'s history at this site, under ``key(ctx, r)`` (made on first use)."""
        k = self.key(ctx, r)
        hist = self._rows.get(k)
        if hist is None:
            hist = self._rows[k] = self._new_history()
        return hist

    def _new_history(self) -> RowHistory:
        return RowHistory(self.trigger.new_state(), self.runtime.storage, self.forecaster.max_history)

    # -- decisions -------------------------------------------------------------------------------
    def plan(
        self,
        ctx: CallContext,
        like: torch.Tensor,
        signal: torch.Tensor | None = None,
        rows: range | None = None,
        vet: Callable[[list[int], list[tuple[torch.Tensor, ...]]], Sequence[str | None]] | None = None,
    ) -> Plans:
        """Ask the trigger for every row and forecast the rows that will not compute.

        Forecasts take the dtype and device of ``like``. Their finiteness is checked once per model
        call, not here (a check here would synchronise the GPU at every site): a NaN/Inf forecast
        makes the handle compute that row again, with every site computing it.

        ``vet(rows, forecasts)``, when given, sees every forecast of the call at once (the row
        indices, and each forecast part stacked over those rows in order) and returns one reason per
        row, ``None`` to accept: a row with a reason computes instead, recorded as ``guarded`` with
        the reason (a domain's plausibility check).
        """
        rows = range(ctx.batch) if rows is None else rows
        position, step, t, timesteps, runtime = ctx.index, ctx.step, ctx.t, ctx.timesteps, self.runtime
        record, trigger, forecaster, reduce = runtime.record, self.trigger, self.forecaster, runtime.reducer
        decides = not ctx.recompute and (self.window is None or self.window[0] <= ctx.noise <= self.window[1])
        need, found, key, branch, mapped = forecaster.min_history, self._rows, self.key, ctx.branch, ctx.rows
        plans = Plans()
        for r in rows:  # each row's history and observation; every row computes unless decided below
            # by_row inlined: the default key, without a call per row
            k = (branch, r if mapped is None else mapped[r]) if key is by_row else key(ctx, r)
            hist = found.get(k)
            if hist is None:
                hist = found[k] = self._new_history()
            last = hist.last_compute_step
            obs = Observation(step, t, timesteps, None if last is None else position - last,
                              None if signal is None else signal[r : r + 1])
            plans.append(RowPlan(True, obs, None, hist))
        if not decides:  # recomputing a bad forecast (not recorded again), or outside the window
            if not ctx.recompute:
                for r in rows:
                    record(self, ctx, r, "window")
            plans.computing = len(plans)
            return plans
        forecast: list[int] = []  # indices into plans (and rows) of the rows forecast
        # a trigger that reduces tensors measures every row in one batched reduction; the others are
        # asked row by row below (the default measure_rows, inlined: this runs at every site call)
        metrics = trigger.measure_rows([p.hist.trigger_state for p in plans], [p.obs for p in plans]) \
            if self._measures_rows and len(plans) > 1 else None
        for i, plan in enumerate(plans):
            r, state = rows[i], plan.hist.trigger_state
            metric = trigger.measure(state, plan.obs) if metrics is None else metrics[i]
            if metric is not None and reduce is not None:
                metric = reduce(metric)
            if metric is not None and not math.isfinite(metric):  # NaN >= threshold is False: never a skip
                record(self, ctx, r, "compute", metric, note="non-finite metric")
            elif len(plan.hist.times) < need:
                record(self, ctx, r, "warmup", metric)
            elif trigger.decide(state, plan.obs, metric):
                record(self, ctx, r, "compute", metric)
            else:
                plan.compute = False
                record(self, ctx, r, "cached", metric)
                forecast.append(i)
        stacked = None
        if len(forecast) == 1:
            plan = plans[forecast[0]]
            plan.value = stacked = plan.hist.forecast(forecaster, t, like.dtype, like.device, position)
        elif forecast:
            stacked = self._forecast(plans, forecast, t, like, position)
        if forecast and vet is not None:
            if stacked is None:
                stacked = _stack([plans[i].value for i in forecast])
            reasons = list(vet([rows[i] for i in forecast], stacked))
            if len(reasons) != len(forecast):
                raise ValueError(
                    f"site {self.name}: the guard returned {len(reasons)} reasons for {len(forecast)} "
                    "forecast rows; return one reason (or None) per row"
                )
            for i, reason in zip(forecast, reasons):
                if reason is not None:
                    plans[i].compute, plans[i].value = True, None
                    record(self, ctx, rows[i], "guarded", None, note=str(reason))
                    stacked = None
            forecast = [i for i in forecast if not plans[i].compute]
        plans.computing = len(plans) - len(forecast)
        if forecast:
            if stacked is None:
                stacked = _stack([plans[i].value for i in forecast])
            plans.forecast = stacked
            runtime.check_finite(self, ctx, [rows[i] for i in forecast], plans.forecast)
        return plans

    def _forecast(self, plans: Plans, forecast: list[int], t: float, like: torch.Tensor, position: int):
        """Fill the forecasts of rows ``forecast`` (indices into ``plans``); rows whose histories hold
        the same computed times are forecast together. Returns every part stacked over those rows in
        order when one prediction made them all, else ``None``."""
        forecaster = self.forecaster
        if forecaster.rowwise and len(forecast) > 1:
            groups: dict[tuple, list[int]] = {}
            for i in forecast:
                groups.setdefault(tuple(plans[i].hist.times), []).append(i)
            batches = list(groups.values())
        else:
            batches = [[i] for i in forecast]
        for members in batches:
            parts = forecast_together([plans[i].hist for i in members], forecaster, t, like.dtype, like.device, position)
            if len(members) == 1:
                plans[members[0]].value = parts
            else:  # each row's view of the stacked parts: one split per part, not one slice per row and part
                for i, value in zip(members, zip(*[p.split(1) for p in parts])):
                    plans[i].value = value
        return parts if len(batches) == 1 else None

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
        rows = range(ctx.batch) if rows is None else rows
        if cached is not None:
            hists, where = [], []
            for r, plan in zip(rows, plans):
                if plan.compute:
                    hists.append(plan.hist)
                    where.append(r)
            if hists:
                record_together(hists, where, ctx.index, ctx.t, cached, self.runtime.storage)
        if self._watches:
            observe = self.trigger.observe
            for r, plan in zip(rows, plans):
                out = outputs[0][r : r + 1] if (plan.compute and outputs is not None) else None
                observe(plan.hist.trigger_state, plan.obs, plan.compute, None if inputs is None else inputs[r : r + 1], out)
