"""Linear layers that round every row alike, for bitwise-exactness tests of partial recomputation.

BLAS kernels pick blockings by matrix shape, so a row multiplied alone or among others can differ in the
last bit; an elementwise product and a sum over the last axis round every row alike. With these in place
of a model's linear layers, recomputing some tokens is bitwise the same as recomputing all of them.
"""

import copy

import torch
from torch import nn


class RowInvariantLinear(nn.Linear):
    """``nn.Linear`` whose result for a row does not depend on the other rows computed with it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = (x.unsqueeze(-2) * self.weight).sum(-1)
        return y if self.bias is None else y + self.bias


def row_invariant(model: nn.Module, names: tuple[str, ...] | None = None) -> nn.Module:
    """A copy of ``model`` whose linear layers named in ``names`` (every ``nn.Linear`` when None) are
    row-invariant, with the same weights."""
    model = copy.deepcopy(model)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear and (names is None or name in names):
                new = RowInvariantLinear(child.in_features, child.out_features, bias=child.bias is not None)
                new.load_state_dict(child.state_dict())
                setattr(module, name, new)
    return model
