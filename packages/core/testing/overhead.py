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
