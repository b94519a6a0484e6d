"""The ``what`` axis: what a site returns at a step it does not compute.

One forecaster per paper's update rule, all predicting from the real time coordinates of the
computed points: ``Reuse`` (FORA, DeepCache, Δ-DiT), ``Taylor`` (TaylorSeer), ``Hermite``
(HiCache), ``AdamsBashforth`` (AB-Cache), ``FoCa`` (FoCa), ``FrequencySplit`` (FreqCa) and
``Blend`` (FasterCache's attention reuse).
"""

from .adams_bashforth import AdamsBashforth
from .base import Forecaster
from .blend import Blend, linear_ramp
from .differences import derivatives, lagrange_weights, least_squares_weights, taylor_weights
from .foca import FoCa
from .frequency import FrequencySplit
from .hermite import Hermite
from .reuse import Reuse
from .taylor import Taylor

__all__ = [
    "AdamsBashforth",
    "Blend",
    "FoCa",
    "Forecaster",
    "FrequencySplit",
    "Hermite",
    "Reuse",
    "Taylor",
    "derivatives",
    "lagrange_weights",
    "least_squares_weights",
    "linear_ramp",
    "taylor_weights",
]
