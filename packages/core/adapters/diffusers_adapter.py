"""An :class:`Adapter` configured entirely by fields, the class behind every diffusers registry entry."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .base import DEFAULT_ROLES, Adapter, Block, BlockIO, call_arguments
from .teacache_fits import TeaCacheFit, select_fit

__all__ = ["DEFAULT_ROLES", "DiffusersAdapter", "call_arguments"]

Roles = tuple[tuple[str, tuple[str, ...]], ...]


@dataclass(frozen=True)
class DiffusersAdapter(Adapter):
    """An :class:`Adapter` configured entirely by fields.

    ``modulation(block_module, arguments)`` computes TeaCache's signal from the first block's call
    arguments (by name); ``io_for(attr, block_module, io)`` returns a different :class:`BlockIO` for blocks
    that differ from ``io``; ``roles`` maps submodule roles to attribute names tried in order;
    ``teacache_fits`` lists the published TeaCache polynomials for the class, and :func:`adapter_for`
    sets ``teacache_coefficients`` from the one matching the model's config.
    """

    name: str
    #: the timestep the model receives at pure noise: 1.0 if it is fed sigma in [0, 1] (or t / 1000),
    #: 1000.0 if fed scheduler timesteps in [0, 1000]. Required: a wrong unit silently shifts every
    #: time window and forecast
    time_unit: float
    block_attrs: tuple[str, ...] = ("blocks",)
    io: BlockIO = BlockIO()
    timestep_args: tuple[str, ...] = ("timestep",)
    hidden_arg: str = "hidden_states"
    modulation: Callable[[nn.Module, Mapping[str, Any]], torch.Tensor] | None = None
    io_for: Callable[[str, nn.Module, BlockIO], BlockIO] | None = None
    roles: Roles = DEFAULT_ROLES
    teacache_fits: tuple[TeaCacheFit, ...] = ()
    teacache_coefficients: tuple[float, ...] | None = None
    #: MagCache's published magnitude-ratio profile for the class (a MagnitudeProfile), if any
    magcache_ratios: Any = None
    #: where the convention was read
    source: str = ""
    doc: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        if not self.time_unit > 0:
            raise ValueError(
                f"DiffusersAdapter.time_unit={self.time_unit}: use 1.0 for a model fed sigma in [0, 1], "
                "1000.0 for one fed scheduler timesteps"
            )
        if self.teacache_coefficients is None:
            fit = select_fit(self.teacache_fits, {})
            if fit is not None:
                object.__setattr__(self, "teacache_coefficients", fit.coefficients)

    def for_model(self, model: nn.Module) -> DiffusersAdapter:
        """This adapter with ``teacache_coefficients`` chosen for ``model``'s config (``None`` when no
        published fit matches it: TeaCache then needs coefficients passed explicitly)."""
        if not self.teacache_fits:
            return self
        fit = select_fit(self.teacache_fits, dict(getattr(model, "config", {}) or {}))
        coefficients = fit.coefficients if fit is not None else None
        if coefficients == self.teacache_coefficients:
            return self
        return dataclasses.replace(self, teacache_coefficients=coefficients)

    def teacache_fit(self, checkpoint: str) -> TeaCacheFit:
        """The published TeaCache fit for ``checkpoint`` (for checkpoints a config cannot identify)."""
        for fit in self.teacache_fits:
            if fit.checkpoint == checkpoint:
                return fit
        known = [f.checkpoint for f in self.teacache_fits] or "none"
        raise KeyError(f"{self.name} has no TeaCache fit named {checkpoint!r}; published fits: {known}")

    def block_io(self, attr: str, block: nn.Module) -> BlockIO:
        return self.io if self.io_for is None else self.io_for(attr, block, self.io)

    def modulated_input(self, block: Block, args: tuple, kwargs: dict) -> torch.Tensor | None:
        if self.modulation is None:
            return None
        return self.modulation(block.module, call_arguments(block.module, args, kwargs))
