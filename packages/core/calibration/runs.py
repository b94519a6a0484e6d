"""Running a policy over a few generations and reading back what calibration compares."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..adapters.base import Adapter
from ..apply import apply
from ..policy import Policy
from .recording import Generate


@dataclass
class PolicyRun:
    """The outputs of the generations run under one policy, the handle's compute ratio over all of
    them, and the step count and time grid of the first generation (read from the trace)."""

    outputs: list[Any]
    compute_ratio: float
    steps: int
    time_grid: tuple[float, ...]


def run_policy(
    target: Any,
    policy: Policy,
    generations: Sequence[Generate],
    adapter: Adapter | None = None,
    schedule: Sequence[float] | torch.Tensor | None = None,
) -> PolicyRun:
    """Apply ``policy``, run every generation, read ``stats().compute_ratio``, remove the handle."""
    handle = apply(target, policy, adapter)
    try:
        if schedule is not None:
            handle.set_schedule(schedule)
        outputs = []
        for gen in generations:
            handle.reset()
            with torch.no_grad():
                outputs.append(gen())
        ratio = handle.stats().compute_ratio
        trace = handle.trace()
    finally:
        handle.remove()
    if not trace:
        raise RuntimeError("the generations never called the cached model; check generate() and the target")
    first = trace[0]
    times: dict[int, float] = {}
    for d in trace:
        if d.generation == first.generation and d.site == first.site and d.branch == 0 and d.row == 0:
            times.setdefault(d.step, d.t)
    grid = tuple(times[s] for s in sorted(times))
    return PolicyRun(outputs, float(ratio), len(grid), grid)


def run_uncached(generations: Sequence[Generate]) -> list[Any]:
    """The generations' outputs with no handle applied: fidelity references."""
    with torch.no_grad():
        return [gen() for gen in generations]
