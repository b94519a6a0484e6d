"""Analytic FLOPs of token-level work, in ``torch.utils.flop_counter.FlopCounterMode``'s convention.

Counting by shape (:class:`forecache.core.flops.FlopMeter`) runs the counter once per shape and reuses the number;
a token subset whose size changes from call to call would need a counted run for every size. The work of a subset
is linear in its size, though, so it is computed here from the shapes instead, with the counter's convention:

- 2 FLOPs per multiply-add of every matmul: a linear map of ``n`` tokens is ``2·n·in·out`` (the bias add is not
  counted, as ``addmm`` is not);
- attention as its two matmuls, ``q kᵀ`` and ``p v``: ``2·n_q·n_k·(hd + hd_v)`` per query head
  (``4·n_q·n_k·hd`` when values have the keys' size), as ``sdpa_flop_count`` counts it (and
  :func:`forecache.core.flops.flop_counter` for the CPU's fused kernel); masked keys are computed, so counted;
- norms, activations, softmax, element-wise products: 0.

Every function counts one row; multiply by the rows (or pass ``rows``). The tests check each against the counter
on full-length runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

#: modules a token-wise stack may hold that the counter gives no FLOPs (element-wise or per-token reductions)
ZERO_FLOP_MODULES: tuple[type[nn.Module], ...] = (
    nn.Identity, nn.Dropout, nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.Mish,
    nn.Softplus, nn.Hardswish, nn.LayerNorm, nn.RMSNorm,
)


def linear_flops(tokens: int, in_features: int, out_features: int, rows: int = 1) -> int:
    """A linear map ``in_features → out_features`` applied to ``tokens`` tokens of each of ``rows`` rows."""
    return 2 * rows * tokens * in_features * out_features


def attention_flops(
    queries: int, keys: int, heads: int, head_dim: int, value_dim: int | None = None, rows: int = 1
) -> int:
    """``queries`` queries attending over ``keys`` keys, ``heads`` query heads of size ``head_dim`` (values of
    ``value_dim``, default ``head_dim``), per row × ``rows``. Grouped-query attention counts the query heads."""
    value_dim = head_dim if value_dim is None else value_dim
    return 2 * rows * heads * queries * keys * (head_dim + value_dim)


def mlp_flops(tokens: int, dims: Sequence[int], rows: int = 1) -> int:
    """A chain of linear maps ``dims[0] → dims[1] → … → dims[-1]`` (activations free) on ``tokens`` tokens."""
    if len(dims) < 2:
        raise ValueError(f"mlp_flops: dims={list(dims)}; pass at least (in_features, out_features)")
    return sum(linear_flops(tokens, a, b, rows) for a, b in zip(dims[:-1], dims[1:]))


def tokenwise_flops(module: nn.Module, tokens: int = 1, rows: int = 1) -> int | None:
    """FLOPs of a known token-wise stack on ``tokens`` tokens: ``nn.Linear``, the modules of
    :data:`ZERO_FLOP_MODULES`, and ``nn.Sequential``/``nn.ModuleList`` run in order of them. ``None`` for anything
    else (a custom module whose forward this cannot see): count it or pass the number yourself."""
    if isinstance(module, nn.Linear):
        return linear_flops(tokens, module.in_features, module.out_features, rows)
    if isinstance(module, ZERO_FLOP_MODULES):
        return 0
    if type(module) in (nn.Sequential, nn.ModuleList):  # subclasses may override forward: not known
        parts = [tokenwise_flops(m, tokens, rows) for m in module]
        return None if any(p is None for p in parts) else sum(parts)
    return None


@dataclass
class FlopTally:
    """A running FLOP count of token-level work; each method adds one piece and returns the running total."""

    total: int = 0

    def add(self, flops: int) -> int:
        self.total += int(flops)
        return self.total

    def linear(self, tokens: int, in_features: int, out_features: int, rows: int = 1) -> int:
        return self.add(linear_flops(tokens, in_features, out_features, rows))

    def attention(
        self, queries: int, keys: int, heads: int, head_dim: int, value_dim: int | None = None, rows: int = 1
    ) -> int:
        return self.add(attention_flops(queries, keys, heads, head_dim, value_dim, rows))
