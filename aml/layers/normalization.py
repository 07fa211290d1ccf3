"""L2 normalisation of descriptors."""

import torch
from torch import nn

from aml.layers.functional import l2n

__all__ = ["L2N", "l2n"]


class L2N(nn.Module):
    """Module form of :func:`l2n` over the channel dimension."""

    def __init__(self, eps: float = 1e-6):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return l2n(x, eps=self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"
