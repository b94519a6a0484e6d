"""A span of consecutive blocks whose middle is cached as one residual.

The span is ``probe + region + tail`` blocks. The probe blocks always run, and what they change
is the signal of probe-residual triggers (FBCache, DBCache's Fn). The region is cached: a row that
skips it gets ``region input + forecast residual``, which keeps the information of the current
input (Δ-DiT's Δ-cache) and costs one feature per row whatever the depth (FreqCa's cumulative
residual feature, CRF). The tail blocks always run and correct what the region approximated
(DBCache's Bn); for forecast-then-verify triggers (SpeCa) they are also the verifier.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from functools import partial
from operator import attrgetter, itemgetter
from typing import TYPE_CHECKING, Any

import torch

from ..adapters.base import Adapter, Block
from ..history import RowHistory
from ..rows import put_rows, row, slice_call
from .base import CallContext, Plans, RowPlan, Site

if TYPE_CHECKING:
    from ..runtime import Runtime

# a key's shapes without the batch, read without a Python frame per tensor (the key is made per block call)
_SHAPE, _TRAILING = attrgetter("shape"), itemgetter(slice(1, None))


@dataclass
class _Pass:
    """What one model call's trip through the span has seen so far."""

    ctx: CallContext
    span_in: tuple[torch.Tensor, ...] = ()
    signal: torch.Tensor | None = None
    region_in: tuple[torch.Tensor, ...] = ()
    plans: list[RowPlan] = field(default_factory=list)
    calls: dict[int, tuple[tuple, dict]] = field(default_factory=dict)  # each block's (args, kwargs)
    residual: tuple[torch.Tensor, ...] = ()
    region_out: tuple[torch.Tensor, ...] = ()


class SpanSite(Site):
    def __init__(
        self,
        name: str,
        runtime: Runtime,
        adapter: Adapter,
        blocks: list[Block],
        trigger,
        forecaster,
        probe: int = 0,
        tail: int = 0,
        window: tuple[float, float] | None = None,
        key=None,
    ) -> None:
        super().__init__(name, runtime, trigger, forecaster, window, key)
        if probe < 0 or tail < 0:
            raise ValueError(f"probe={probe} and tail={tail} must be >= 0 (blocks that always run)")
        if probe + tail >= len(blocks):
            raise ValueError(
                f"probe={probe} + tail={tail} blocks leave nothing to cache in a span of {len(blocks)} "
                "blocks; lower probe (Fn) or tail (Bn)"
            )
        if trigger.signal == "probe_residual" and probe < 1:
            raise ValueError(
                f"{type(trigger).__name__} compares the probe blocks' residual, but probe=0; set probe (Fn) >= 1"
            )
        if trigger.verifies and tail < 1:
            raise ValueError(
                f"{type(trigger).__name__} verifies forecasts on the tail blocks, but tail=0; set tail >= 1"
            )
        self.adapter = adapter
        self.blocks = blocks
        self.r0, self.r1 = probe, len(blocks) - tail
        # a block may drop a stream (SD3's last block): outputs are matched to inputs by name
        names = blocks[self.r0].io.state
        self._region_at = [names.index(n) for n in blocks[self.r1 - 1].io.state]
        self._span_at = [names.index(n) for n in blocks[-1].io.state]
        self._orig: list[Any] = []
        self._pass: _Pass | None = None
        self._verify_rows: dict[tuple[int, int], Any] = {}

    def install(self) -> None:
        self._orig = [self.runtime.wrap(b.module, partial(self._call, i), self) for i, b in enumerate(self.blocks)]
        self._signatures = [inspect.signature(f) for f in self._orig]
        self._where = [b.io.locate(s) for b, s in zip(self.blocks, self._signatures)]

    def reset(self) -> None:
        super().reset()
        for h in self._verify_rows.values():
            h.clear()
        self._verify_rows.clear()
        self._pass = None

    # -- the per-block wrapper -------------------------------------------------------------------
    def _call(self, i: int, original, *args, **kwargs):
        ctx = self.runtime.context(self)
        if ctx is None:
            return original(*args, **kwargs)
        block = self.blocks[i]
        io = block.io
        where = self._where[i]
        state = None if where is None else io.find_state(where, args, kwargs)
        if state is None:  # a state argument left to its default, or a signature that hides them
            state = io.state_in(self._bind(i, args, kwargs))
        if i == 0:
            self._pass = _Pass(ctx, span_in=state)
            if self.trigger.signal == "modulated_input":
                signal = self.adapter.modulated_input(block, args, kwargs)
                self._pass.signal = signal if signal is not None else self._pass.span_in[0]
        p = self._pass
        if p is None or p.ctx is not ctx:
            raise RuntimeError(
                f"block {block.name} of site {self.name} ran without block 0 of its span in the same "
                "model call; the adapter's block order does not match the model's forward"
            )
        p.calls[i] = (args, kwargs)
        if i < self.r0 or i >= self.r1:
            out = self._run(i, args, kwargs, state, None)
            if i == len(self.blocks) - 1 and self.trigger.verifies:
                out = self._verify(io.state_out(out), out)
            return out
        if i == self.r0:
            self._plan(p, state)
        out = self._run(i, args, kwargs, state, p.plans)
        if i == self.r1 - 1:
            out = io.make_output(self._finish_region(p, io.state_out(out)))
        return out

    def _plan(self, p: _Pass, region_in: tuple[torch.Tensor, ...]) -> None:
        wanted, signal = self.trigger.signal, None
        if wanted == "probe_residual":
            signal = region_in[0] - p.span_in[0]
        elif wanted == "input":
            signal = region_in[0]
        elif wanted == "modulated_input":
            signal = p.signal
        p.region_in = region_in
        p.plans = self.plan(p.ctx, region_in[0], signal)

    def _finish_region(self, p: _Pass, out: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        region_in = [p.region_in[i] for i in self._region_at]
        residual = tuple([o - x for o, x in zip(out, region_in)])
        plans, final = p.plans, out
        if plans.forecast is not None:  # a skipped row leaves the region as its input plus the forecast residual
            if plans.computing == 0:
                final = tuple([x + f for x, f in zip(region_in, plans.forecast)])
            else:
                skip = plans.rows(False)
                final = tuple([put_rows(o, skip, x[skip] + f) for o, x, f in zip(out, region_in, plans.forecast)])
        if not self.trigger.verifies:
            self.observe(p.ctx, p.plans, p.region_in[0], out, residual)
        else:
            # the trigger sees the step once verification has settled which rows really computed
            p.residual, p.region_out = residual, out
        return tuple(final)

    # -- running blocks on some rows ------------------------------------------------------------
    def _bind(self, i: int, args: tuple, kwargs: dict):
        return self.blocks[i].io.bind(self._orig[i], args, kwargs, self._signatures[i])

    def _run(self, i: int, args: tuple, kwargs: dict, state: tuple[torch.Tensor, ...], plans: Plans | None):
        io = self.blocks[i].io
        batch = self._pass.ctx.batch
        key = (self.name, i, tuple(map(_TRAILING, map(_SHAPE, state))))
        runtime = self.runtime
        if plans is None or plans.forecast is None:
            return runtime.run(key, batch, lambda: self._orig[i](*args, **kwargs))
        runtime.skipped(key, batch - plans.computing)
        if plans.computing == 0:
            return io.make_output(state)
        idx = plans.rows(True)
        rows_args, rows_kwargs = slice_call(self._bind(i, args, kwargs), idx, batch, io)
        part = io.state_out(runtime.run(key, len(idx), lambda: self._orig[i](*rows_args, **rows_kwargs)))
        return io.make_output(tuple([put_rows(s, idx, q) for s, q in zip(state, part)]))

    def _rerun(self, idx: torch.Tensor, first: int, last: int, state: tuple[torch.Tensor, ...]):
        """Rows ``idx`` through blocks ``first..last-1`` again, from ``state`` (batch-sized); the
        blocks' other arguments are the ones this call already gave them."""
        p = self._pass
        named = dict(zip(self.blocks[first].io.state, state))
        for j in range(first, last):
            io = self.blocks[j].io
            bound = self._bind(j, *p.calls[j])
            rebound = type(bound)(bound.signature, {**bound.arguments, **{n: named[n] for n in io.state}})
            args, kwargs = slice_call(rebound, idx, p.ctx.batch, io)
            part = io.state_out(self._orig[j](*args, **kwargs))
            key = (self.name, j, tuple([named[n].shape[1:] for n in io.state]))
            self.runtime.extra(key, len(idx))
            named = {n: put_rows(named[n], idx, q) for n, q in zip(io.state, part)}
        return tuple(named.values())

    # -- forecast-then-verify (SpeCa) -----------------------------------------------------------
    def _verify(self, span_out: tuple[torch.Tensor, ...], out: Any):
        """Compare each forecast row's real tail output with the forecast of it; roll back the rows
        whose relative error the trigger rejects by recomputing region and tail for them."""
        p = self._pass
        ctx, plans = p.ctx, p.plans
        region_out, residual = p.region_out, p.residual
        rejected = []
        for r, plan in enumerate(plans):
            if plan.compute:
                continue
            hist = self._verify_history(ctx, r)
            if not hist.ready(self.forecaster):
                rejected.append(r)
                self.runtime.record(self, ctx, r, "rejected", None)
                continue
            pred = hist.forecast(self.forecaster, ctx.t, span_out[0].dtype, span_out[0].device, ctx.index)[0]
            real = row(span_out[0], r)
            pred = row(p.region_in[0], r) + pred
            err = float((pred - real).float().norm() / real.float().norm().clamp_min(1e-12))
            err = self.runtime.reduce(err)
            if not self.trigger.verify(self.history(ctx, r).trigger_state, plan.obs, err):
                rejected.append(r)
                self.runtime.record(self, ctx, r, "rejected", err)
        if rejected:
            idx = torch.tensor(rejected)
            io = self.blocks[-1].io
            region_state = self._rerun(idx, self.r0, self.r1, p.region_in)
            tail_state = self._rerun(idx, self.r1, len(self.blocks), region_state)
            region_in = tuple(p.region_in[i] for i in self._region_at)
            residual = tuple(put_rows(res, idx, row_sel(rs, idx) - row_sel(x, idx)) for res, rs, x in zip(residual, region_state, region_in))
            region_out = tuple(put_rows(a, idx, row_sel(b, idx)) for a, b in zip(region_out, region_state))
            span_out = tuple(put_rows(a, idx, row_sel(b, idx)) for a, b in zip(span_out, tail_state))
            for r in rejected:
                plans[r].compute = True
            out = io.make_output(span_out)
        self.observe(ctx, plans, p.region_in[0], region_out, residual)
        for r, plan in enumerate(plans):
            if plan.compute:
                full = tuple(row(o, r) - row(p.region_in[i], r) for o, i in zip(span_out, self._span_at))
                self._verify_history(ctx, r).record(ctx.index, ctx.t, full)
        return out

    def _verify_history(self, ctx: CallContext, r: int) -> RowHistory:
        key = self.key(ctx, r)
        if key not in self._verify_rows:
            self._verify_rows[key] = RowHistory({}, self.runtime.storage, self.forecaster.max_history)
        return self._verify_rows[key]


def row_sel(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return x.index_select(0, idx.to(x.device))
