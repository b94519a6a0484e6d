"""Measure a benchmark: the uncached baseline and every method, in one process, the same way.

- FLOPs: counted with FlopCounterMode on the actual runs, on the benchmark's denoiser only (the
  text encoders and decoders that no method touches are left out of both sides).
- Wall time: baseline and method interleaved, ``repeats`` pairs, median of each; forecache
  methods are timed with ``count_flops=False`` so the FLOP instrumentation is not timed.
- Fidelity: each method's outputs against the uncached outputs of the same seeds and inputs;
  task metrics measured on both.

Two optional hooks, for benchmarks whose work comes in countable units (generated tokens):
- ``bench.units(out) -> int`` (with ``bench.unit``, a name such as ``"token"``): the baseline and each run
  then also carry ``unit``, ``units``, ``units_per_s`` (units / median wall time) and ``flops_per_unit``.
- a method's ``enable`` may return, instead of a ``CacheHandle``, any undo callable that also has
  ``stats() -> dict``: that dict is recorded as the run's ``stats`` (its ``peak_cache_bytes``, if any, as the
  run's ``peak_cache_bytes``), for methods that are not forecache policies applied to a module.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from tqdm.auto import tqdm

from ..flops import flop_counter
from ..handle import CacheHandle
from .protocol import Benchmark, Method

#: 2: a run's peak cache is ``peak_cache_bytes``, the key ``stats()`` and traces use (1: ``cache_bytes_peak``)
SCHEMA = 2


def _undo(enabled: Any) -> None:
    if isinstance(enabled, CacheHandle):
        enabled.remove()
    elif callable(enabled):
        enabled()


def _counted(bench: Benchmark) -> tuple[Any, float]:
    """Outputs of one ``generate()`` and the FLOPs its denoiser executed."""
    name = type(bench.denoiser()).__name__
    with flop_counter() as mode:
        out = bench.generate()
    return out, float(sum(mode.get_flop_counts().get(name, {}).values()))


def _stats(enabled: Any) -> dict | None:
    """What the method recorded about its counted run: a handle's stats, or an undo object's ``stats()``."""
    if isinstance(enabled, CacheHandle):
        return enabled.stats().as_dict()
    stats = getattr(enabled, "stats", None)
    return dict(stats()) if callable(stats) else None


def _per_unit(bench: Benchmark, out: Any, wall: float, flops: float) -> dict:
    """Throughput and cost per unit of work (e.g. tokens), for benchmarks with a ``units`` hook."""
    units = getattr(bench, "units", None)
    if units is None:
        return {}
    n = int(units(out))
    return {"unit": getattr(bench, "unit", "unit"), "units": n,
            "units_per_s": n / wall if wall else float("inf"), "flops_per_unit": flops / n if n else float("nan")}


def _timed(fn: Callable[[], Any]) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _enable(method: Method, target: Any, count_flops: bool) -> Any:
    # peers have no FLOP instrumentation of their own to switch off
    return method.enable(target) if method.peer else method.enable(target, count_flops=count_flops)


def run_benchmark(
    bench: Benchmark,
    quick: bool = False,
    only: list[str] | None = None,
    repeats: int | None = None,
    progress: bool = True,
) -> dict | None:
    """Run ``bench`` and return its result in the JSON schema of DESIGN.md ("Benchmarks"), or None when
    it has no method to run (none in this mode, or none named in ``only``): there is nothing to compare.
    ``only`` holds method names (every row of that method) or row labels (``name(knob=value,...)``, one row)."""
    bench.prepare(quick)
    methods = [m for m in bench.methods(quick) if only is None or m.name in only or m.label in only]
    if not methods:
        return None
    repeats = repeats or (1 if quick else 3)
    target = bench.target()
    ref, base_flops = _counted(bench)
    base_walls: list[float] = []
    runs = []
    bar = tqdm(methods, desc=f"{bench.domain}/{bench.name}", disable=not progress, unit="method")
    for method in bar:
        bar.set_postfix_str(method.label)
        try:
            enabled = _enable(method, target, count_flops=True)
        except Exception as exc:  # a peer that cannot run here is reported, not fatal
            runs.append({"method": method.name, "params": method.params, "peer": method.peer,
                         "skipped": f"{type(exc).__name__}: {exc}"})
            continue
        try:
            out, flops = _counted(bench)
            stats = _stats(enabled)
        finally:
            _undo(enabled)
        walls = []
        for _ in range(repeats):
            base_walls.append(_timed(bench.generate))
            enabled = _enable(method, target, count_flops=False)
            try:
                walls.append(_timed(bench.generate))
            finally:
                _undo(enabled)
        wall = statistics.median(walls)
        pair_base = statistics.median(base_walls[-repeats:])
        runs.append({
            "method": method.name,
            "label": method.label,
            "params": method.params,
            "peer": method.peer,
            "wall_s": wall,
            "flops": flops,
            "speedup_wall": pair_base / wall,
            "speedup_flops": base_flops / flops if flops else float("inf"),
            "fidelity": bench.fidelity(out, ref),
            "metrics": bench.metrics(out),
            "peak_cache_bytes": stats.get("peak_cache_bytes") if stats else None,
            "stats": stats,
            **_per_unit(bench, out, wall, flops),
            **({"note": method.note} if method.note else {}),
        })
    if not base_walls:
        base_walls = [_timed(bench.generate) for _ in range(repeats)]
    return {
        "schema": SCHEMA,
        "domain": bench.domain,
        "benchmark": bench.name,
        "model": bench.model,
        "quick": quick,
        "hardware": {
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
        },
        "versions": _versions(),
        "baseline": {"wall_s": statistics.median(base_walls), "flops": base_flops, "metrics": bench.metrics(ref),
                     **_per_unit(bench, ref, statistics.median(base_walls), base_flops)},
        "runs": runs,
    }


def _versions() -> dict:
    out = {"torch": torch.__version__}
    for name in ("diffusers", "transformers", "forecache"):
        try:
            from importlib.metadata import version

            out[name] = version(name)
        except Exception:  # not installed: not part of this run
            pass
    return out
