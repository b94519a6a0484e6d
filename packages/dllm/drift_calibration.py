"""Find dLLM-Cache's drift threshold for a target compute fraction, in a few generations.

With ``DllmCache(response_refresh="drift")`` (our option on dLLM-Cache, arXiv 2506.06295; the measure is in
:mod:`forecache.dllm.drift`) the answer is refreshed when the drift since the last refresh exceeds
``drift_threshold``. A larger threshold refreshes less, so the compute fraction falls (stepwise: a generation
refreshes a whole number of times) as the threshold grows. :func:`calibrate_drift` brackets the target and
bisects geometrically (thresholds span decades):

1. probe ``start``; multiply by 4 while the fraction is above the target, divide by 4 while it is below, until
   the target is bracketed or nothing more can change: when no call's drift exceeded the threshold, any larger
   one makes the same decisions, hence the same run; when every call's did, so does any smaller one;
2. bisect ``sqrt(lo * hi)`` until a fraction lands within ``tolerance`` of the target, the bracket is narrower
   than ``resolution`` (relative), or ``max_generations`` are spent.

The answer is the probe closest to the target within the tolerance (the smaller threshold on a tie); else the
least aggressive probe that reaches the target; else (``met=False``) the cheapest probe.

Why not :func:`forecache.core.calibration.search_knob`: it searches the knob a registered preset declares
(``@preset(knob=...)``) and runs the preset's core ``Policy`` through core's ``apply()`` handles and their
``stats()``; dLLM-Cache is a sampler ``CachePolicy`` that core's ``apply()`` does not run, and its compute
fraction comes from the cache state's own ``stats()``. Core's bracketing loop is private to that module, so this is the same idea,
written for this policy.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from torch import Tensor, nn
from tqdm.auto import tqdm

from .dllm_cache import DllmCache
from .sampler import generate

log = logging.getLogger("forecache")

METRICS = {"compute_fraction": ("computed", "token_layers"), "flops_fraction": ("flops", "flops_full")}
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
            default) or ``"flops_fraction"`` (matmul FLOPs). tolerance: a fraction within this of the target
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
    if "cache" in generate_kwargs or "return_stats" in generate_kwargs:
        raise ValueError("calibrate_drift sets generate()'s cache and return_stats itself; leave them out")
    target = float(target_compute_fraction)
    done, total = METRICS[metric]
    # threshold -> (fraction, no call's drift exceeded it, every call's did)
    probes: dict[float, tuple[float, bool, bool]] = {}
    bar = tqdm(total=max_probes, desc="calibrate drift_threshold", unit="probe", disable=not progress)

    def probe(threshold: float) -> float:
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
            probes[threshold] = (num / max(den, 1), all(d <= threshold for d in drifts),
                                 all(d > threshold for d in drifts))
            bar.update(1)
            bar.set_postfix(threshold=f"{threshold:.4g}", fraction=f"{probes[threshold][0]:.3f}")
        return probes[threshold][0]

    def close(fraction: float) -> bool:
        return abs(fraction - target) <= tolerance

    try:
        _search(probe, close, lambda f: f <= target, lambda t: probes[t][1], lambda t: probes[t][2], start,
                max_probes, resolution)
    finally:
        bar.close()
    ordered = [(t, f) for t, (f, _, _) in probes.items()]
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


def _search(probe, close, reached, highest, lowest, start: float, max_probes: int, resolution: float) -> None:
    """Bracket the threshold where ``reached(probe(t))`` turns True, then bisect it geometrically.

    ``highest(t)``/``lowest(t)``: after probing ``t``, no larger/smaller threshold can give another run."""
    used = 0

    def run(t: float) -> float:
        nonlocal used
        used += 1
        return probe(t)

    lo, hi = 0.0, math.inf
    t = start
    f = run(t)
    if close(f):
        return
    if reached(f):
        hi = t
        while used < max_probes and not lowest(t):  # shrink until the fraction rises above the target
            t /= 4
            f = run(t)
            if close(f):
                return
            if not reached(f):
                lo = t
                break
            hi = t
    else:
        lo = t
        while used < max_probes and not highest(t):  # grow until the fraction falls to the target
            t *= 4
            f = run(t)
            if close(f):
                return
            if reached(f):
                hi = t
                break
            lo = t
    if lo == 0.0 or math.isinf(hi):
        return  # out of reach (or the budget is spent)
    while used < max_probes and hi / lo > 1 + resolution:
        t = math.sqrt(lo * hi)
        f = run(t)
        if close(f):
            return
        if reached(f):
            hi = t
        else:
            lo = t
