"""DeepCache's selector: the deep path of a diffusers UNet behind a skip branch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..forecasters.base import Forecaster
from ..sites.unet_branch import UNetBranchSite
from ..triggers.base import Trigger
from .base import Selector


@dataclass
class UNetBranch(Selector):
    """Cache everything deeper than skip branch ``branch`` of a UNet (0 = shallowest branch)."""

    branch: int = 0
    when: Trigger | None = None
    what: Forecaster | None = None
    window: tuple[float, float] | None = None
    key: Callable | None = None

    def build(self, runtime, model, adapter, policy):
        for attr in ("down_blocks", "mid_block", "up_blocks"):
            if getattr(model, attr, None) is None:
                raise ValueError(
                    f"UNetBranch (DeepCache) needs a UNet with down_blocks, mid_block and up_blocks; "
                    f"{type(model).__name__} has no {attr}. For transformers use Blocks()"
                )
        return [
            UNetBranchSite(
                f"unet.branch{self.branch}", runtime, model, self.branch,
                self.trigger_for(policy, adapter), self.forecaster_for(policy, adapter), self.window, self.key,
            )
        ]
