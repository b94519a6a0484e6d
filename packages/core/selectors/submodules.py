"""Named submodules of every block: attention, cross-attention, MLP, each a site of its own."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..forecasters.base import Forecaster
from ..sites.module import ModuleSite
from ..sites.tokens import TokenSelection, TokenSite
from ..triggers.base import Trigger
from .base import Selector, pick

ROLES = ("attn", "cross_attn", "temporal_attn", "mlp", "mlp_context")


@dataclass
class Submodules(Selector):
    """The submodules with the given roles in the selected blocks (all blocks by default).

    ``when`` may map a role to its own trigger (PAB: a broadcast range per attention type).
    Roles come from the adapter (``Adapter.submodules``): ``attn``, ``cross_attn``,
    ``temporal_attn``, ``mlp``, ``mlp_context``. ``tokens`` makes the ``mlp`` sites token-wise
    (ToCa): at cached steps they recompute a scored subset of tokens.
    """

    roles: tuple[str, ...] = ("attn", "mlp")
    blocks: slice | tuple[int, ...] | None = None
    when: Trigger | dict[str, Trigger] | None = None
    what: Forecaster | None = None
    window: tuple[float, float] | None = None
    tokens: TokenSelection | None = None
    key: Callable | None = None

    def validate(self) -> None:
        super().validate()
        if self.tokens is not None:
            self.tokens.validate()
        unknown = [r for r in self.roles if r not in ROLES]
        if unknown or not self.roles:
            raise ValueError(f"Submodules.roles has unknown roles {unknown}; choose from {ROLES}")
        if isinstance(self.when, dict):
            extra = [r for r in self.when if r not in self.roles]
            if extra:
                raise ValueError(f"Submodules.when names roles {extra} that are not in roles={self.roles}")

    def build(self, runtime, model, adapter, policy):
        sites = []
        chosen = pick(adapter.blocks(model), self.blocks, "Submodules.blocks")
        for layer, block in enumerate(chosen):
            found = adapter.submodules(block)
            for role in self.roles:
                if role not in found:
                    continue
                args = (f"{block.name}.{role}", runtime, found[role], self.trigger_for(policy, adapter, role), self.forecaster_for(policy, adapter))
                common = {"window": self.window, "io": block.io, "key": self.key}
                if self.tokens is not None and role == "mlp":
                    site = TokenSite(*args, selection=self.tokens, layer=layer, layers=len(chosen), **common)
                else:
                    site = ModuleSite(*args, **common)
                sites.append(site)
        if not sites:
            raise ValueError(
                f"no submodule with roles {self.roles} in the selected blocks of {type(model).__name__}; "
                "check the adapter's submodules() or choose other roles"
            )
        return sites
