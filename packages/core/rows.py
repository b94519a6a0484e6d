"""Running a call on some rows of a batch, so rows that must compute do and the others reuse."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .adapters.base import BlockIO


def take_rows(value: Any, idx: torch.Tensor, batch: int, stacked: bool = False) -> Any:
    """``value`` restricted to rows ``idx``: tensors (inside tuples, lists and dicts too) whose
    first dimension is the batch are indexed (``stacked``: several copies of the batch, each
    indexed); everything else passes as is."""
    if torch.is_tensor(value):
        if value.dim() == 0:
            return value
        idx = torch.as_tensor(idx, device=value.device)
        if stacked and value.shape[0] % batch == 0 and value.shape[0] != batch:
            return value.unflatten(0, (-1, batch))[:, idx].flatten(0, 1)
        return value.index_select(0, idx) if value.shape[0] == batch else value
    if isinstance(value, (tuple, list)):
        return type(value)(take_rows(v, idx, batch, stacked) for v in value)
    if isinstance(value, dict):
        return {k: take_rows(v, idx, batch, stacked) for k, v in value.items()}
    return value


def select_rows(io: BlockIO, arguments: Mapping[str, Any], idx, batch: int) -> dict[str, Any]:
    """Bound arguments of a block call restricted to rows ``idx``, by the block's convention:
    ``io.unbatched`` arguments pass unchanged, ``io.stacked`` ones take the rows of every copy."""
    return {
        name: value if name in io.unbatched else take_rows(value, idx, batch, name in io.stacked)
        for name, value in arguments.items()
    }


def slice_call(bound: inspect.BoundArguments, idx: torch.Tensor, batch: int, io: BlockIO) -> tuple[tuple, dict]:
    """``(args, kwargs)`` of a bound call restricted to rows ``idx``."""
    sliced = inspect.BoundArguments(bound.signature, select_rows(io, bound.arguments, idx, batch))
    return sliced.args, sliced.kwargs
def put_rows(full: torch.Tensor, idx: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
    """A copy of ``full`` whose rows ``idx`` are ``part``."""
    out = full.clone()
    out[idx.to(full.device)] = part.to(full.dtype)
    return out


def merge_rows(
    batch: int, idx: torch.Tensor, fresh: tuple[torch.Tensor, ...], skip: torch.Tensor, forecast: tuple[torch.Tensor, ...]
) -> tuple[torch.Tensor, ...]:
    """Whole-batch parts from the rows ``idx`` that computed (``fresh``) and the rows ``skip`` that
    took the forecast."""
    out = []
    for f, c in zip(fresh, forecast):
        full = f.new_empty((batch, *f.shape[1:]))
        full[idx.to(f.device)] = f
        full[skip.to(f.device)] = c.to(f.dtype)
        out.append(full)
    return tuple(out)


def row(x: torch.Tensor | None, r: int) -> torch.Tensor | None:
    return None if x is None else x[r : r + 1]
