"""The `what` axis: what a site returns at a step it does not compute."""

from __future__ import annotations

import abc
from collections.abc import Sequence

import torch


class Forecaster(abc.ABC):
    """Predicts a cached feature at time coordinate ``t`` from the points that were really computed.

    A forecaster is stateless between generations: the site owns the per-row history (oldest
    first) and a per-row ``state`` dict that is cleared every time the row computes, for
    forecasters that chain their own predictions between two computed steps.

    Times are the real time coordinate each step received (t or sigma, in whatever units the model
    takes), never the step index, so non-uniform schedules and other step counts stay right.
    """

    #: computed points a forecast needs; until a row has them the site computes instead.
    min_history: int = 1
    #: computed points the site keeps per row (this is the memory cost of the forecaster).
    max_history: int = 1
    #: the coordinate ``predict`` receives: ``"time"`` (the real time of each step) or ``"index"``
    #: (the step index: the uniform-grid basis that papers' fixed coefficients assume).
    basis: str = "time"

    #: ``predict`` treats each row of the values (their first dimension) on its own, and its ``state``
    #: depends only on the times it was asked about: rows that hold the same computed times are then
    #: forecast together, in one prediction over their stacked values. Set False for a forecaster
    #: that mixes rows or keeps a row's own data in ``state``.
    rowwise: bool = True

    def validate(self) -> None:
        """Raise ValueError naming the field and the fix when the configuration is invalid."""

    def bind(self, adapter) -> Forecaster:
        """This forecaster for one model (e.g. filled with the adapter's time unit); default: itself."""
        return self

    @abc.abstractmethod
    def predict(
        self, times: Sequence[float], values: Sequence[torch.Tensor], t: float, state: dict
    ) -> torch.Tensor:
        """Forecast the feature at ``t``.

        ``times[i]`` and ``values[i]`` are the computed points, oldest first, with
        ``min_history <= len(times) <= max_history``. ``t`` is not among ``times``. The result has
        the shape and dtype of ``values[-1]``.
        """

    def describe(self) -> dict:
        """The knobs, for traces and benchmark JSON."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}
