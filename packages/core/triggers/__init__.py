"""The `when` axis: whether a row computes at a step or takes the cached/forecast value.

One file per rule: fixed interval (FORA, DeepCache), accumulated rescaled relative L1 (TeaCache),
probe-residual change (FBCache, DBCache), residual magnitude ratio (MagCache), transform rate
(EasyCache), per-layer warm-up thresholds (Foresight), forecast-then-verify (SpeCa), and a change measured while
reusing, acted on at the next step (dLLM-Cache's drift refresh), and a refresh at each segment's first step
(Fast-dLLM's block-wise KV cache).
"""

from .base import Observation, Trigger, ask
from .foresight import Foresight
from .interval import Interval
from .magnitude import (
    FLUX_MAG_PROFILE,
    FLUX_MAG_RATIOS,
    FLUX_MAG_TIMES,
    MAGCACHE_FLUX_DEFAULTS,
    MagnitudeProfile,
    MagnitudeRatio,
)
from .measured_change import MeasuredChange
from .probe_residual import DBCACHE_DEFAULTS, FBCACHE_FLUX_THRESHOLD, ProbeResidual
from .rel_l1 import TEACACHE_FLUX_COEFFICIENTS, RelativeL1
from .segment_start import SegmentStart
from .speculative import Speculative
from .transform_rate import TransformRate

__all__ = [
    "DBCACHE_DEFAULTS",
    "FBCACHE_FLUX_THRESHOLD",
    "FLUX_MAG_PROFILE",
    "FLUX_MAG_RATIOS",
    "FLUX_MAG_TIMES",
    "MAGCACHE_FLUX_DEFAULTS",
    "TEACACHE_FLUX_COEFFICIENTS",
    "Foresight",
    "Interval",
    "MagnitudeProfile",
    "MagnitudeRatio",
    "MeasuredChange",
    "Observation",
    "ProbeResidual",
    "RelativeL1",
    "SegmentStart",
    "Speculative",
    "TransformRate",
    "Trigger",
    "ask",
]
