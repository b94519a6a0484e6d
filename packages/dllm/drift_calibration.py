"""Find dLLM-Cache's drift threshold for a target compute fraction, in a few generations.

With ``DllmCache(response_refresh="drift")`` (our option on dLLM-Cache, arXiv 2506.06295; the measure is in
:mod:`forecache.dllm.drift`) the answer is refreshed when the drift since the last refresh exceeds
``drift_threshold``. A larger threshold refreshes less, so the compute fraction falls (stepwise: a generation
refreshes a whole number of times) as the threshold grows. :func:`calibrate_drift` brackets the target and
bisects geometrically (thresholds span decades), with core's one bracket/bisect search
(:func:`forecache.core.calibration.bracket_and_bisect`, growing and shrinking by 4):

1. probe ``start``; multiply by 4 while the fraction is above the target, divide by 4 while it is below, until
   the target is bracketed or nothing more can change: when no call's drift exceeded the threshold, any larger
   one makes the same decisions, hence the same run; when every call's did, so does any smaller one;
2. bisect ``sqrt(lo * hi)`` until a fraction lands within ``tolerance`` of the target, the bracket is narrower
   than ``resolution`` (relative), or ``max_generations`` are spent.

The answer is the probe closest to the target within the tolerance (the smaller threshold on a tie); else the
least aggressive probe that reaches the target; else (``met=False``) the cheapest probe.

Why not :func:`forecache.core.calibration.search_knob` itself: it searches the knob a registered preset declares
(``@preset(knob=...)``) for a target of output fidelity; here the target is a compute fraction, read from the
cache's telemetry (``generate(..., return_stats=True)["cache"]``), and the bracket stops early on what the
measured drifts prove (no other threshold can change the run). Only the running of a probe differs: the search
is shared.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from torch import Tensor, nn
from tqdm.auto import tqdm

from forecache.core.calibration import bracket_and_bisect
from forecache.core.policy import Policy

from .dllm_cache import DllmCache
from .sampler import generate
from .site import LLaDALayers

log = logging.getLogger("forecache")

METRICS = {"compute_fraction": ("computed", "token_layers"), "compute_ratio": ("flops", "flops_full")}
Batches = Tensor | tuple[Tensor, Tensor | None] | Sequence[tuple[Tensor, Tensor | None]]


@dataclass
class DriftCalibration:
    """The chosen ``threshold``, the ``fraction`` it achieved (``metric`` over all batches) for the ``target``,
    whether the target was ``met``, every probe as ``(threshold, fraction)`` in the order run, and the
    calibrated ``policy`` (the base policy with ``response_refresh="drift"`` at that threshold)."""

    threshold: float
    fraction: float
    target: float
    met: bool
    metric: str
    policy: DllmCache
    probes: list[tuple[float, float]] = field(default_factory=list)


class _Probe(NamedTuple):
    """One threshold's run over every batch: the ``fraction`` achieved, and whether no call's drift exceeded the
    threshold (``none_over``: any larger threshold makes the same decisions, hence the same run) or every call's
    did (``all_over``: so does any smaller one)."""

    threshold: float
    fraction: float
    none_over: bool
    all_over: bool


def _as_batches(batches: Batches) -> list[tuple[Tensor, Tensor | None]]:
    if isinstance(batches, Tensor):
        return [(batches, None)]
    if isinstance(batches, tuple) and len(batches) == 2 and isinstance(batches[0], Tensor):
        return [batches]  # one (input_ids, attention_mask) pair
    out = list(batches)
    if not out or not all(isinstance(b, tuple) and len(b) == 2 and isinstance(b[0], Tensor) for b in out):
        raise ValueError(
            "calibrate_drift: batches must be input_ids, an (input_ids, attention_mask) pair, or a non-empty "
            "list of such pairs (pad_prompts builds one)"
        )
    return out


def calibrate_drift(
    model: nn.Module,
    batches: Batches,
    target_compute_fraction: float,
    *,
    policy: DllmCache | None = None,
    metric: str = "compute_fraction",
    tolerance: float = 0.02,
    resolution: float = 0.01,
    max_generations: int = 16,
    start: float = 0.1,
    progress: bool = False,
    **generate_kwargs: Any,
) -> DriftCalibration:
    """The drift threshold at which dLLM-Cache computes ``target_compute_fraction`` of the uncached work.

    Args:
        model: the ``LLaDAModel`` to calibrate on.
        batches: prompts to generate from: ``input_ids``, an ``(input_ids, attention_mask)`` pair or a list of
            pairs (each a ``generate()`` call per probe).
        target_compute_fraction: in (0, 1), ``metric`` of the cached run (e.g. 0.3 = 30% of the work).
        policy: the base policy (default ``DllmCache()``, the paper's K_p and rho); its ``response_refresh`` is
            set to ``"drift"`` and its threshold searched. metric: ``"compute_fraction"`` (token-layers, the
            default) or ``"compute_ratio"`` (matmul FLOPs). tolerance: a fraction within this of the target
            ends the search (0.02). resolution: relative bracket width at which bisection stops (0.01).
        max_generations: ``generate()`` calls the search may make in all (16). start: the first threshold (0.1).
        generate_kwargs: passed to :func:`forecache.dllm.sampler.generate` (steps, gen_length, block_length,
            cfg_scale, ...). Sampling noise is not re-seeded between probes; calibrate greedy decoding, or
            pass a fresh generator per call yourself.
    """
    runs = _as_batches(batches)
    if isinstance(target_compute_fraction, bool) or not 0.0 < target_compute_fraction < 1.0:
        raise ValueError(
            f"calibrate_drift: target_compute_fraction={target_compute_fraction!r} must be in (0, 1), e.g. 0.3"
        )
    if metric not in METRICS:
        raise ValueError(f"calibrate_drift: metric={metric!r}; use one of {sorted(METRICS)}")
    if not tolerance >= 0 or not resolution > 0 or not start > 0:
        raise ValueError(
            f"calibrate_drift: tolerance={tolerance!r} must be >= 0, resolution={resolution!r} and start={start!r} > 0"
        )
    max_probes = max_generations // len(runs)
    if max_probes < 2:
        raise ValueError(
            f"calibrate_drift: max_generations={max_generations} allows fewer than 2 probes of {len(runs)} "
            f"batches; raise it to at least {2 * len(runs)}"
        )
    base = policy if policy is not None else DllmCache()
    if isinstance(base, Policy) and isinstance(base.where, LLaDALayers):
        base = base.where.method  # a preset's policy: calibrate its method
    if "cache" in generate_kwargs or "return_stats" in generate_kwargs:
        raise ValueError("calibrate_drift sets generate()'s cache and return_stats itself; leave them out")
    target = float(target_compute_fraction)
    done, total = METRICS[metric]
    probes: dict[float, _Probe] = {}  # in the order run
    bar = tqdm(total=max_probes, desc="calibrate drift_threshold", unit="probe", disable=not progress)

    def probe(threshold: float) -> _Probe:
        if threshold not in probes:
            candidate = replace(base, response_refresh="drift", drift_threshold=threshold)
            num = den = 0
            drifts: list[float] = []
            for input_ids, attention_mask in runs:
                _, stats = generate(model, input_ids, attention_mask, cache=candidate, return_stats=True,
                                    **generate_kwargs)
                cache = stats["cache"]
                num, den = num + cache[done], den + cache[total]
                drifts += [accumulated for _, _, accumulated in cache["drift"]]
            probes[threshold] = _Probe(threshold, num / max(den, 1), all(d <= threshold for d in drifts),
                                       all(d > threshold for d in drifts))
            bar.update(1)
            bar.set_postfix(threshold=f"{threshold:.4g}", fraction=f"{probes[threshold].fraction:.3f}")
        return probes[threshold]

    def close(fraction: float) -> bool:
        return abs(fraction - target) <= tolerance

    try:
        # bracket by factors of 4 both ways from ``start`` (threshold 0, a refresh after every measured call, is the
        # least aggressive side); stop where the measured drifts show no other threshold can change the run
        bracket_and_bisect(probe, lambda p: p.fraction <= target, start=start, max_probes=max_probes, lower=0.0,
                           grow=4.0, shrink=4.0, resolution=resolution, close=lambda p: close(p.fraction),
                           no_higher=lambda p: p.none_over, no_lower=lambda p: p.all_over)
    finally:
        bar.close()
    ordered = [(t, p.fraction) for t, p in probes.items()]
    near = [p for p in ordered if close(p[1])]
    reached = [p for p in ordered if p[1] <= target]
    if near:
        best, met = min(near, key=lambda p: (abs(p[1] - target), p[0])), True
    elif reached:
        best, met = max(reached, key=lambda p: (p[1], -p[0])), True
    else:
        best, met = min(ordered, key=lambda p: (p[1], p[0])), False
        log.warning("calibrate_drift: no threshold reaches %s=%.3f (cheapest: %.3f at %.4g); lower rho or "
                    "prompt_interval's cost, or relax the target", metric, target, best[1], best[0])
    return DriftCalibration(best[0], best[1], target, met, metric,
                            replace(base, response_refresh="drift", drift_threshold=best[0]), ordered)

