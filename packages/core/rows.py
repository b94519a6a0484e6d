"""Running a call on some rows of a batch, so rows that must compute do and the others reuse."""

from __future__ import annotations

import inspect
from typing import Any

import torch


def take_rows(value: Any, idx: torch.Tensor, batch: int) -> Any:
    """``value`` restricted to rows ``idx``: tensors (and tuples/lists/dicts of them) whose first
    dimension is the batch are indexed; everything else is passed as is."""
    if torch.is_tensor(value):
        return value.index_select(0, idx.to(value.device)) if value.dim() > 0 and value.shape[0] == batch else value
    if isinstance(value, (tuple, list)):
        return type(value)(take_rows(v, idx, batch) for v in value)
    if isinstance(value, dict):
        return {k: take_rows(v, idx, batch) for k, v in value.items()}
    return value


def slice_call(
    bound: inspect.BoundArguments, idx: torch.Tensor, batch: int, unbatched: tuple[str, ...] = ()
) -> tuple[tuple, dict]:
    """Arguments of a bound call restricted to rows ``idx``, except those named in ``unbatched``
    (tables without a batch dimension that may happen to be ``batch`` long)."""
    arguments = {
        name: value if name in unbatched else take_rows(value, idx, batch)
        for name, value in bound.arguments.items()
    }
    sliced = inspect.BoundArguments(bound.signature, arguments)
    return sliced.args, sliced.kwargs


def put_rows(full: torch.Tensor, idx: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
    """A copy of ``full`` whose rows ``idx`` are ``part``."""
    out = full.clone()
    out[idx.to(full.device)] = part.to(full.dtype)
    return out


def row(x: torch.Tensor | None, r: int) -> torch.Tensor | None:
    return None if x is None else x[r : r + 1]
