"""L2 normalisation of descriptors."""

import torch
from torch import nn

from aml.layers import functional as LF


class L2N(nn.Module):
    """Module form of `aml.layers.functional.l2n` over the channel dimension."""

    def __init__(self, eps: float = 1e-6):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return LF.l2n(x, eps=self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"
