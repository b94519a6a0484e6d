"""The whole model output as the cached computation, with an optional domain guard on forecasts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..forecasters.base import Forecaster
from ..sites.output import Guard, OutputSite
from ..triggers.base import Trigger
from .base import Selector


@dataclass
class ModelOutput(Selector):
    """Cache and forecast everything the model returns (a tensor, a tuple or a dict of tensors).

    The granularity of caching a whole network evaluation, as AB-Cache's output-level
    extrapolation (arXiv 2504.10540) and molecule generators whose output is a dict of heads.
    ``guard(output, arguments)`` returns one reason or ``None`` per forecast row; a row with a
    reason is computed instead and recorded as ``guarded`` (see ``forecache.core.sites.output``).
    """

    guard: Guard | None = None
    when: Trigger | None = None
    what: Forecaster | None = None
    window: tuple[float, float] | None = None
    key: Callable | None = None

    def validate(self) -> None:
        super().validate()
        if self.guard is not None and not callable(self.guard):
            raise ValueError(
                f"ModelOutput.guard={self.guard!r} is not callable; pass guard(output, arguments) -> "
                "one reason or None per row, or None for no guard"
            )

    def build(self, runtime, model, adapter, policy):
        return [
            OutputSite(
                "output", runtime, self.trigger_for(policy, adapter), self.forecaster_for(policy, adapter),
                window=self.window, guard=self.guard, key=self.key,
            )
        ]

    def describe(self) -> dict:
        out = super().describe()
        if self.guard is not None:
            out["guard"] = getattr(self.guard, "__name__", type(self.guard).__name__)
        return out
