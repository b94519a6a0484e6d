"""The step clock: which generation, segment, step and branch a model call belongs to.

All of the clock's state lives here: the implicit mode (times read from each model call), the
explicit mode (a sampler calls ``step(t)``, and each call within a step is one branch), segments,
and the schedule of the coming generation (given, or learnt from a scheduler).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tick:
    """Where one model call sits.

    ``step`` counts the steps of the current segment from 0 (what a schedule counts: warm-up,
    cool-down, the last step); ``index`` counts the steps of the whole generation across its
    segments and never goes back (what histories count: steps since the last compute).
    """

    generation: int
    segment: Hashable
    step: int
    index: int
    branch: int
    t: float
    new_generation: bool
    new_segment: bool = False


class StepClock:
    """Turns the stream of model calls into (generation, segment, step, branch).

    Implicit mode (:meth:`tick`): two calls with the same timestep in a row are two branches of one
    step (classifier-free guidance run as cond and uncond calls). A timestep that moves on in the
    sampling direction is the next step. A timestep that moves against that direction (or repeats
    the first one after the schedule has run) starts a new generation, so a pipeline called twice
    needs no reset, unless the caller announced the next segment (:meth:`next_segment`) or the
    segment key read from the call changed: then the restart is the next segment of the same
    generation (a dLLM block, a world-model chunk, an edit's denoising phase, a 3D view). The
    direction is learnt from the first two steps of each segment, so schedules that run either
    way work.

    Explicit mode (:meth:`step`, then :meth:`call` per model call): the sampler says when a step
    begins; each call within it is one branch, with its own time when ``call_times`` gives one.
    """

    def __init__(self) -> None:
        self.generation = -1
        self._segment: Hashable = 0
        self._pending: tuple[Hashable | None] | None = None  # (key,) of an announced segment, until the next step
        self._index = -1
        self._explicit = False
        self._calls = 0
        self._call_times: tuple[float, ...] | None = None
        self._schedule: tuple[float, ...] | None = None
        self._scheduler_times: tuple[float, ...] | None = None
        self.reset()

    def reset(self) -> None:
        """Forget the current position; the next tick starts a new generation."""
        self._t: float | None = None
        self._direction = 0.0
        self.step = -1
        self.branch = -1

    # -- implicit mode ---------------------------------------------------------------------------
    def tick(self, t: float, segment: Hashable | None = None) -> Tick:
        """The position of a model call that received time ``t`` (and, if the adapter reads one,
        segment key ``segment``)."""
        t = float(t)
        announced = None if self._pending is None else self._pending[0]
        if self._t is None:  # the first call, or one after reset()
            self._pending = None
            return self._start_generation(t, announced if announced is not None else segment)
        if self._pending is not None or (segment is not None and segment != self._segment):
            self._pending = None
            return self._enter_segment(t, announced if announced is not None else segment)
        if t == self._t:
            self.branch += 1
            return self._tick(False)
        if self._direction == 0.0 or (t - self._t) * self._direction > 0:
            if self._direction == 0.0:
                self._direction = 1.0 if t > self._t else -1.0
            return self._advance(t, False, False)
        return self._start_generation(t, segment)

    def _advance(self, t: float, new_generation: bool, new_segment: bool) -> Tick:
        self.step += 1
        self._index += 1
        self.branch = 0
        self._t = t
        return self._tick(new_generation, new_segment)

    def _enter_segment(self, t: float, key: Hashable | None) -> Tick:
        if key is None:
            key = self._segment + 1 if isinstance(self._segment, int) else 0
        self._segment = key
        self._direction = 0.0
        self.step = -1
        return self._advance(t, False, True)

    def _start_generation(self, t: float, segment: Hashable | None) -> Tick:
        self.generation += 1
        self._segment = 0 if segment is None else segment
        self._direction = 0.0
        self._index = -1
        self.step = -1
        return self._advance(t, True, False)

    def _tick(self, new_generation: bool, new_segment: bool = False) -> Tick:
        return Tick(
            self.generation, self._segment, self.step, self._index, self.branch, self._t, new_generation, new_segment
        )

    def next_segment(self, key: Hashable | None = None) -> None:
        """The next step begins a new segment of the running generation (``key``: its name, e.g. a
        chunk or frame index; default the previous integer key plus one), whatever its time."""
        self._pending = (key,)

    def force_new_generation(self) -> None:
        """The next tick starts a new generation whatever its timestep."""
        self._t = None
        self._pending = None

    # -- explicit mode ---------------------------------------------------------------------------
    @property
    def explicit(self) -> bool:
        return self._explicit

    def begin_step(self, t: float, call_times: Sequence[float] | None = None, segment: Hashable | None = None) -> Tick:
        """A sampler's step at time ``t`` begins; its model calls follow (:meth:`call`)."""
        self._explicit = True
        self._calls = 0
        self._call_times = None if call_times is None else tuple(float(c) for c in call_times)
        return self.tick(t, segment)

    def call(self) -> Tick:
        """The position of the next model call of the explicit step in progress."""
        if self._t is None:
            raise RuntimeError("handle.step(t) has not been called for this generation")
        branch = self._calls
        self._calls += 1
        t = self._t
        if self._call_times is not None and branch < len(self._call_times):
            t = self._call_times[branch]
        return Tick(self.generation, self._segment, self.step, self._index, branch, t, False)

    # -- the schedule ----------------------------------------------------------------------------
    def set_schedule(self, timesteps: Sequence[float] | torch.Tensor) -> None:
        """The time coordinates of the coming generation (of each of its segments), as the model
        will receive them."""
        self._schedule = tuple(float(x) for x in torch.as_tensor(timesteps).flatten().tolist())
        self._scheduler_times = None
        self.force_new_generation()

    def scheduler_set(self, times: Sequence[float]) -> None:
        """A watched scheduler set its timesteps: the schedule is learnt from them at the next step
        0 (pipelines may pass them to the model rescaled)."""
        self._scheduler_times = tuple(float(x) for x in times)
        self._schedule = None
        self.force_new_generation()

    @property
    def schedule(self) -> tuple[float, ...] | None:
        """The schedule as known so far (given, or learnt from the scheduler at step 0)."""
        return self._schedule

    def timesteps(self, t: float, step: int) -> tuple[float, ...] | None:
        """The schedule of the running segment, in the model's units, when known."""
        if self._schedule is not None:
            return self._schedule
        ts = self._scheduler_times
        if ts is None or step != 0 or not ts or ts[0] == 0:
            return self._schedule
        # pipelines may pass the scheduler's timesteps rescaled (Flux divides by 1000): map the
        # schedule to the model's units by the first step, which both sides know
        scale = t / ts[0]
        self._schedule = tuple(x * scale for x in ts)
        return self._schedule
