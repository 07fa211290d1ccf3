"""L2 normalisation of descriptors, and cirtorch's power law."""

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


class PowerLaw(nn.Module):
    """Module form of `aml.layers.functional.powerlaw` (cirtorch's, which no network uses)."""

    def __init__(self, eps: float = 1e-6):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return LF.powerlaw(x, eps=self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"
