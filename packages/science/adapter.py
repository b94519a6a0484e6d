"""How forecache sees a molecule flow-matching network, and the one-line way to cache one.

The sampler (``forecache.science.sampler``) drives the handle's clock itself (``handle.step``),
so the adapter only has to find the batch (the ``coords`` argument) and, for block-level
policies, the layers (``layers``, as in ``MoleculeEGNN``). Flow time runs from 0 (noise) to 1
(data), the other way round from diffusion's noise level: a selector's ``window=(lo, hi)``
compares the flow time ``t`` itself (``time_unit = 1``), so ``(0.5, 1.0)`` is the second half
of sampling.
"""

from __future__ import annotations

from forecache.core import Adapter, BlockIO, CacheHandle, Policy, apply
from torch import nn


class MoleculeAdapter(Adapter):
    """Adapter for velocity models called as ``model(coords=..., atoms=..., mask=..., t=..., ...)``."""

    block_attrs = ("layers",)
    #: an EGNN layer maps (node features, coordinates, edge features) to their updates
    io = BlockIO(state=("h", "x", "e"), returns=("h", "x", "e"))
    timestep_args = ("t",)
    hidden_arg = "coords"
    time_unit = 1.0


def cache_model(model: nn.Module, policy: Policy | None = None, count_flops: bool = True) -> CacheHandle:
    """Cache ``model`` under ``policy`` (default: :func:`forecache.science.presets.ab_forecast`)
    with the :class:`MoleculeAdapter`; pass the handle to ``sample(..., handle=handle)``."""
    if policy is None:
        from .presets import ab_forecast

        policy = ab_forecast()
    return apply(model, policy, MoleculeAdapter(), count_flops=count_flops)
