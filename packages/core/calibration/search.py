"""Threshold search: the value of a preset's strength knob that meets a compute-ratio or fidelity
target, in a bounded number of generations.

Caching grows with the knob (see :mod:`.knobs`), so the compute ratio falls and the fidelity
against the uncached output falls as the knob grows. Both are step functions of the knob (a
generation computes a whole number of steps), so the search brackets the boundary where the
target starts (or stops) being met and bisects it (:func:`.bisect.bracket_and_bisect`, the one search every
calibration shares):

1. bracket: the never-skip value is one side (compute ratio 1, identical output); probe the
   preset's default, then double it until the target flips, up to the knob's limit (for an
   interval, the step count);
2. bisect: geometrically for thresholds (they span decades), halving for intervals, until a
   compute ratio lands within ``tolerance`` of its target, the bracket is narrower than
   ``resolution``, or ``max_generations`` are spent.

The answer is the least aggressive value that reaches a compute-ratio target (or one within
``tolerance`` of it), and the most aggressive value that keeps a fidelity target.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from ..adapters.base import Adapter
from ..presets.registry import lookup
from .bisect import bracket_and_bisect
from .knobs import Knob, knob_for
from .recording import Generate, as_generations
from .runs import run_policy, run_uncached

log = logging.getLogger("forecache")

#: ``fidelity(output, reference) -> float``, higher is better (e.g. PSNR in dB).
Fidelity = Callable[[Any, Any], float]


@dataclass
class SearchConfig:
    """Budget and stopping rules of a threshold search.

    ``max_generations``: generations the whole search may run (each probe runs every generation
    callable once). ``tolerance``: a compute ratio within this of its target ends the search.
    ``resolution``: the relative width (thresholds) below which bisection stops; intervals stop
    when adjacent.
    """

    max_generations: int = 16
    tolerance: float = 0.02
    resolution: float = 0.02

    def validate(self) -> None:
        if not isinstance(self.max_generations, int) or self.max_generations < 1:
            raise ValueError(f"SearchConfig.max_generations={self.max_generations!r}: use a positive int, e.g. 16")
        if not self.tolerance >= 0:
            raise ValueError(f"SearchConfig.tolerance={self.tolerance!r}: use a compute-ratio margin >= 0, e.g. 0.02")
        if not self.resolution > 0:
            raise ValueError(f"SearchConfig.resolution={self.resolution!r}: use a relative width > 0, e.g. 0.02")


@dataclass
class Evaluation:
    """One probe: the knob's value, the compute ratio over the generations and, with a fidelity
    function, the mean fidelity against the uncached outputs."""

    value: float
    compute_ratio: float
    fidelity: float | None = None


@dataclass
class SearchResult:
    """The chosen ``value`` of ``knob`` for preset ``method``, the ``target`` it was searched for,
    what it ``achieved``, whether the target was ``met``, every probe, and the step count and
    time grid the probes ran."""

    method: str
    knob: str
    value: float
    target: dict[str, float]
    achieved: Evaluation
    met: bool
    evaluations: list[Evaluation] = field(default_factory=list)
    steps: int = 0
    time_grid: tuple[float, ...] = ()
    generations: int = 0
    options: dict[str, Any] = field(default_factory=dict)

    def as_data(self) -> dict:
        """What a profile stores under ``data["search"]``."""
        return {
            "knob": self.knob,
            "value": self.value,
            "target": dict(self.target),
            "achieved": asdict(self.achieved),
            "met": self.met,
            "steps": self.steps,
            "generations": self.generations,
            "options": dict(self.options),
            "evaluations": [asdict(e) for e in self.evaluations],
        }


def search_knob(
    target: Any,
    generate: Generate | Sequence[Generate],
    method: str,
    *,
    compute_ratio: float | None = None,
    fidelity_target: float | None = None,
    fidelity: Fidelity | None = None,
    adapter: Adapter | None = None,
    schedule: Sequence[float] | torch.Tensor | None = None,
    options: dict[str, Any] | None = None,
    references: Sequence[Any] | None = None,
    config: SearchConfig | None = None,
    progress: bool = True,
) -> SearchResult:
    """Search preset ``method``'s strength knob for a target.

    Give exactly one of ``compute_ratio`` (e.g. 0.5 for 2x fewer FLOPs; ``handle.stats()``'s ratio)
    or ``fidelity_target`` (with ``fidelity(output, reference) -> float``, higher is better, e.g.
    PSNR). ``options`` are the preset's other arguments (e.g. ``{"profile": p}`` for a fitted
    TeaCache polynomial, ``{"retention": 0.0}``); ``references`` the uncached outputs of the
    generations (run here when a fidelity is needed and none are given). Returns the chosen value
    and what it achieved; ``met`` is False when the target was out of reach within the knob's range
    or the budget (the closest value found is returned, and a warning logged).
    """
    config = config or SearchConfig()
    config.validate()
    knob = knob_for(method)
    gens = as_generations(generate)
    if (compute_ratio is None) == (fidelity_target is None):
        raise ValueError("search_knob: give exactly one target, compute_ratio=... or fidelity_target=...")
    if compute_ratio is not None and not 0.0 < compute_ratio < 1.0:
        raise ValueError(f"search_knob(compute_ratio={compute_ratio}): use a ratio in (0, 1), e.g. 0.5 for 2x")
    if fidelity_target is not None and fidelity is None:
        raise ValueError("search_knob(fidelity_target=...) needs fidelity=, a function (output, reference) -> "
                         "float, higher is better (e.g. forecache.core.calibration.psnr)")
    options = dict(options or {})
    if knob.name in options:
        raise ValueError(f"options sets {knob.name!r}, the knob being searched; leave it out")
    max_probes = config.max_generations // len(gens)
    if max_probes < 2:
        raise ValueError(f"SearchConfig.max_generations={config.max_generations} allows fewer than 2 probes of "
                         f"{len(gens)} generations; raise it to at least {2 * len(gens)}")
    if fidelity is not None and references is None:
        references = run_uncached(gens)
    preset = lookup(method)  # any registered domain's preset: knob_for has checked it
    probes: dict[float, Evaluation] = {}
    grid: dict[str, Any] = {}
    bar = tqdm(total=max_probes, desc=f"search {method}.{knob.name}", unit="probe", disable=not progress)

    def probe(value: float) -> Evaluation:
        value = knob.clamp(value)
        if knob.integer and grid.get("steps"):  # an interval past the step count computes as that count does
            value = min(value, grid["steps"])
        if value in probes:
            return probes[value]
        run = run_policy(target, preset(**{knob.name: value}, **options), gens, adapter, schedule)
        fid = None
        if fidelity is not None:
            fid = float(sum(float(fidelity(o, r)) for o, r in zip(run.outputs, references)) / len(gens))
        ev = Evaluation(value, run.compute_ratio, fid)
        probes[value] = ev
        grid.setdefault("steps", run.steps)
        grid.setdefault("time_grid", run.time_grid)
        bar.update(1)
        bar.set_postfix({knob.name: f"{value:.4g}", "ratio": f"{ev.compute_ratio:.3f}",
                         **({} if fid is None else {"fidelity": f"{fid:.4g}"})})
        return ev

    if compute_ratio is not None:
        def aggressive(ev: Evaluation) -> bool:  # reached the ratio: at least as fast as asked
            return ev.compute_ratio <= compute_ratio + 1e-12

        def close(ev: Evaluation) -> bool:
            return abs(ev.compute_ratio - compute_ratio) <= config.tolerance
    else:
        def aggressive(ev: Evaluation) -> bool:  # lost the fidelity: less faithful than asked
            return ev.fidelity is None or not ev.fidelity >= fidelity_target

        def close(ev: Evaluation) -> bool:
            return False

    try:
        # the never-skip value is the unprobed safe side; growth doubles; the budget counts distinct values run
        bracket_and_bisect(probe, aggressive, start=knob.default, max_probes=max_probes, lower=knob.never_skip,
                           upper=knob.limit, integer=knob.integer, grow=2.0, shrink=None,
                           resolution=config.resolution, close=close, value_of=lambda ev: ev.value,
                           used=lambda: len(probes))
    finally:
        bar.close()
    evaluations = sorted(probes.values(), key=lambda e: e.value)
    if compute_ratio is not None:
        best, met = _choose_for_ratio(evaluations, aggressive, close, compute_ratio)
    else:
        best, met = _choose_for_fidelity(evaluations, aggressive, knob)
    target_d = {"compute_ratio": compute_ratio} if compute_ratio is not None else {"fidelity": fidelity_target}
    if not met:
        log.warning("forecache calibration: %s.%s could not meet %s within its range and budget (closest: "
                    "%s=%s, compute ratio %.3f); raise max_generations or relax the target",
                    method, knob.name, target_d, knob.name, best.value, best.compute_ratio)
    return SearchResult(method, knob.name, best.value, target_d, best, met, evaluations,
                        grid.get("steps", 0), tuple(grid.get("time_grid", ())), len(gens),
                        _json_options(options))


def _choose_for_ratio(
    evaluations: list[Evaluation],
    reached: Callable[[Evaluation], bool],
    close: Callable[[Evaluation], bool],
    target: float,
) -> tuple[Evaluation, bool]:
    """The probe closest to the target within tolerance; else the least aggressive that reaches
    it; else (not met) the fastest probe."""
    near = [e for e in evaluations if close(e)]
    if near:
        return min(near, key=lambda e: (abs(e.compute_ratio - target), e.value)), True
    hits = [e for e in evaluations if reached(e)]
    if hits:
        return max(hits, key=lambda e: (e.compute_ratio, -e.value)), True
    return min(evaluations, key=lambda e: (e.compute_ratio, e.value)), False


def _choose_for_fidelity(
    evaluations: list[Evaluation], lost: Callable[[Evaluation], bool], knob: Knob
) -> tuple[Evaluation, bool]:
    """The fastest probe that keeps the fidelity; else the never-skip value, which keeps any
    fidelity (the output is the uncached one) at a compute ratio of exactly 1."""
    kept = [e for e in evaluations if not lost(e)]
    if kept:
        return min(kept, key=lambda e: (e.compute_ratio, -e.value)), True
    log.warning("forecache calibration: every %s.%s probed lost the fidelity target; the answer is the "
                "never-skip value %s (no speed-up): relax the target", knob.method, knob.name, knob.never_skip)
    return Evaluation(knob.clamp(knob.never_skip), 1.0, math.inf), True


def _json_options(options: dict[str, Any]) -> dict[str, Any]:
    """The options a profile can store (plain numbers, strings, booleans, lists); a profile passed
    as ``options["profile"]`` is the profile being written, so it is left out."""
    out = {}
    for k, v in options.items():
        if k == "profile":
            continue
        if isinstance(v, (bool, int, float, str)) or v is None or (
            isinstance(v, (list, tuple)) and all(isinstance(x, (bool, int, float, str)) for x in v)
        ):
            out[k] = list(v) if isinstance(v, tuple) else v
        else:
            log.warning("forecache calibration: option %s=%r is not stored in the profile (not JSON); "
                        "pass it again when you use the profile", k, v)
    return out
