"""Named methods: each a function named after its paper that returns a Policy with the paper's
defaults. Pass ``storage_dtype=`` / ``max_cache_bytes=`` to any of them, and ``profile=`` (a
calibration profile, ``forecache calibrate``) to any with a strength knob (all but pab and
fastercache)."""

from .dynamic import dbcache, easycache, fbcache, foresight, magcache, teacache
from .predictive import abcache, foca, freqca, hicache, speca, taylorseer
from .static import deepcache, delta_dit, fastercache, fora, pab, toca

PRESETS = {
    f.__name__: f
    for f in (
        fora, deepcache, delta_dit, pab, toca, fastercache,
        teacache, magcache, easycache, fbcache, dbcache, foresight,
        taylorseer, hicache, abcache, foca, freqca, speca,
    )
}

__all__ = [*PRESETS, "PRESETS"]
