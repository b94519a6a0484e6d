"""Counting the runtime's own Python work: function calls made inside forecache per model call.

A deterministic measure of bookkeeping overhead (unlike wall time, it does not depend on the
machine or its load), so tests may assert it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: the folder holding forecache.core (its testing helpers and test files are not counted)
_CORE = str(Path(__file__).resolve().parents[1])
_TESTING = str(Path(__file__).resolve().parent)


def count_calls(fn: Callable[[], Any], roots: tuple[str, ...] = (_CORE,)) -> tuple[Any, int]:
    """``fn()`` and the number of Python function calls it made into files under ``roots``
    (default: forecache.core, without its testing helpers)."""
    calls = 0

    def profile(frame, event, arg):
        nonlocal calls
        if event == "call":
            name = frame.f_code.co_filename
            if name.startswith(roots) and not name.startswith(_TESTING):
                calls += 1

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        out = fn()
    finally:
        sys.setprofile(previous)
    return out, calls


def calls_per_model_call(preset: str, batch: int = 1, steps: int = 12) -> float:
    """forecache.core's Python calls per model call of ``preset`` (its defaults) on the 4-block toy
    transformer, over a second generation of ``steps`` Euler steps (the first sizes the caches)."""
    import torch

    from .. import apply, presets
    from .toy import ToyAdapter, ToyTransformer, sample, toy_inputs

    torch.manual_seed(0)
    model, inputs = ToyTransformer().eval(), toy_inputs(batch=batch)
    schedule = torch.linspace(1.0, 0.05, steps)
    handle = apply(model, presets.PRESETS[preset](), ToyAdapter(), count_flops=False)
    try:
        sample(model, inputs, schedule)
        _, calls = count_calls(lambda: sample(model, inputs, schedule))
    finally:
        handle.remove()
    return calls / steps


if __name__ == "__main__":  # python -m forecache.core.testing.overhead [preset ...]
    import sys

    for name in sys.argv[1:] or ["teacache", "fbcache", "fora", "toca", "taylorseer", "hicache", "foca"]:
        print(f"{name:<12} " + "  ".join(f"batch {b}: {calls_per_model_call(name, b):6.0f}" for b in (1, 2)))
