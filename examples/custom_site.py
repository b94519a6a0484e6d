"""A site of your own: cache the output of named submodules and forecast it between computes.

    python examples/custom_site.py

The site (``CachedOutput``) and its selector (``Named``) are written against the public site
contract, ``forecache.core.runtime.Runtime`` (see ``docs/writing-a-site.md``). They are applied to
the toy transformer of ``forecache.core.testing.toy``: under ``Interval(1)`` (compute every step)
the output equals the uncached model's bit for bit; under ``Interval(3)`` the cached MLPs run one
step in three. Runs on the CPU in a second or two.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch

from forecache.core import Policy, Site, apply
from forecache.core.forecasters import Forecaster
from forecache.core.selectors.base import Selector
from forecache.core.testing.toy import ToyAdapter, ToyTransformer, sample, toy_inputs
from forecache.core.triggers import Interval, Trigger


class CachedOutput(Site):
    """Caches one submodule's output (one tensor in, one tensor out). Rows the trigger lets skip
    take the forecaster's value; the other rows run the module, on their rows only."""

    def __init__(self, name, runtime, module, trigger, forecaster, window=None, key=None):
        super().__init__(name, runtime, trigger, forecaster, window, key)
        if trigger.signal not in (None, "input"):
            raise ValueError(f"{type(trigger).__name__} needs the signal {trigger.signal!r}, which this site "
                             "cannot give; use a trigger without a signal (Interval) or one on the input")
        self.module = module

    def install(self):
        self.runtime.wrap(self.module, self.forward, self)

    def forward(self, original, x):
        ctx = self.runtime.context(self)
        if ctx is None:  # a must-compute call: run the module as is
            return original(x)
        plans = self.plan(ctx, x, x if self.trigger.signal == "input" else None)
        key = (self.name, tuple(x.shape[1:]))  # FLOPs are counted once per site and input shape
        if plans.forecast is None:  # every row computes
            out = self.runtime.run(key, ctx.batch, lambda: original(x))
        else:
            forecast = plans.forecast[0]  # the forecasts of the rows that skip, stacked in row order
            self.runtime.skipped(key, len(forecast))
            out = forecast.new_empty((ctx.batch, *forecast.shape[1:]))
            out[plans.rows(False)] = forecast
            if plans.computing:
                run = plans.rows(True)
                out[run] = self.runtime.run(key, len(run), lambda: original(x[run]))
        self.observe(ctx, plans, x, (out,), (out,))
        return out


@dataclass
class Named(Selector):
    """The submodules at the given paths (``model.get_submodule`` names), each a site of its own."""

    names: tuple[str, ...] = ()
    when: Trigger | None = None
    what: Forecaster | None = None
    window: tuple[float, float] | None = None
    key: Callable | None = None

    def validate(self):
        super().validate()
        if not self.names or isinstance(self.names, str):
            raise ValueError(f"Named.names={self.names!r}: give a tuple of submodule paths, e.g. ('blocks.3.ff',)")

    def build(self, runtime, model, adapter, policy):
        trigger, forecaster = self.trigger_for(policy, adapter), self.forecaster_for(policy, adapter)
        return [
            CachedOutput(name, runtime, model.get_submodule(name), trigger, forecaster, self.window, self.key)
            for name in self.names
        ]


NAMES = ("blocks.2.ff", "blocks.3.ff")  # the image-stream MLPs of the toy's last two blocks
STEPS = torch.linspace(1.0, 0.05, 12)


def toy():
    """The toy transformer (fixed random weights), its adapter and a batch of two inputs."""
    torch.manual_seed(0)
    return ToyTransformer().eval(), ToyAdapter(), toy_inputs(batch=2)


def main() -> None:
    model, adapter, inputs = toy()
    reference = sample(model, inputs, STEPS)
    for interval in (1, 3):
        handle = apply(model, Policy(where=Named(NAMES), when=Interval(interval)), adapter)
        out = sample(model, inputs, STEPS)
        actions = [d.action for d in handle.trace()]
        print(f"--- Interval({interval}): bit-identical to uncached: {torch.equal(out, reference)}, "
              f"max |diff| {(out - reference).abs().max().item():.2e}, "
              f"{actions.count('cached')} of {len(actions)} decisions cached")
        print(handle.stats())
        handle.remove()
    print("after remove(), bit-identical to uncached:", torch.equal(sample(model, inputs, STEPS), reference))


if __name__ == "__main__":
    main()
