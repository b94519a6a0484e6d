"""Routing a module's forward through a site, on the instance only, with exact undo."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from torch import nn

#: instance attribute marking a module as wrapped: (the wrapping's owner, the site's name)
OWNER = "_forecache_owner"


class Wrapping:
    """The forwards one handle has wrapped. Nothing is patched on a class, so two handles on two
    models never see each other, and :meth:`unwrap_all` restores every forward exactly."""

    def __init__(self) -> None:
        self._saved: dict[nn.Module, tuple[Any, bool]] = {}

    def wrap(self, module: nn.Module, fn: Callable, name: str) -> Callable:
        """Route ``module.forward`` through ``fn(original_forward, *args, **kwargs)``; returns the
        original forward. A module belongs to at most one site (``name``) of one handle."""
        previous = getattr(module, OWNER, None)
        if previous is not None:
            raise ValueError(
                f"{type(module).__name__} is already cached by {previous[1]}; call remove() on that "
                "handle first, or select disjoint modules"
            )
        original = module.forward
        self._saved[module] = (module.__dict__.get("forward"), "forward" in module.__dict__)

        # a partial is called without a Python frame of its own (this runs at every block call);
        # update_wrapper keeps the original's name and signature visible (``__wrapped__``)
        forward = functools.update_wrapper(functools.partial(fn, original), original)
        module.forward = forward
        setattr(module, OWNER, (self, name))
        return original

    def unwrap(self, module: nn.Module) -> None:
        saved, had = self._saved.pop(module, (None, False))
        if had:
            module.forward = saved
        else:
            module.__dict__.pop("forward", None)
        module.__dict__.pop(OWNER, None)

    def unwrap_all(self) -> None:
        for module in list(self._saved):
            self.unwrap(module)
