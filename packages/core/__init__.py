"""forecache.core: the shared reuse and forecast runtime.

    from forecache.core import apply, teacache
    handle = apply(pipe, teacache(0.4))
    image = pipe("a red square").images[0]
    print(handle.stats())

A policy is where (selectors) x when (triggers) x what (forecasters); presets are policies named
after their papers. See DESIGN.md.
"""

from .adapters.base import Adapter, Block, BlockIO
from .apply import apply
from .handle import CacheHandle
from .policy import Policy
from .presets import (
    PRESETS,
    abcache,
    dbcache,
    deepcache,
    delta_dit,
    easycache,
    fastercache,
    fbcache,
    foca,
    fora,
    foresight,
    freqca,
    hicache,
    magcache,
    pab,
    speca,
    taylorseer,
    teacache,
    toca,
)
from .selectors.blocks import Blocks
from .selectors.cfg import CfgBranch
from .selectors.output import ModelOutput
from .selectors.submodules import Submodules
from .selectors.unet import UNetBranch
from .runtime import Runtime
from .sites.base import CallContext, Site, by_row, by_segment
from .sites.tokens import TokenSelection
from .storage import CacheBudgetError

__all__ = [
    "Adapter", "Block", "BlockIO", "Blocks", "CacheBudgetError", "CacheHandle", "CallContext", "CfgBranch",
    "ModelOutput", "PRESETS", "Policy", "Runtime", "Site", "Submodules", "TokenSelection", "UNetBranch", "apply",
    "by_row", "by_segment",
    "abcache", "dbcache", "deepcache", "delta_dit", "easycache", "fastercache", "fbcache", "foca",
    "fora", "foresight", "freqca", "hicache", "magcache", "pab", "speca", "taylorseer", "teacache", "toca",
]
