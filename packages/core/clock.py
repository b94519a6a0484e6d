"""The step clock: which generation, step and branch a model call belongs to."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Tick:
    """Where one model call sits: generation number, step index, branch index and time."""

    generation: int
    step: int
    branch: int
    t: float
    new_generation: bool


class StepClock:
    """Turns the stream of timesteps that model calls receive into (generation, step, branch).

    Two calls with the same timestep in a row are two branches of one step (classifier-free
    guidance run as cond and uncond calls). A timestep that moves on in the sampling direction is
    the next step. A timestep that moves against that direction (or repeats the first one after
    the schedule has run) starts a new generation, so a pipeline called twice needs no reset.
    The direction is learnt from the first two steps, so schedules that run either way work.
    """

    def __init__(self) -> None:
        self.generation = -1
        self.reset()

    def reset(self) -> None:
        self._t: float | None = None
        self._direction = 0.0
        self.step = -1
        self.branch = -1

    def tick(self, t: float) -> Tick:
        t = float(t)
        if self._t is not None and t == self._t:
            self.branch += 1
            return Tick(self.generation, self.step, self.branch, t, False)
        moves_on = self._t is not None and (self._direction == 0.0 or (t - self._t) * self._direction > 0)
        if moves_on:
            if self._direction == 0.0:
                self._direction = 1.0 if t > self._t else -1.0
            self.step += 1
            self.branch = 0
            self._t = t
            return Tick(self.generation, self.step, 0, t, False)
        self.generation += 1
        self._direction = 0.0
        self.step, self.branch, self._t = 0, 0, t
        return Tick(self.generation, 0, 0, t, True)

    def force_new_generation(self) -> None:
        """The next tick starts a new generation whatever its timestep."""
        self._t = None
