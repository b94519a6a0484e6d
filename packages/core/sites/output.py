"""The whole model output as one cached site: every tensor the model returns is stored and forecast.

This is the coarsest granularity: a skipped row skips the whole network. It fits models that are
cheap to call but called many times, and models whose output is a dict of heads (a molecule
generator's coordinates and type, charge and bond logits): each tensor of the output is a part of
the cached point and is forecast on its own, the non-tensor entries pass through.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..adapters.base import call_arguments
from ..rows import merge_rows, take_rows
from ..runtime import model_key
from .base import CallContext, Site
from .module import flatten, rebuild

if TYPE_CHECKING:
    from ..runtime import Runtime

#: ``guard(output, arguments) -> one reason (str) or None per row``: ``output`` is the forecast of
#: the rows in question rebuilt as the model returns it, ``arguments`` the model call's arguments by
#: name restricted to those rows (so a guard can read a padding mask).
Guard = Callable[[Any, dict[str, Any]], Sequence[str | None]]


class OutputSite(Site):
    """Caches the model's whole output (a root-level site). Rows decide independently: rows that
    compute run the model on those rows only; the others take the forecast.

    ``guard`` (optional) vets the forecasts of each call before they are used; a row it objects to
    is computed instead and the objection is recorded in the trace as ``guarded``.
    """

    root = True

    def __init__(
        self,
        name: str,
        runtime: Runtime,
        trigger,
        forecaster,
        window: tuple[float, float] | None = None,
        guard: Guard | None = None,
        key=None,
    ) -> None:
        super().__init__(name, runtime, trigger, forecaster, window, key)
        if trigger.signal not in (None, "input"):
            raise ValueError(
                f"{type(trigger).__name__} needs the signal {trigger.signal!r}, which a whole-output "
                "site cannot give; use a trigger without a signal (Interval) or one on the input"
            )
        if guard is not None and not callable(guard):
            raise ValueError(f"guard={guard!r} is not callable; pass guard(output, arguments) -> reasons or None")
        self.guard = guard
        self._template: Any = None

    def install(self) -> None:
        """Root-level: the handle routes every model call through :meth:`intercept`."""

    def intercept(self, call: Callable, *args, **kwargs) -> Any:
        ctx = self.runtime.context(self)
        if ctx is None:
            return call(*args, **kwargs)
        like = _first_tensor(args, kwargs)
        vet = None
        if self.guard is not None and self._template is not None:
            vet = lambda rows, forecasts: self._vet(ctx, rows, forecasts, args, kwargs)
        plans = self.plan(ctx, like, like if self.trigger.signal == "input" else None, vet=vet)
        if plans.forecast is None:
            out = call(*args, **kwargs)
            parts, self._template = flatten(out)
            self.observe(ctx, plans, like, parts, parts)
            return out
        forecast = plans.forecast
        self.runtime.skipped(model_key(args, kwargs), len(forecast[0]))
        if plans.computing == 0:
            self.observe(ctx, plans, like, None, None)
            return rebuild(self._template, forecast)
        idx, skip = plans.rows(True), plans.rows(False)
        fresh, self._template = flatten(self.runtime.on_rows(
            ctx, idx, lambda: call(*take_rows(args, idx, ctx.batch), **take_rows(kwargs, idx, ctx.batch))
        ))
        parts = merge_rows(ctx.batch, idx, fresh, skip, forecast)
        self.observe(ctx, plans, like, parts, parts)
        return rebuild(self._template, parts)

    def _vet(self, ctx: CallContext, rows: list[int], forecasts: tuple, args: tuple, kwargs: dict) -> list:
        idx = torch.tensor(rows)
        output = rebuild(self._template, forecasts)
        arguments = call_arguments(self.runtime.model, args, kwargs)
        arguments.pop("self", None)
        reasons = self.guard(output, take_rows(arguments, idx, ctx.batch))
        if reasons is None or isinstance(reasons, str):
            raise ValueError(
                f"site {self.name}: the guard returned {reasons!r}; it must return a list with one "
                "reason (a str) or None per row of the forecast it was given"
            )
        return list(reasons)


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor:
    x = next((v for v in (*args, *kwargs.values()) if torch.is_tensor(v) and v.dim() > 0), None)
    if x is None:
        raise TypeError("the model call has no batched tensor argument; a whole-output site needs one to read the batch")
    return x
