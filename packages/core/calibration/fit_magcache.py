"""MagCache's magnitude-ratio curve from a recording.

MagCache (Ma et al., arXiv 2506.09045) finds that the ratio of the magnitudes of successive
residuals, ``g_t = ||r_t|| / ||r_{t-1}||``, follows nearly the same curve for every prompt, so it is
measured once in an uncached run and stored per step. Here it becomes a
:class:`~forecache.core.triggers.magnitude.MagnitudeProfile` on the recorded time grid, which the
MagCache trigger reads by time coordinate at any step count.
"""

from __future__ import annotations

import numpy as np

from ..triggers.magnitude import MagnitudeProfile
from .recording import Recording


def fit_magcache(recording: Recording) -> MagnitudeProfile:
    """The per-step magnitude ratios of ``recording`` on its time grid.

    With several trajectories (generations, CFG branches, batch rows) each step's ratio is their
    geometric mean, the average that keeps products of ratios (the modelled decay over a skipped
    span) consistent; step 0 holds the placeholder 1.0.
    """
    ratios = recording.magnitude_ratios()
    if ratios.shape[1] < 2:
        raise ValueError("fit_magcache needs a recording of at least 2 steps; record a whole generation")
    if not np.all(np.isfinite(ratios)) or np.any(ratios <= 0):
        raise ValueError("fit_magcache: the recorded magnitude ratios are not all finite and positive "
                         "(a zero residual?); record with inputs that reach the blocks")
    mean = np.exp(np.log(ratios).mean(axis=0))
    mean[0] = 1.0
    return MagnitudeProfile(tuple(float(r) for r in mean), recording.time_grid)
