"""Caching policies for molecule flow-matching models: periodic full evaluations, forecasts between.

What is cached is the network's whole output dict (coordinates and every logit head), through
``forecache.core.ModelOutput``: between two real evaluations each tensor is forecast from the last
computed outputs, and the forecast is used exactly as a computed output would be (velocity and
self-conditioning). Sommer et al. ("Predictive Feature Caching for Training-free Acceleration of
Molecular Geometry Generation", arXiv 2510.04646) forecast the hidden state of the backbone's last
block and run the output heads on it; forecasting the output dict instead needs nothing of the
model but its output, so it works for any velocity model, and a skipped step skips the heads too.
The two differ where the heads are nonlinear (the softmax of the logits is taken after the
forecast here). ``where="layers"`` is closer to the paper: it forecasts the residual of the layer
stack (what the layers add to their input) and runs the embedding and the heads at every step, on
the fresh state and self-conditioning input; a skipped step then still costs the embedding and the
heads (7% of a call of the reference model), and the guard, which checks outputs, does not apply.

Every preset computes the first ``warmup`` steps, then one step in ``interval``, and the last
``cooldown`` steps; ``interval=1`` never skips (bit-identical to the uncached sampler). The
chemistry guard (``forecache.science.guards.MoleculeGuard``) vetoes implausible forecasts unless
``guard=None``. Extra keyword options go to ``forecache.core.Policy`` (``storage_dtype``,
``max_cache_bytes``).

Each preset registers in core's registry with ``interval`` as its strength knob (the
``forecache.presets`` entry point names this module), so ``forecache presets --domain science``
lists them and ``forecache.core.calibration.search_knob`` searches their interval.
"""

from __future__ import annotations

from forecache.core import Blocks, ModelOutput, Policy
from forecache.core.forecasters import AdamsBashforth, Taylor
from forecache.core.presets.registry import preset
from forecache.core.triggers.interval import Interval

from .guards import MoleculeGuard

_DEFAULT_GUARD = MoleculeGuard()


#: what a preset forecasts: the network's output dict, or the residual of its layer stack
WHERE = ("output", "layers")


def _policy(name: str, paper: str, interval: int, warmup: int, cooldown: int, what, guard, where, options) -> Policy:
    if where not in WHERE:
        raise ValueError(f"where={where!r} is unknown; use 'output' (the output dict) or 'layers' (the layer stack's residual)")
    if where == "layers" and guard is not None and guard is not _DEFAULT_GUARD:
        raise ValueError(
            "a guard checks forecast outputs, and where='layers' forecasts the layer stack, whose outputs the "
            "heads compute at every step; pass guard=None or where='output'"
        )
    selector = ModelOutput(guard=guard) if where == "output" else Blocks()
    return Policy(
        where=selector, when=Interval(interval, warmup, cooldown), what=what, name=name, paper=paper, **options,
    )


@preset(domain="science", knob="interval")
def ab_forecast(
    interval: int = 3,
    order: int = 2,
    warmup: int = 2,
    cooldown: int = 0,
    guard: MoleculeGuard | None = _DEFAULT_GUARD,
    basis: str = "index",
    points: int | None = None,
    where: str = "output",
    **options,
) -> Policy:
    """AB-Cache (arXiv 2504.10540) on a molecule model's output, as Sommer et al. (arXiv
    2510.04646) apply it: compute every ``interval`` steps, and in between extrapolate each output
    tensor from the last ``order`` computed ones with Adams-Bashforth weights on the *step index*:
    the paper's binomial weights (2, -1) for order 2, (3, -3, 1) for order 3, exact for outputs
    that are polynomials of degree ``order - 1`` in the step index. ``basis="time"`` computes them
    from the real time gaps instead (:func:`ab_forecast_timed`).

    ``points`` (this project's extension, off by default) fits the polynomial to the last ``points``
    computed outputs by least squares instead (``AdamsBashforth.points``): on a model whose
    self-conditioned outputs alternate between steps, as the reference model's do late in sampling,
    ``order=4, points=7`` halves the quality AB loses at interval 3 (see ADAPTER.md).

    The last step's prediction is the sample: a schedule that computes it (``warmup=1`` at interval 3 of
    100 steps, or ``cooldown=1``) keeps the geometry (ADAPTER.md: "Compute the last step").

    A forecast step costs no network evaluation, so a finer sampler grid at a longer interval keeps the
    evaluations and shortens the steps between them: ``sample(..., steps=199)`` with ``interval=6, order=4,
    points=7, warmup=1`` computes steps 0, 6, ..., 198 (34 evaluations, the last step included), and on the
    reference model it keeps the 100-step quality (ADAPTER.md: "Forecasts on a finer grid").

    ``where``: ``"output"`` (default) forecasts the output dict; ``"layers"`` the layer stack's
    residual, with the embedding and heads run at every step (see the module docstring).

    Defaults: interval 3, order 2 (AB-Cache's reference setting), warm-up 2 steps, no cool-down,
    the default :class:`MoleculeGuard` (not applied with ``where="layers"``).
    """
    name = "ab_forecast" if basis == "index" else "ab_forecast_timed"
    return _policy(
        name, "arXiv:2504.10540; arXiv:2510.04646", interval, warmup, cooldown,
        AdamsBashforth(order, basis=basis, points=points), guard, where, options,
    )


@preset(domain="science", knob="interval")
def ab_forecast_timed(interval: int = 3, order: int = 2, **options) -> Policy:
    """Step-distance-aware Adams-Bashforth: :func:`ab_forecast` with the weights computed from the
    real time gaps of the grid (Lagrange extrapolation in ``t``), exact for outputs that are
    polynomials of degree ``order - 1`` in ``t`` on any grid (``log`` included). On a uniform grid
    it equals :func:`ab_forecast`. Same defaults and options.
    """
    return ab_forecast(interval, order, basis="time", **options)


@preset(domain="science", knob="interval")
def taylor_forecast(
    interval: int = 3,
    order: int = 1,
    warmup: int = 2,
    cooldown: int = 0,
    guard: MoleculeGuard | None = _DEFAULT_GUARD,
    where: str = "output",
    **options,
) -> Policy:
    """TaylorSeer (arXiv 2503.06923) on a molecule model's output, the other forecaster Sommer et al.
    (arXiv 2510.04646) study: a Taylor expansion of order ``order`` around the last computed step,
    derivatives from divided differences on the real times (``forecache.core.forecasters.Taylor``;
    ``Taylor(m)`` is ``ab_forecast_timed(order=m + 1)``'s polynomial in another basis).

    Defaults: interval 3, order 1, warm-up 2 steps, no cool-down, the default :class:`MoleculeGuard`,
    ``where="output"`` (as in :func:`ab_forecast`).
    """
    return _policy(
        "taylor_forecast", "arXiv:2503.06923; arXiv:2510.04646", interval, warmup, cooldown,
        Taylor(order), guard, where, options,
    )
