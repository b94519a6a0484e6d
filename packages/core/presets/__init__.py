"""Named methods: each a function named after its paper that returns a Policy with the paper's
defaults. Pass ``storage_dtype=`` / ``max_cache_bytes=`` to any of them, and ``profile=`` (a
calibration profile, ``forecache calibrate``) to any with a strength knob (all but pab and
fastercache).

Every preset, core's and the domains', registers through :func:`.registry.preset`;
:func:`.registry.presets` lists them all (``forecache presets`` on the command line). ``PRESETS``
is core's own, in the order of the paper families: static, dynamic, predictive.
"""

# imported in this order so the registry (and PRESETS) lists the families in it
from .static import deepcache, delta_dit, fastercache, fora, pab, toca  # isort: skip
from .dynamic import dbcache, easycache, fbcache, foresight, magcache, teacache  # isort: skip
from .predictive import abcache, foca, freqca, hicache, speca, taylorseer  # isort: skip
from .registry import preset, presets

#: core's presets by name; discover=False: the domains' entry points import forecache.core, which
#: is being imported now
PRESETS = presets("core", discover=False)

__all__ = [*PRESETS, "PRESETS", "preset", "presets"]
