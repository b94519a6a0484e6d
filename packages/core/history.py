"""What one history of a site keeps across steps: trigger state and the computed points."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import repeat

import torch

from .forecasters.base import Forecaster
from .storage import Shared, Storage


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
        #: where each kept part lives when it is a row of a tensor shared with other histories:
        #: (the shared tensor, the row), else None (a copy of its own)
        self.origins: list[list[tuple[Shared, int] | None]] = []
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

    def record(
        self, step: int, t: float, value: Sequence[torch.Tensor], shared: Sequence[tuple[Shared, int]] | None = None
    ) -> None:
        """A computed point: ``value`` (a tensor per part), copied into the storage; or, with
        ``shared``, rows of tensors the storage already keeps for several histories (``value`` are
        those rows)."""
        self.make_room(t)
        kept = self.storage.keep_all(value) if shared is None else value
        if len(self.parts) != len(kept):
            self.parts = [[] for _ in kept]
            self.origins = [[] for _ in kept]
        # new dicts, not cleared ones: histories forecast together share their forecaster state
        self.scratch = [{} for _ in kept]
        for c, x in enumerate(kept):
            self.parts[c].append(x)
            self.origins[c].append(None if shared is None else shared[c])
        self.times.append(t)
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

    def make_room(self, t: float) -> None:
        """Drop what a point at ``t`` replaces: a point of the same step (a recompute), and the oldest
        points past ``max_points``. Done before the new point is kept: the peak is the steady state."""
        times = self.times
        if times and times[-1] == t:
            self._pop(-1)
        while len(times) >= self.max_points:
            self._pop(0)

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
        for column, origins in zip(self.parts, self.origins):
            x, origin = column.pop(i), origins.pop(i)
            if origin is None:
                self.storage.drop(x)
            else:
                self.storage.release(origin[0])

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
        points = [_stacked(hists, c, j) for j in range(len(coords))]
        out.append(forecaster.predict(coords, points, target, scratch).to(dtype=dtype, device=device))
    for h in hists[1:]:
        h.scratch = first.scratch
    return tuple(out)


def _stacked(hists: list[RowHistory], c: int, j: int) -> torch.Tensor:
    """Part ``c`` of point ``j`` of every history, stacked in order: the shared tensor itself when
    they hold its consecutive rows (as the rows of one call that computed together do), else a copy."""
    origin = hists[0].origins[c][j]
    if origin is not None:
        shared, start = origin
        # compared as whole lists: a generator would resume once per history (this runs per point)
        if [h.origins[c][j] for h in hists] == list(zip(repeat(shared), range(start, start + len(hists)))):
            return shared.tensor[start : start + len(hists)]
    return torch.cat([h.parts[c][j] for h in hists])


def record_together(
    hists: list[RowHistory], rows: list[int], step: int, t: float, cached: Sequence[torch.Tensor], storage: Storage
) -> None:
    """Record row ``rows[i]`` of each part of ``cached`` as a point of ``hists[i]``: each part is
    kept once, as one tensor the histories share a row each of (one copy per site call, and their
    points stack again without a copy when they are forecast together)."""
    if len(hists) == 1:
        r = rows[0]
        hists[0].record(step, t, [p[r : r + 1] for p in cached])
        return
    for hist in hists:  # evict before keeping: the peak is the steady state
        hist.make_room(t)
    everything = rows == list(range(len(cached[0])))
    index = None if everything else torch.tensor(rows, device=cached[0].device)
    shared = storage.keep_shared([p if index is None else p.index_select(0, index) for p in cached], len(hists))
    for i, hist in enumerate(hists):
        hist.record(step, t, [s.tensor[i : i + 1] for s in shared], [(s, i) for s in shared])
