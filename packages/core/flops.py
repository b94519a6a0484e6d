"""Counting FLOPs once per (site, shape), so stats() can report the compute actually executed."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from torch.utils.flop_counter import FlopCounterMode


class FlopMeter:
    """Per-row FLOPs of each cached computation, counted by FlopCounterMode on its first real run
    at a given shape (the batch dimension excluded), then reused: counting every call would cost
    a Python dispatch per op."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._per_row: dict[Hashable, float] = {}

    def run(self, key: Hashable, rows: int, fn: Callable[[], Any]) -> Any:
        if not self.enabled or key in self._per_row or rows <= 0:
            return fn()
        with FlopCounterMode(display=False) as mode:
            out = fn()
        self._per_row[key] = mode.get_total_flops() / rows
        return out

    def per_row(self, key: Hashable) -> float | None:
        return self._per_row.get(key)
