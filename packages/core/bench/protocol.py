"""What a benchmark provides, and what a method is, for the runner."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from torch import nn

#: entry-point group through which domains register their benchmarks (name -> factory)
ENTRY_POINT_GROUP = "forecache.benchmarks"


@dataclass
class Method:
    """One row of a benchmark: a forecache policy or a peer implementation at given knobs.

    ``enable(target)`` turns the method on for the benchmark's target (pipeline or denoiser) and
    returns what turns it off again: a ``CacheHandle`` (for forecache policies, whose ``stats()``
    the runner also records) or a plain callable. forecache methods' ``enable`` also takes
    ``count_flops`` (see :func:`policy_method`); peers' does not.
    """

    name: str
    params: dict = field(default_factory=dict)
    enable: Callable[[Any], Any] = lambda target: (lambda: None)
    peer: bool = False
    note: str = ""

    @property
    def label(self) -> str:
        knobs = ",".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.name}({knobs})" if knobs else self.name


@runtime_checkable
class Benchmark(Protocol):
    """A workload with fixed inputs and seeds, measured the same way for every method.

    ``prepare(quick)`` loads the model and inputs once (``quick``: fewer inputs). ``generate()``
    runs every input and returns the outputs; it must be deterministic for a given method.
    ``fidelity(out, ref)`` compares a method's outputs with the uncached ones of the same seeds;
    ``metrics(out)`` gives task metrics (accuracy, validity, ...) measured on any outputs.
    """

    domain: str
    name: str
    model: str

    def prepare(self, quick: bool) -> None: ...

    def target(self) -> Any: ...

    def denoiser(self) -> nn.Module: ...

    def generate(self) -> Any: ...

    def fidelity(self, out: Any, ref: Any) -> dict[str, float]: ...

    def metrics(self, out: Any) -> dict[str, float]: ...

    def methods(self, quick: bool) -> list[Method]: ...


def policy_method(name: str, make: Callable[..., Any], **params) -> Method:
    """A forecache policy as a benchmark row: ``make(**params)`` builds the policy (a preset)."""
    from ..apply import apply

    def enable(target: Any, count_flops: bool = True):
        return apply(target, make(**params), count_flops=count_flops)

    return Method(name=name, params=params, enable=enable)
