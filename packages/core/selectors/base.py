"""The `where` axis: which computation of a model is cached."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING

from ..forecasters.base import Forecaster
from ..triggers.base import Trigger

if TYPE_CHECKING:
    from torch import nn

    from ..adapters.base import Adapter
    from ..runtime import Runtime
    from ..sites.base import Site


class Selector(abc.ABC):
    """Builds the sites of one policy on one model.

    ``when`` / ``what`` override the policy's trigger and forecaster for this selector's sites,
    so one policy can mix granularities (PAB's per-module intervals, Δ-DiT's two stages).
    ``window`` = (lo, hi) restricts caching to steps whose noise level (the adapter's
    ``noise_level(t)``: 1 at pure noise, 0 at the data) lies in [lo, hi].
    """

    when: Trigger | dict[str, Trigger] | None = None
    what: Forecaster | None = None
    window: tuple[float, float] | None = None
    #: ``key(ctx, row) -> hashable``: the history each decision reads and writes (``None``: one per
    #: CFG branch and row; ``forecache.core.sites.base.by_segment``: one per segment too)
    key = None

    def validate(self) -> None:
        if self.key is not None and not callable(self.key):
            raise ValueError(
                f"{type(self).__name__}.key={self.key!r} is not callable; pass key(ctx, row) -> hashable "
                "(e.g. forecache.core.by_segment), or None for one history per branch and row"
            )
        if self.window is not None:
            lo, hi = self.window
            if not lo <= hi:
                raise ValueError(
                    f"{type(self).__name__}.window={self.window} needs lo <= hi (noise levels, 1 = pure noise)"
                )

    @abc.abstractmethod
    def build(self, runtime: Runtime, model: nn.Module, adapter: Adapter, policy) -> list[Site]:
        """The sites this selector places on ``model`` (not yet installed)."""

    def trigger_for(self, policy, adapter, role: str | None = None) -> Trigger:
        if isinstance(self.when, dict):
            return self.when.get(role, policy.when).bind(adapter)
        return (self.when or policy.when).bind(adapter)

    def forecaster_for(self, policy, adapter) -> Forecaster:
        return (self.what or policy.what).bind(adapter)

    def describe(self) -> dict:
        out = {"type": type(self).__name__}
        for k, v in vars(self).items():
            if isinstance(v, (Trigger, Forecaster)):
                v = {"type": type(v).__name__, **v.describe()}
            elif callable(v):
                v = getattr(v, "__name__", type(v).__name__)
            elif isinstance(v, dict):
                v = {kk: {"type": type(vv).__name__, **vv.describe()} if isinstance(vv, Trigger) else vv for kk, vv in v.items()}
            out[k] = v
        return out


def pick(items: list, blocks: slice | tuple[int, ...] | None, what: str) -> list:
    """``items`` restricted to a slice or explicit indices (negative allowed)."""
    if blocks is None:
        return list(items)
    if isinstance(blocks, slice):
        return list(items[blocks])
    n = len(items)
    bad = [i for i in blocks if not -n <= i < n]
    if bad:
        raise ValueError(f"{what} indices {bad} are out of range for {n} blocks")
    return [items[i] for i in blocks]
