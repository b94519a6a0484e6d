"""A submodule (self-attention, cross-attention, MLP) whose output is cached or forecast as is.

This is the granularity of FORA, PAB, TaylorSeer, HiCache, FoCa and AB-Cache: each layer's
attention and MLP outputs are features of their own, with their own history and decisions.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..adapters.base import BlockIO
from ..rows import merge_rows, slice_call
from .base import CallContext, Plans, Site

if TYPE_CHECKING:
    from ..runtime import Runtime


_SLOT = object()  # where a tensor goes back when an output is rebuilt


def flatten(out: Any) -> tuple[tuple[torch.Tensor, ...], Any]:
    """The tensors of a module output, and a template to rebuild the output from new tensors.

    A tensor, a tuple or list, or a dict (the dict's tensor values, in key order; other values,
    such as ``None`` for an absent head, pass through unchanged)."""
    if torch.is_tensor(out):
        return (out,), None
    if isinstance(out, dict):
        parts = tuple(v for v in out.values() if torch.is_tensor(v))
        return parts, (_Mapping(type(out)), [(k, _SLOT if torch.is_tensor(v) else v) for k, v in out.items()])
    if isinstance(out, (tuple, list)):
        parts = tuple(v for v in out if torch.is_tensor(v))
        template = (type(out), [_SLOT if torch.is_tensor(v) else v for v in out])
        return parts, template
    raise TypeError(
        f"cannot cache a module output of type {type(out).__name__}; expected a tensor, or a tuple, "
        "list or dict of tensors"
    )


class _Mapping:
    """Marks a dict template: ``kind`` is the dict's class, items are (key, value or slot)."""

    def __init__(self, kind: type) -> None:
        self.kind = kind


def rebuild(template: Any, parts: tuple[torch.Tensor, ...]) -> Any:
    if template is None:
        return parts[0]
    kind, items = template
    it = iter(parts)
    if isinstance(kind, _Mapping):
        values = {k: next(it) if v is _SLOT else v for k, v in items}
        return values if kind.kind is dict else kind.kind(**values)  # OrderedDict, diffusers' BaseOutput
    return kind([next(it) if v is _SLOT else v for v in items])


class ModuleSite(Site):
    def __init__(
        self,
        name: str,
        runtime: Runtime,
        module: nn.Module,
        trigger,
        forecaster,
        window: tuple[float, float] | None = None,
        io: BlockIO = BlockIO(),
        key=None,
    ) -> None:
        super().__init__(name, runtime, trigger, forecaster, window, key)
        self.module = module
        self.io = io  # the enclosing block's convention: which arguments carry no batch
        self._template: Any = None
        self._signature: inspect.Signature | None = None

    def install(self) -> None:
        original = self.runtime.wrap(self.module, self._call, self)
        self._signature = inspect.signature(original)

    def _call(self, original, *args, **kwargs):
        ctx = self.runtime.context(self)
        if ctx is None:
            return original(*args, **kwargs)
        tensors = list(filter(torch.is_tensor, (*args, *kwargs.values())))
        if not tensors:
            raise TypeError(f"site {self.name}: the module call has no tensor argument to cache on")
        x = tensors[0]
        if x.shape[0] != ctx.batch:  # attention over frames may fold frames into the batch
            ctx = dataclasses.replace(ctx, batch=int(x.shape[0]))
        plans = self.plan(ctx, x, x if self.trigger.signal == "input" else None)
        key = (self.name, (x.shape[1:],) if len(tensors) == 1 else tuple([v.shape[1:] for v in tensors]))
        parts = self._execute(ctx, plans, original, args, kwargs, key)
        self.observe(ctx, plans, x, parts, parts)
        return parts[0] if self._template is None else rebuild(self._template, parts)

    def _execute(self, ctx: CallContext, plans: Plans, original, args, kwargs, key) -> tuple[torch.Tensor, ...]:
        runtime, batch = self.runtime, ctx.batch
        if plans.forecast is None:
            parts, self._template = flatten(runtime.run(key, batch, lambda: original(*args, **kwargs)))
            return parts
        forecast = plans.forecast
        runtime.skipped(key, len(forecast[0]))
        if plans.computing == 0:
            return forecast
        idx, skip_idx = plans.rows(True), plans.rows(False)
        sliced_args, sliced_kwargs = slice_call(self._signature.bind(*args, **kwargs), idx, batch, self.io)
        fresh, self._template = flatten(runtime.run(key, len(idx), lambda: original(*sliced_args, **sliced_kwargs)))
        return merge_rows(batch, idx, fresh, skip_idx, forecast)
