"""The `when` axis: whether a row computes at this step or takes the cached/forecast value."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class Observation:
    """What a site knows about one row at one step when it asks its trigger.

    ``signal`` is the tensor the trigger asked for through :attr:`Trigger.signal`, for this row
    only (batch dimension of size 1); ``None`` when the trigger asks for none.
    """

    step: int
    """Index of this step in the current generation, from 0."""
    t: float
    """Time coordinate the model received at this step."""
    timesteps: tuple[float, ...] | None
    """The generation's whole schedule when known (pipeline adapter, ``handle.set_schedule``)."""
    since_compute: int | None
    """Steps since this row last computed at this site; ``None`` if it never has."""
    signal: torch.Tensor | None = None

    @property
    def num_steps(self) -> int | None:
        return None if self.timesteps is None else len(self.timesteps)


class Trigger(abc.ABC):
    """Decides, per row and step, whether a site computes.

    The protocol, per row and step:

    1. ``metric = measure(state, obs)``: pure, reads ``state`` and ``obs``. Under
       torch.distributed the site averages it across ranks, so every rank decides alike.
    2. ``decide(state, obs, metric) -> bool``: True means compute. Skipped when the site must
       compute anyway (no history yet); may update accumulators in ``state``.
    3. ``observe(state, obs, computed, inputs, output)``: always called after the step, with the
       site's input state and, when computed, its real output; resets accumulators on a compute.

    ``state`` is a per-row dict created by :meth:`new_state`; triggers hold no other state, so one
    trigger object serves every site, branch and row.
    """

    #: The signal the site must put into ``Observation.signal``:
    #: ``None``; ``"modulated_input"`` (the first block's timestep-modulated input, TeaCache);
    #: ``"probe_residual"`` (output minus input of the probe blocks, FBCache/DBCache);
    #: ``"input"`` (the cached region's input, EasyCache / Foresight).
    signal: str | None = None

    #: True for forecast-then-verify triggers (SpeCa): the site checks every forecast against a
    #: real computation of a verification block and calls :meth:`verify`.
    verifies: bool = False

    def validate(self) -> None:
        """Raise ValueError naming the field and the fix when the configuration is invalid."""

    def new_state(self) -> dict:
        return {}

    def bind(self, adapter) -> Trigger:
        """This trigger for one model: triggers with model-specific defaults left unset (TeaCache's
        polynomial, MagCache's ratios) return a copy filled from the adapter."""
        return self

    def measure(self, state: dict, obs: Observation) -> float | None:
        return None

    def measure_rows(self, states: Sequence[dict], obs: Sequence[Observation]) -> list[float | None]:
        """Step 1 for the rows of one site call, each with its state and observation: their
        metrics, in order. The default measures row by row; a trigger whose metric reduces a
        tensor measures every row in one batched reduction (one device sync per site call instead
        of one per row). The same function of each row's inputs either way: a row's metric does not
        depend on the rows beside it."""
        measure = self.measure
        return [measure(s, o) for s, o in zip(states, obs)]

    @abc.abstractmethod
    def decide(self, state: dict, obs: Observation, metric: float | None) -> bool:
        """True: compute this row at this step."""

    def observe(
        self,
        state: dict,
        obs: Observation,
        computed: bool,
        inputs: torch.Tensor | None,
        output: torch.Tensor | None,
    ) -> None:
        """Update ``state`` after the step. ``inputs`` is the site's input (first state tensor) for
        this row, ``output`` its real output when ``computed`` (else ``None``)."""

    def verify(self, state: dict, obs: Observation, error: float) -> bool:
        """Forecast-then-verify only: accept the forecast whose relative error is ``error``."""
        raise NotImplementedError(f"{type(self).__name__} does not verify forecasts")

    def describe(self) -> dict:
        """The knobs, for traces and benchmark JSON."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


def ask(
    trigger: Trigger,
    state: dict,
    obs: Observation,
    must_compute: bool = False,
    reduce=None,
) -> tuple[bool, float | None]:
    """Steps 1 and 2 of the protocol for one row: measure (reduced across ranks by ``reduce``),
    then decide unless the row must compute. Returns ``(compute, metric)``; the caller then runs
    the site and calls ``trigger.observe``."""
    metric = trigger.measure(state, obs)
    if metric is not None and reduce is not None:
        metric = reduce(metric)
    compute = True if must_compute else bool(trigger.decide(state, obs, metric))
    return compute, metric
