"""The site contract: everything a site may use of the handle that built it.

A site is written against :class:`Runtime` alone, handed to it when it is built
(``Selector.build(runtime, model, adapter, policy)``), never against the handle:

- ``context(site)``: the model call in progress (:class:`CallContext`: generation, segment, step,
  branch, time, noise level, batch), or ``None`` for a call the site must pass through untouched;
  ``on_rows(ctx, idx, run)`` runs part of the model on some rows with their context;
- ``record(site, ctx, row, action, metric)``: a decision, into the trace and the stats;
  ``check_finite(site, ctx, rows, forecast)`` queues the forecasts' health check;
- ``run(key, rows, fn)``: run a computation, its FLOPs counted once per key; ``skipped`` and
  ``extra`` account rows not computed or computed again (``flops=`` gives an analytic per-row
  count where a varying token subset makes counting by shape impossible);
- ``storage``: where tensors kept across steps live (dtype, byte budget, peak bytes);
- ``reduce(metric)``: a metric averaged across ranks, so every rank decides alike (``reducer`` is
  ``reduce`` under torch.distributed and ``None`` otherwise, set per model call);
- ``wrap(module, fn, site)`` / ``unwrap(module)``: route a module's forward through the site.

``adapter`` and ``model`` are there to read (time unit, block conventions, argument names).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from . import distributed
from .accounting import Accounts
from .storage import Storage
from .wrapping import Wrapping

if TYPE_CHECKING:
    from .adapters.base import Adapter
    from .sites.base import CallContext, Site


class Runtime(Accounts):
    """The contract between one handle and its sites (see the module docstring). Its accounting
    half (``record``, ``check_finite``, ``run``, ``skipped``, ``extra``) is
    :class:`~forecache.core.accounting.Accounts`."""

    def __init__(self, model: nn.Module, adapter: Adapter, storage: Storage, count_flops: bool) -> None:
        super().__init__(storage, count_flops)
        self.model = model
        self.adapter = adapter
        self.wrapping = Wrapping()
        self.fired = False
        #: ``reduce`` when the metric must be averaged across ranks, else ``None`` (no call at all)
        self.reducer: Callable[[float], float] | None = None
        self._ctx: CallContext | None = None
        self._passthrough = False

    # -- the call in progress --------------------------------------------------------------------
    def context(self, site: Site) -> CallContext | None:
        """The context of the model call in progress; ``None`` when the site must run its module
        as is (a must-compute call, which writes state and is no step)."""
        ctx = self._ctx
        if ctx is None:
            if self._passthrough:
                return None
            raise RuntimeError(
                f"site {site.name} ran outside a call of the model the handle was applied to "
                f"({type(self.model).__name__}); apply the policy to the model that is called"
            )
        self.fired = True
        return ctx

    def on_rows(self, ctx: CallContext, idx: torch.Tensor, run: Callable[[], Any]) -> Any:
        """``run()``, a call of the model on rows ``idx`` of ``ctx``'s batch, with the context of
        those rows: sites inside see a batch of ``len(idx)`` rows and keep each row's history under
        its row of the whole batch."""
        previous = self._ctx
        self._ctx = dataclasses.replace(ctx, batch=len(idx), rows=tuple(ctx.row_of(int(i)) for i in idx))
        try:
            return run()
        finally:
            self._ctx = previous

    def enter(self, ctx: CallContext | None, passthrough: bool = False) -> None:
        """The handle opens (``ctx``) or closes (``None``) a model call."""
        self._ctx = ctx
        self._passthrough = passthrough
        if ctx is not None:
            self.fired = False
            self.reducer = distributed.mean if distributed.active() else None

    @property
    def in_call(self) -> bool:
        return self._ctx is not None or self._passthrough

    # -- ranks -----------------------------------------------------------------------------------
    @staticmethod
    def reduce(metric: float) -> float:
        """``metric`` averaged across torch.distributed ranks (itself when not distributed)."""
        return distributed.mean(metric)

    # -- forwards --------------------------------------------------------------------------------
    def wrap(self, module: nn.Module, fn: Callable, site: Site) -> Callable:
        """Route ``module.forward`` through ``fn(original, *args, **kwargs)``; returns the original."""
        return self.wrapping.wrap(module, fn, getattr(site, "name", "a forecache handle"))

    def unwrap(self, module: nn.Module) -> None:
        self.wrapping.unwrap(module)


def model_key(args: tuple, kwargs: dict) -> tuple:
    """The FLOP-meter key of a whole model call: its input shapes without the batch."""

    shapes = [v.shape[1:] if torch.is_tensor(v) and v.dim() > 0 else None for v in args]
    shapes += [(k, v.shape[1:] if torch.is_tensor(v) and v.dim() > 0 else None) for k, v in sorted(kwargs.items())]
    return ("__model__", tuple(shapes))
