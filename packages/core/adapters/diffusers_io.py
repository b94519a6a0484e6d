"""Block call conventions that plain :class:`BlockIO` cannot state, and batch-row selection.

Three diffusers conventions need more than ``state``/``returns``/``unbatched``:

- a block that consumes a stream and returns ``None`` in its place (SD3's last ``JointTransformerBlock``,
  built with ``context_pre_only=True``, returns ``(None, hidden_states)``): the stream is named in
  ``returns`` and ``dropped`` but not in ``state``, so the state shrinks to what really flows on;
- an argument whose first dimension stacks the batch several times (Qwen-Image edit models with
  ``zero_cond_t=True`` pass ``temb`` as ``cat([temb(t), temb(0)])``, 2B rows): named in ``stacked``, so
  row selection takes row r from every stacked copy;
- a block whose output cannot stand in for its input (UNet down and up blocks change resolution and
  return skip connections): ``passthrough=False`` makes :meth:`DiffusersBlockIO.make_output` refuse.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .base import BlockIO

Rows = Sequence[int] | torch.Tensor | slice


@dataclass(frozen=True)
class DiffusersBlockIO(BlockIO):
    """:class:`BlockIO` plus ``dropped``, ``stacked`` and ``passthrough`` (see the module docstring)."""

    dropped: tuple[str, ...] = ()
    stacked: tuple[str, ...] = ()
    passthrough: bool = True
    #: why ``passthrough`` is False, shown in the error
    passthrough_note: str = ""

    def __post_init__(self) -> None:
        if not self.state:
            raise ValueError("BlockIO.state is empty: name at least the hidden-states argument")
        if set(self.dropped) & set(self.state):
            raise ValueError(f"dropped {self.dropped} overlaps state {self.state}: a stream either flows or is dropped")
        if self.returns is not None and set(self.returns) != set(self.state) | set(self.dropped):
            raise ValueError(
                f"returns {self.returns} must name exactly the state {self.state} plus the dropped streams "
                f"{self.dropped}"
            )

    def make_output(self, state: tuple[torch.Tensor, ...]) -> Any:
        if not self.passthrough:
            raise NotImplementedError(
                f"this block's output cannot be built from its state: {self.passthrough_note or 'passthrough=False'}"
            )
        if self.returns is None:
            return state[0]
        by_name = dict(zip(self.state, state))
        return tuple(by_name.get(n) for n in self.returns)  # dropped streams come back as None


def select_rows(io: BlockIO, arguments: Mapping[str, Any], rows: Rows, batch: int) -> dict[str, Any]:
    """The bound arguments of a block call restricted to batch rows ``rows``.

    Tensors whose first dimension equals ``batch`` are indexed, inside tuples, lists and dicts too (LTX
    passes its per-sample rotary table as a tuple; Hunyuan's extra positional arguments arrive as
    ``*args``). Arguments named in ``io.unbatched`` pass unchanged; arguments named in ``stacked`` (a
    :class:`DiffusersBlockIO` field) take the rows from each stacked copy of the batch. Anything else,
    including tensors whose first dimension is not the batch, passes unchanged.
    """
    stacked = set(getattr(io, "stacked", ()))
    out: dict[str, Any] = {}
    for name, value in arguments.items():
        if name in io.unbatched:
            out[name] = value
        else:
            out[name] = _take(value, rows, batch, name in stacked)
    return out


def _take(value: Any, rows: Rows, batch: int, stacked: bool) -> Any:
    if torch.is_tensor(value):
        if value.ndim == 0:
            return value
        if stacked and value.shape[0] % batch == 0:
            return value.unflatten(0, (-1, batch))[:, rows].flatten(0, 1)
        return value[rows] if value.shape[0] == batch else value
    if isinstance(value, tuple | list):
        return type(value)(_take(v, rows, batch, stacked) for v in value)
    if isinstance(value, dict):
        return {k: _take(v, rows, batch, stacked) for k, v in value.items()}
    return value
