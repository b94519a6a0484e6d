"""Predictive presets: between computed steps, features are forecast rather than reused."""

from __future__ import annotations

from ..forecasters.adams_bashforth import AdamsBashforth
from ..forecasters.foca import FoCa
from ..forecasters.frequency import FrequencySplit
from ..forecasters.hermite import Hermite
from ..forecasters.taylor import Taylor
from ..policy import Policy
from ..selectors.blocks import Blocks
from ..selectors.submodules import Submodules
from ..triggers.interval import Interval
from ..triggers.speculative import Speculative
from .profiled import accepts_profile
from .registry import preset

#: every layer's attention and MLP outputs, the granularity of TaylorSeer and its successors
_LAYERS = Submodules(("attn", "mlp", "mlp_context"))


@preset(domain="core", knob="interval")
@accepts_profile
def taylorseer(interval: int = 5, order: int = 2, warmup: int = 3, **options) -> Policy:
    """TaylorSeer: From Reusing to Forecasting (arXiv 2503.06923).

    Every layer's attention and MLP outputs are computed every ``interval`` steps and forecast in
    between by a Taylor expansion of order ``order`` built from the computed points; the first
    ``warmup`` steps compute. Defaults are the reference FLUX script's "fast" mode
    (cache_interval 5, max_order 2, first_enhance 3). Derivatives come from divided differences on
    the real time coordinates (see ``forecache.core.forecasters.taylor``). ``interval=1`` never
    skips.
    """
    return Policy(
        where=_LAYERS, when=Interval(interval, warmup), what=Taylor(order),
        name="taylorseer", paper="arXiv:2503.06923", **options,
    )


@preset(domain="core", knob="interval")
@accepts_profile
def hicache(interval: int = 5, order: int = 2, sigma: float = 0.5, warmup: int = 3, **options) -> Policy:
    """HiCache: Hermite Polynomial-based Feature Caching (arXiv 2508.16984).

    TaylorSeer's schedule and granularity with a Hermite basis contracted by ``sigma``
    (see ``forecache.core.forecasters.hermite`` for the basis and default). ``interval=1`` never
    skips.
    """
    return Policy(
        where=_LAYERS, when=Interval(interval, warmup), what=Hermite(order, sigma),
        name="hicache", paper="arXiv:2508.16984", **options,
    )


@preset(domain="core", knob="interval")
@accepts_profile
def abcache(interval: int = 3, order: int = 2, warmup: int = 2, **options) -> Policy:
    """AB-Cache: Adams-Bashforth Cached Feature Reuse (arXiv 2504.10540).

    Every layer's outputs are extrapolated with k-th order Adams-Bashforth coefficients on the
    real time grid between computed steps. ``interval=1`` never skips.
    """
    return Policy(
        where=_LAYERS, when=Interval(interval, warmup), what=AdamsBashforth(order),
        name="abcache", paper="arXiv:2504.10540", **options,
    )


@preset(domain="core", knob="interval")
@accepts_profile
def foca(interval: int = 5, warmup: int = 3, derivative_order: int = 1, **options) -> Policy:
    """FoCa: Forecast then Calibrate (arXiv 2508.16211).

    Every layer's outputs are integrated across skipped steps with a BDF2 predictor and a Heun
    corrector (see ``forecache.core.forecasters.foca``). ``interval=1`` never skips.
    """
    return Policy(
        where=_LAYERS, when=Interval(interval, warmup), what=FoCa(derivative_order),
        name="foca", paper="arXiv:2508.16211", **options,
    )


@preset(domain="core", knob="interval")
@accepts_profile
def freqca(interval: int = 5, warmup: int = 3, cutoff: float = 0.1, crf: bool = True, **options) -> Policy:
    """FreqCa: Frequency-Aware Caching (arXiv 2510.08669).

    The low frequency band is reused and the high band forecast with a second-order Hermite
    predictor. With ``crf=True`` (the paper's Cumulative Residual Feature) one residual of the
    whole block stack is cached per row, O(1) in depth; ``crf=False`` caches every layer's
    outputs instead. ``interval=1`` never skips.
    """
    where = Blocks() if crf else _LAYERS
    return Policy(
        where=where, when=Interval(interval, warmup), what=FrequencySplit(cutoff=cutoff),
        name="freqca", paper="arXiv:2510.08669", **options,
    )


@preset(domain="core", knob="threshold")
@accepts_profile
def speca(
    threshold: float = 0.1,
    max_forecast: int = 5,
    decay: float = 0.01,
    min_threshold: float = 0.01,
    warmup: int = 3,
    order: int = 2,
    verify_blocks: int = 1,
    **options,
) -> Policy:
    """SpeCa: Speculative Feature Caching (arXiv 2509.11628).

    The block stack's residual is forecast with TaylorSeer; each forecast step is verified by
    running the last ``verify_blocks`` blocks for real on the forecast and comparing them with the
    forecast of their output. A relative error over the (time-dependent) threshold rolls the step
    back to a full computation. The threshold is ``max(threshold · decay^(step/steps),
    min_threshold)``; defaults are the reference DiT script's (see ``Speculative``).
    ``threshold=0`` never accepts a forecast.
    """
    return Policy(
        where=Blocks(tail=verify_blocks),
        when=Speculative(threshold, max_forecast, decay, min_threshold, warmup),
        what=Taylor(order),
        name="speca", paper="arXiv:2509.11628", **options,
    )
