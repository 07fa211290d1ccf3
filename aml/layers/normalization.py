"""L2 normalisation of descriptors."""

import torch
from torch import nn


def l2n(x: torch.Tensor, eps: float = 1e-6, dim: int = 1) -> torch.Tensor:
    """Divide ``x`` by its L2 norm along ``dim`` (plus ``eps``, as cirtorch does)."""
    return x / (torch.linalg.vector_norm(x, ord=2, dim=dim, keepdim=True) + eps)


class L2N(nn.Module):
    """Module form of :func:`l2n` over the channel dimension."""

    def __init__(self, eps: float = 1e-6):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return l2n(x, eps=self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"
