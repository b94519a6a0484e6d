"""Calibration: fit a method to a model once, so nobody tunes thresholds by hand.

    from forecache.core import teacache
    from forecache.core.calibration import calibrate, psnr

    gen = lambda: pipe("a red square", num_inference_steps=28, generator=torch.Generator().manual_seed(0))
    profile = calibrate(pipe, gen, "teacache", target_ratio=0.5)   # record, fit, search
    profile.save("flux-teacache.json")
    handle = apply(pipe, teacache(profile="flux-teacache.json"))     # any step count

- :func:`record`: uncached generations under the normal runtime, one :class:`StepPoint` per row
  and step (time, TeaCache's input and output changes, the residual's magnitude).
- :func:`fit_teacache`: TeaCache's polynomial (arXiv 2411.19108); :func:`fit_magcache`: MagCache's
  magnitude-ratio curve (arXiv 2506.09045).
- :func:`search_knob`: any preset's strength knob for a compute-ratio or fidelity target.
- :func:`bracket_and_bisect`: the one bracket-and-bisect search over a scalar knob behind ``search_knob`` and
  every domain's own calibration (dLLM-Cache's drift threshold); returns where it stopped, a :class:`Bracket`.
- :class:`Profile`: the versioned JSON file presets read (``profile=``); see :mod:`.profile` for the
  format and for how a profile fitted at one step count serves another.
- :func:`calibrate`: all of it in one call; ``forecache calibrate`` on the command line.
"""

from .bisect import Bracket, bracket_and_bisect
from .calibrate import FITTED_METHODS, calibrate
from .fidelity import psnr
from .fit_magcache import fit_magcache
from .fit_teacache import TEACACHE_DEGREE, TeaCachePolynomial, fit_teacache
from .knobs import Knob, knob_for, knob_names
from .profile import PROFILE_VERSION, Profile
from .recording import Recorder, Recording, StepPoint, Trajectory, record
from .search import Evaluation, SearchConfig, SearchResult, search_knob

__all__ = [
    "FITTED_METHODS", "PROFILE_VERSION", "TEACACHE_DEGREE",
    "Bracket", "Evaluation", "Knob", "Profile", "Recorder", "Recording", "SearchConfig", "SearchResult",
    "StepPoint", "TeaCachePolynomial", "Trajectory",
    "bracket_and_bisect", "calibrate", "fit_magcache", "fit_teacache", "knob_for", "knob_names", "psnr", "record", "search_knob",
]
