"""Counting FLOPs once per (site, shape), so stats() can report the compute actually executed."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


#: fused attention kernels torch's counter has no formula for; without them the attention of every model
#: run on a CPU (``scaled_dot_product_attention`` dispatches to the CPU flash kernel) would count 0 FLOPs
_MISSING_FORMULAS = {
    op: _sdpa_flops for name in ("_scaled_dot_product_flash_attention_for_cpu",)
    if (op := getattr(torch.ops.aten, name, None)) is not None
}


def flop_counter() -> FlopCounterMode:
    """A ``FlopCounterMode`` (no display) that also counts the CPU's fused attention: QK^T and AV,
    ``4·n_q·n_k·d`` per head and row, as torch counts the CUDA attention kernels."""
    return FlopCounterMode(display=False, custom_mapping=_MISSING_FORMULAS)


class FlopMeter:
    """Per-row FLOPs of each cached computation, counted by FlopCounterMode on its first real run
    at a given shape (the batch dimension excluded), then reused: counting every call would cost
    a Python dispatch per op."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        #: per-row FLOPs of every key counted so far
        self.counts: dict[Hashable, float] = {}

    def run(self, key: Hashable, rows: int, fn: Callable[[], Any]) -> Any:
        if not self.enabled or key in self.counts or rows <= 0:
            return fn()
        with flop_counter() as mode:
            out = fn()
        self.counts[key] = mode.get_total_flops() / rows
        return out

    def declare(self, key: Hashable, per_row: float) -> None:
        """``key``'s per-row FLOPs, known analytically: it is never counted by FlopCounterMode."""
        if self.enabled:
            self.counts[key] = float(per_row)

    def per_row(self, key: Hashable) -> float | None:
        return self.counts.get(key)
