"""Block spans: the whole block stack, a range of it, or every block on its own."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..forecasters.base import Forecaster
from ..sites.span import SpanSite
from ..triggers.base import Trigger
from .base import Selector


@dataclass
class Blocks(Selector):
    """Blocks ``start:stop`` of the adapter's block sequence as one cached span.

    ``probe`` leading blocks always run and feed probe-residual triggers (FBCache: 1; DBCache's
    Fn); ``tail`` trailing blocks always run and correct (DBCache's Bn) or verify (SpeCa).
    ``per_block=True`` makes every block a span of its own, with its own decisions (Foresight's
    per-layer reuse).
    """

    start: int = 0
    stop: int | None = None
    probe: int = 0
    tail: int = 0
    per_block: bool = False
    when: Trigger | None = None
    what: Forecaster | None = None
    window: tuple[float, float] | None = None
    key: Callable | None = None

    def validate(self) -> None:
        super().validate()
        if self.probe < 0 or self.tail < 0:
            raise ValueError(f"Blocks(probe={self.probe}, tail={self.tail}): both must be >= 0")
        if self.per_block and (self.probe or self.tail):
            raise ValueError("Blocks(per_block=True) caches each block whole; set probe=0 and tail=0")

    def build(self, runtime, model, adapter, policy):
        blocks = adapter.blocks(model)[self.start : self.stop]
        if not blocks:
            raise ValueError(
                f"Blocks(start={self.start}, stop={self.stop}) selects no block of {type(model).__name__}, "
                f"which has {len(adapter.blocks(model))}"
            )
        groups = [[b] for b in blocks] if self.per_block else [blocks]
        return [
            SpanSite(
                f"blocks[{g[0].name}..{g[-1].name}]" if len(g) > 1 else g[0].name,
                runtime,
                adapter,
                g,
                self.trigger_for(policy, adapter),
                self.forecaster_for(policy, adapter),
                probe=self.probe,
                tail=self.tail,
                window=self.window,
                key=self.key,
            )
            for g in groups
        ]
