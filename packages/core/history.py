"""What one history of a site keeps across steps: trigger state and the computed points."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .forecasters.base import Forecaster
from .storage import Storage


class RowHistory:
    """The computed points of one history key (by default a batch row) at one site, oldest first,
    plus its trigger state.

    A point is a tuple of tensors (a site's output may have several parts, e.g. image and text
    streams); forecasters predict each part on its own, so the points are kept by part:
    ``parts[c]`` lists part ``c`` of every point, oldest first.
    """

    def __init__(self, trigger_state: dict, storage: Storage, max_points: int) -> None:
        self.trigger_state = trigger_state
        self.storage = storage
        self.max_points = max_points
        self.times: list[float] = []
        self.steps: list[int] = []
        self.parts: list[list[torch.Tensor]] = []
        self.scratch: list[dict] = []
        self.last_compute_step: int | None = None
        self.extra: dict = {}
        self._kept: dict[str, torch.Tensor] = {}

    @property
    def values(self) -> list[tuple[torch.Tensor, ...]]:
        """The points, oldest first, each a tuple of its parts."""
        return list(zip(*self.parts))

    def since_compute(self, step: int) -> int | None:
        return None if self.last_compute_step is None else step - self.last_compute_step

    def ready(self, forecaster: Forecaster) -> bool:
        return len(self.times) >= forecaster.min_history

    def record(self, step: int, t: float, value: Sequence[torch.Tensor]) -> None:
        times = self.times
        if times and times[-1] == t:  # a recompute of the same step replaces its point
            self._pop(-1)
        while len(times) >= self.max_points:  # evict first: the peak is the steady state
            self._pop(0)
        kept = self.storage.keep_all(value)
        if len(self.parts) != len(kept):
            self.parts = [[] for _ in kept]
        # new dicts, not cleared ones: histories forecast together share their forecaster state
        self.scratch = [{} for _ in kept]
        for column, x in zip(self.parts, kept):
            column.append(x)
        times.append(t)
        self.steps.append(step)
        self.last_compute_step = step

    def forecast(
        self, forecaster: Forecaster, t: float, dtype: torch.dtype, device: torch.device, step: int | None = None
    ) -> tuple[torch.Tensor, ...]:
        """The forecaster's prediction at time ``t`` (step ``step``). A forecaster on the ``index``
        basis sees the computed points' step indices and the target step instead of times."""
        coords, target = self.coordinates(forecaster, t, step)
        predict = forecaster.predict
        if len(self.parts) == 1:
            return (predict(coords, self.parts[0], target, self.scratch[0]).to(dtype=dtype, device=device),)
        return tuple([
            predict(coords, column, target, scratch).to(dtype=dtype, device=device)
            for column, scratch in zip(self.parts, self.scratch)
        ])

    def coordinates(self, forecaster: Forecaster, t: float, step: int | None) -> tuple[list[float], float]:
        """The coordinates ``forecaster`` sees: the computed points' times and ``t``, or their step
        indices and ``step`` on the ``index`` basis."""
        if forecaster.basis != "index":
            return self.times, t
        if step is None:
            raise ValueError(f"{type(forecaster).__name__}(basis='index') needs the step index; this site does not pass it")
        return [float(s) for s in self.steps], float(step)

    def _pop(self, i: int) -> None:
        self.times.pop(i)
        self.steps.pop(i)
        for column in self.parts:
            self.storage.drop(column.pop(i))

    def keep(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Keep a site-specific tensor (counted in the cache's bytes) under ``extra[name]``."""
        old = self._kept.pop(name, None)
        if old is not None:
            self.storage.drop(old)
        self._kept[name] = self.extra[name] = self.storage.keep(x)
        return self._kept[name]

    def clear(self) -> None:
        while self.times:
            self._pop(0)
        for x in self._kept.values():
            self.storage.drop(x)
        self._kept.clear()
        self.extra.clear()


def forecast_together(
    hists: list[RowHistory], forecaster: Forecaster, t: float, dtype: torch.dtype, device: torch.device,
    step: int | None = None,
) -> tuple[torch.Tensor, ...]:
    """The forecasts of histories that hold the same computed times, each part stacked over them in
    order: one prediction over their stacked points instead of one per history (the same numbers,
    for a ``rowwise`` forecaster). From then on they share the forecaster's state, which is the same
    for all of them until one computes again (its record gives it a state of its own)."""
    first = hists[0]
    if len(hists) == 1:
        return first.forecast(forecaster, t, dtype, device, step)
    coords, target = first.coordinates(forecaster, t, step)
    out = []
    for c, scratch in enumerate(first.scratch):
        points = [torch.cat([h.parts[c][j] for h in hists]) for j in range(len(coords))]
        out.append(forecaster.predict(coords, points, target, scratch).to(dtype=dtype, device=device))
    for h in hists[1:]:
        h.scratch = first.scratch
    return tuple(out)
