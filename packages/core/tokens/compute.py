"""Recompute a token-wise module on a per-row token subset in one batched call: gather, compute, scatter.

A token-wise module (an MLP, a norm + MLP: each token's output depends on that token alone) gives the same output
for a token whether it runs on the whole sequence or on a subset that contains it. So refreshing ``n`` tokens of
every row is one call on ``(B, n, D)``, not a loop over rows: gather the rows' tokens ``pos`` (B, n), run the module,
scatter the fresh outputs into a copy of the cached output. The caller chooses ``pos`` (ToCa's scores, an edit
region, tokens whose input changed); rows may choose different tokens but the same count (pad a row's list with
:func:`forecache.core.tokens.gather.changed_first`, or repeat a position).

The FLOPs are analytic (:mod:`forecache.core.tokens.flops`): known per token for a stack of ``nn.Linear`` and
activations, or passed by the caller for any other module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .flops import tokenwise_flops
from .gather import put_tokens, put_tokens_, take_tokens


@dataclass
class TokenOutput:
    """What :meth:`TokenCompute.__call__` returns.

    Attributes:
        out: ``base`` with the fresh outputs at ``pos``, (B, L, D_out) in ``base``'s dtype.
        fresh: the module's outputs at ``pos`` only, (B, n, D_out) in the module's dtype.
        flops: FLOPs of the call, all rows together; None when the module is not a known token-wise stack and no
            ``flops_per_token`` was given.
    """

    out: Tensor
    fresh: Tensor
    flops: int | None


class TokenCompute:
    """Runs a token-wise module on the tokens ``pos`` (B, n) of ``x`` (B, L, D) and merges the result into a base.

    Args:
        module: any callable on ``(B, n, D)`` returning ``(B, n, D_out)`` whose output at a token depends on that
            token's input alone (the caller's promise: a module that mixes tokens gives wrong results here).
        flops_per_token: FLOPs of the module on one token; None = derived from ``module`` when it is a known
            token-wise stack (:func:`~forecache.core.tokens.flops.tokenwise_flops`), else unknown.

    Attributes:
        total_flops: FLOPs of every call so far (unknown calls add nothing; ``flops_known`` says whether any were).
    """

    def __init__(self, module: Callable[..., Tensor], flops_per_token: int | None = None) -> None:
        self.module = module
        if flops_per_token is None and isinstance(module, nn.Module):
            flops_per_token = tokenwise_flops(module, tokens=1)
        self.flops_per_token = flops_per_token
        self.total_flops = 0

    @property
    def flops_known(self) -> bool:
        return self.flops_per_token is not None

    def __call__(self, x: Tensor, pos: Tensor, base: Tensor, *, inplace: bool = False, **kwargs: Any) -> TokenOutput:
        """Recompute the tokens ``pos`` (B, n) of ``x`` (B, L, D) and write them over ``base`` (B, L, D_out).

        Args:
            x: the module's input for every token.
            pos: per-row positions (B, n) (or (1, n) for all rows) to recompute.
            base: the cached output of every token; tokens not in ``pos`` keep it.
            inplace: write into ``base`` itself (a cache updating its store) instead of a copy.
            **kwargs: passed to the module unchanged (per-row conditioning that broadcasts over tokens).

        Raises:
            ValueError: naming the argument whose shape does not fit.
        """
        if x.dim() < 3:
            raise ValueError(f"TokenCompute: x has shape {tuple(x.shape)}; pass tokens (B, L, D)")
        if base.dim() < 2 or tuple(base.shape[:2]) != tuple(x.shape[:2]):
            raise ValueError(
                f"TokenCompute: base has shape {tuple(base.shape)} for x {tuple(x.shape)}; pass the cached output "
                f"of every token, ({x.shape[0]}, {x.shape[1]}, D_out)"
            )
        tokens = take_tokens(x, pos)  # validates pos against x
        rows, n = x.shape[0], pos.shape[1]
        if n == 0:  # nothing to recompute: the module is never called (it may not take empty input)
            out = base if inplace else base.clone()
            return TokenOutput(out, base.new_empty(rows, 0, *base.shape[2:]), 0)
        fresh = self.module(tokens, **kwargs)
        if not torch.is_tensor(fresh) or tuple(fresh.shape[:2]) != (rows, n) or fresh.shape[2:] != base.shape[2:]:
            got = tuple(fresh.shape) if torch.is_tensor(fresh) else type(fresh).__name__
            raise ValueError(
                f"TokenCompute: module returned {got} on {rows} rows of {n} tokens; it must return one tensor "
                f"({rows}, {n}, *base.shape[2:]) = ({rows}, {n}, {', '.join(map(str, base.shape[2:]))})"
            )
        out = (put_tokens_ if inplace else put_tokens)(base, pos, fresh)
        flops = None if self.flops_per_token is None else self.flops_per_token * rows * n
        self.total_flops += flops or 0
        return TokenOutput(out, fresh, flops)
