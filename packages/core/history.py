"""What one (site, branch, row) keeps across steps: trigger state and the computed history."""

from __future__ import annotations

import torch

from .forecasters.base import Forecaster
from .storage import Storage


class RowHistory:
    """The computed points of one row at one site, oldest first, plus its trigger state.

    A point is a tuple of tensors (a site's output may have several parts, e.g. image and text
    streams); forecasters predict each part on its own.
    """

    def __init__(self, trigger_state: dict, storage: Storage, max_points: int) -> None:
        self.trigger_state = trigger_state
        self.storage = storage
        self.max_points = max_points
        self.times: list[float] = []
        self.steps: list[int] = []
        self.values: list[tuple[torch.Tensor, ...]] = []
        self.scratch: list[dict] = []
        self.last_compute_step: int | None = None
        self.extra: dict = {}
        self._kept: dict[str, torch.Tensor] = {}

    def since_compute(self, step: int) -> int | None:
        return None if self.last_compute_step is None else step - self.last_compute_step

    def ready(self, forecaster: Forecaster) -> bool:
        return len(self.times) >= forecaster.min_history

    def record(self, step: int, t: float, value: tuple[torch.Tensor, ...]) -> None:
        if self.times and self.times[-1] == t:  # a recompute of the same step replaces its point
            self._pop(-1)
        while len(self.times) >= self.max_points:  # evict first: the peak is the steady state
            self._pop(0)
        kept: list[torch.Tensor] = []
        try:
            for v in value:
                kept.append(self.storage.keep(v))
        except BaseException:  # over budget: leave the history consistent, then report
            for k in kept:
                self.storage.drop(k)
            raise
        self.times.append(t)
        self.steps.append(step)
        self.values.append(tuple(kept))
        self.scratch = [{} for _ in value]
        self.last_compute_step = step

    def forecast(
        self, forecaster: Forecaster, t: float, dtype: torch.dtype, device: torch.device, step: int | None = None
    ) -> tuple[torch.Tensor, ...]:
        """The forecaster's prediction at time ``t`` (step ``step``). A forecaster on the ``index``
        basis sees the computed points' step indices and the target step instead of times."""
        parts = len(self.values[-1])
        if len(self.scratch) != parts:
            self.scratch = [{} for _ in range(parts)]
        coords, target = self.times, t
        if forecaster.basis == "index":
            if step is None:
                raise ValueError(f"{type(forecaster).__name__}(basis='index') needs the step index; this site does not pass it")
            coords, target = [float(s) for s in self.steps], float(step)
        return tuple(
            forecaster.predict(coords, [v[c] for v in self.values], target, self.scratch[c]).to(dtype=dtype, device=device)
            for c in range(parts)
        )

    def _pop(self, i: int) -> None:
        self.times.pop(i)
        self.steps.pop(i)
        for v in self.values.pop(i):
            self.storage.drop(v)

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
