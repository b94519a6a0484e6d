"""DeepCache's skip branch for diffusers UNets (DeepCache, arXiv 2312.00858).

A UNet's deep path (down blocks below the branch, the mid block, and the up blocks above it)
changes slowly between steps, while the shallow skip branch carries the detail. At a cached step
the site runs only ``conv_in``, down blocks ``0..b`` and up blocks ``L-1-b..L-1``; the deep up
block that feeds them returns its cached (or forecast) output, and the deep path in between is
bypassed. Deviation: DeepCache can branch inside a block (its ``cache_layer_id``); this site
branches between whole blocks, ``branch=0`` being the shallowest (closest to the reference's
default ``cache_block_id=0``).
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import torch
from torch import nn

from .base import Site

if TYPE_CHECKING:
    from ..runtime import Runtime


class UNetBranchSite(Site):
    def __init__(self, name: str, runtime: Runtime, unet: nn.Module, branch: int, trigger, forecaster, window=None,
                 key=None):
        super().__init__(name, runtime, trigger, forecaster, window, key)
        downs, ups = list(unet.down_blocks), list(unet.up_blocks)
        if not 0 <= branch <= len(downs) - 2:
            raise ValueError(
                f"DeepCache branch={branch} is out of range: this UNet has {len(downs)} down blocks, "
                f"so branch must lie in 0..{len(downs) - 2}"
            )
        # the deep path, in execution order; the last entry's output is the cached feature
        self.deep: list[tuple[str, nn.Module]] = (
            [(f"down_blocks.{j}", downs[j]) for j in range(branch + 1, len(downs))]
            + [("mid_block", unet.mid_block)]
            + [(f"up_blocks.{i}", ups[i]) for i in range(len(ups) - 1 - branch)]
        )
        self._plans = None
        self._step_key = None

    def install(self) -> None:
        self._orig = [self.runtime.wrap(m, partial(self._call, k), self) for k, (_, m) in enumerate(self.deep)]

    def _call(self, k: int, original, *args, **kwargs):
        ctx = self.runtime.context(self)
        if ctx is None:
            return original(*args, **kwargs)
        sample = kwargs.get("hidden_states", args[0] if args else None)
        if k == 0:
            self._plans = self.plan(ctx, sample)
            if len({p.compute for p in self._plans}) > 1:
                raise NotImplementedError(
                    f"{self.name}: rows of one call decided differently; the UNet skip branch runs "
                    "all rows alike, so use a trigger whose decision is shared by rows (Interval)"
                )
        compute = self._plans[0].compute
        name, module = self.deep[k]
        key = (self.name, name, tuple(sample.shape[1:]))
        if compute:
            out = self.runtime.run(key, ctx.batch, lambda: original(*args, **kwargs))
        else:
            self.runtime.skipped(key, ctx.batch)
            out = self._bypass(module, name, sample)
        if k == len(self.deep) - 1:
            if compute:
                self.observe(ctx, self._plans, sample, (out,), (out,))
            else:
                out = torch.cat([p.value[0] for p in self._plans], dim=0)
                self.observe(ctx, self._plans, sample, None, None)
        return out

    @staticmethod
    def _bypass(module: nn.Module, name: str, sample: torch.Tensor):
        """What a bypassed deep block hands on. Only other deep blocks read it, so only the
        structure matters: down blocks return (sample, one residual per resnet/downsampler)."""
        if name.startswith("down_blocks"):
            n = len(module.resnets) + (1 if getattr(module, "downsamplers", None) else 0)
            return sample, (sample,) * n
        return sample
