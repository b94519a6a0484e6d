"""Dynamic presets: a measured signal decides, step by step, whether to compute."""

from __future__ import annotations

from collections.abc import Sequence

from ..forecasters.reuse import Reuse
from ..policy import Policy
from ..selectors.blocks import Blocks
from ..triggers.foresight import Foresight
from ..triggers.magnitude import MagnitudeRatio
from ..triggers.probe_residual import (
    DBCACHE_DEFAULTS,
    FBCACHE_FLUX_THRESHOLD,
    ProbeResidual,
)
from ..triggers.rel_l1 import RelativeL1
from ..triggers.transform_rate import TransformRate
from .profiled import accepts_profile
from .registry import preset


@preset(domain="core", knob="threshold")
@accepts_profile
def teacache(
    threshold: float = 0.4,
    coefficients: Sequence[float] | None = None,
    time_grid: Sequence[float] | None = None,
    input_range: Sequence[float] | None = None,
    input_changes: Sequence[float] | None = None,
    compute_ratio: float | None = None,
    retarget: bool = True,
    two_step_changes: Sequence[float] | None = None,
    **options,
) -> Policy:
    """TeaCache: Timestep Embedding Tells (arXiv 2411.19108).

    The whole block stack is cached as one residual; the accumulated, polynomially rescaled
    relative L1 change of the first block's modulated input decides when to recompute.
    ``threshold=0.4`` is TeaCache's FLUX setting for about 1.8x (0.25: 1.5x, 0.6: 2x, 0.8: 2.25x).
    ``coefficients`` default to the polynomial published for the model's class (adapter), else
    the identity. ``threshold=0`` never skips. ``profile=`` (a calibration profile or its path,
    ``forecache calibrate --method teacache``) gives fitted ``coefficients``, their ``time_grid``,
    the ``input_range`` they were fitted on (the polynomial is not read outside it), the recorded
    ``input_changes`` and ``two_step_changes``, and a searched ``threshold`` with its target
    ``compute_ratio``: at another step count the threshold is re-targeted to that ratio
    (``retarget=False``: keep it as searched; see ``RelativeL1``).
    """
    return Policy(
        where=Blocks(), when=RelativeL1(threshold, coefficients, time_grid, input_range, input_changes,
                                        retarget, compute_ratio, two_step_changes),
        what=Reuse(),
        name="teacache", paper="arXiv:2411.19108", **options,
    )


@preset(domain="core", knob="threshold")
@accepts_profile
def magcache(
    threshold: float = 0.24,
    max_skip: int = 5,
    retention: float = 0.1,
    ratios=None,
    time_grid: Sequence[float] | None = None,
    compute_ratio: float | None = None,
    retarget: bool = True,
    **options,
) -> Policy:
    """MagCache: Fast Video Generation with Magnitude-Aware Cache (arXiv 2506.09045).

    The block stack's residual is reused while the accumulated error modelled from calibrated
    magnitude ratios stays under ``threshold``, for at most ``max_skip`` steps in a row, after the
    first ``retention`` of the steps. Defaults are MagCache's FLUX setting; ``ratios`` default to the
    profile published for the model's class (adapter). ``threshold=0`` never skips. ``profile=`` (a
    calibration profile or its path, ``forecache calibrate --method magcache``) gives the model's
    measured ``ratios``, their ``time_grid`` and a searched ``threshold`` with its target
    ``compute_ratio``: at another step count the threshold is re-targeted to that ratio
    (``retarget=False``: keep it as searched; see ``MagnitudeRatio``).
    """
    return Policy(
        where=Blocks(), when=MagnitudeRatio(threshold, max_skip, retention, ratios, time_grid=time_grid,
                            retarget=retarget, compute_ratio=compute_ratio),
        what=Reuse(),
        name="magcache", paper="arXiv:2506.09045", **options,
    )


@preset(domain="core", knob="threshold")
@accepts_profile
def easycache(threshold: float = 0.05, warmup: int = 10, **options) -> Policy:
    """EasyCache: Training-Free Video Diffusion Acceleration via Runtime-Adaptive Caching (arXiv 2507.02860).

    The block stack's transformation (output minus input) is reused while the accumulated
    deviation predicted from the transformation rate stays under ``threshold``; the first
    ``warmup`` steps compute. ``threshold=0`` never skips.
    """
    return Policy(
        where=Blocks(), when=TransformRate(threshold, warmup), what=Reuse(),
        name="easycache", paper="arXiv:2507.02860", **options,
    )


@preset(domain="core", knob="threshold")
@accepts_profile
def fbcache(threshold: float = FBCACHE_FLUX_THRESHOLD, **options) -> Policy:
    """First-Block Cache (ParaAttention; the idea of TeaCache, arXiv 2411.19108, probed on the
    first block's residual instead of the modulated input).

    The first block always runs; when its residual moved less than ``threshold`` (relative mean
    absolute change since the last computed step) the other blocks' residual is reused.
    ``threshold=0.08``: the FLUX default. ``threshold=0`` never skips.
    """
    return Policy(
        where=Blocks(probe=1), when=ProbeResidual(threshold), what=Reuse(),
        name="fbcache", paper="arXiv:2411.19108", **options,
    )


@preset(domain="core", knob="threshold")
@accepts_profile
def dbcache(
    threshold: float = DBCACHE_DEFAULTS["threshold"],
    fn: int = DBCACHE_DEFAULTS["Fn"],
    bn: int = DBCACHE_DEFAULTS["Bn"],
    warmup: int = DBCACHE_DEFAULTS["warmup"],
    max_cached_steps: int = -1,
    max_continuous_cached: int = -1,
    **options,
) -> Policy:
    """DBCache, Dual Block Cache (cache-dit; no paper — cited as the survey does, by its code).

    The first ``fn`` blocks always run as a probe and the last ``bn`` always run as a corrector;
    the middle is reused when the probe residual moved less than ``threshold``. Defaults are
    cache-dit's (F8B0, 0.08, 8 warm-up steps, unlimited cached steps). ``threshold=0`` never skips.
    """
    return Policy(
        where=Blocks(probe=fn, tail=bn),
        when=ProbeResidual(threshold, warmup, max_cached_steps, max_continuous_cached),
        what=Reuse(), name="dbcache", paper="github.com/vipshop/cache-dit", **options,
    )


@preset(domain="core", knob="gamma")
@accepts_profile
def foresight(gamma: float = 0.5, warmup: int = 8, recalculate: int = 2, **options) -> Policy:
    """Foresight: Adaptive Layer Reuse for Accelerated and High-Quality Text-to-Video Generation
    (arXiv 2506.00329).

    Every block is its own site; per-layer thresholds are learnt during the warm-up, then a block
    is reused while its reuse metric stays under ``gamma`` times its threshold. ``gamma=0`` never
    skips.
    """
    return Policy(
        where=Blocks(per_block=True), when=Foresight(gamma, warmup, recalculate), what=Reuse(),
        name="foresight", paper="arXiv:2506.00329", **options,
    )
