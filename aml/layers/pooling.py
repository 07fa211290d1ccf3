"""Global pooling of a convolutional feature map (B x C x H x W -> B x C x 1 x 1).

The formulas live in `aml.layers.functional` (cirtorch's functional API); here are
thin modules over them and the ``POOLINGS`` registry that the network factory reads.
GeM's ``p`` is a learnable parameter (init 3, eps 1e-6).
"""

from typing import Callable, Dict, Optional

import torch
from torch import nn

from aml.layers import functional as LF
from aml.layers.normalization import L2N


class MAC(nn.Module):
    """Global max pooling."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return LF.mac(x)


class SPoC(nn.Module):
    """Global average pooling."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return LF.spoc(x)


class GeM(nn.Module):
    """Generalised-mean pooling with one learnable exponent ``p`` (init 3)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.ones(1) * p)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return LF.gem(x, self.p, self.eps)

    def extra_repr(self) -> str:
        return f"p={self.p.data.tolist()[0]:.4f}, eps={self.eps}"


class GeMmp(nn.Module):
    """GeM with one learnable exponent per channel (``mp`` of them, all init 3)."""

    def __init__(self, p: float = 3.0, mp: int = 1, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.ones(mp) * p)
        self.mp, self.eps = mp, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return LF.gem(x, self.p, self.eps)

    def extra_repr(self) -> str:
        return f"p=[{self.mp}], eps={self.eps}"


class RMAC(nn.Module):
    """R-MAC pooling (regional MAC on an ``L``-level grid); cirtorch's signature."""

    def __init__(self, L: int = 3, eps: float = 1e-6):
        super().__init__()
        self.L = L
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return LF.rmac(x, self.L, self.eps)

    def extra_repr(self) -> str:
        return f"L={self.L}"


class Rpool(nn.Module):
    """Regional pooling: the whole map and every R-MAC region pooled with ``rpool``,
    L2-normalised, optionally whitened (``whiten``) and normalised again, then summed and
    normalised (``aggregate``; False: the B x R x D x 1 x 1 regional descriptors, as cirtorch's
    ``extract_ssr`` takes them). cirtorch's signature and numbers: ``eps`` is the regions'
    pooling's; the normalisations keep `L2N`'s own (``norm``)."""

    def __init__(self, rpool: nn.Module, whiten: Optional[nn.Module] = None, L: int = 3, eps: float = 1e-6):
        super().__init__()
        self.rpool = rpool
        self.whiten = whiten
        self.norm = L2N()
        self.L = L
        self.eps = eps

    def forward(self, x: torch.Tensor, aggregate: bool = True) -> torch.Tensor:
        regions = LF.roipool(x, self.rpool, self.L, self.eps).flatten(2)  # B x R x C
        unit = self.norm.eps
        regions = LF.l2n(regions, eps=unit, dim=-1)
        if self.whiten is not None:
            regions = LF.l2n(self.whiten(regions), eps=unit, dim=-1)
        if not aggregate:
            return regions[..., None, None]
        return LF.l2n(regions.sum(dim=1), eps=unit)[..., None, None]

    def extra_repr(self) -> str:
        return f"L={self.L}"


PoolingFactory = Callable[[int], nn.Module]

#: pooling name -> factory(dim) building the module; ``dim`` is used by per-channel pools.
POOLINGS: Dict[str, PoolingFactory] = {
    "mac": lambda dim: MAC(),
    "spoc": lambda dim: SPoC(),
    "gem": lambda dim: GeM(),
    "gemmp": lambda dim: GeMmp(mp=dim),
    "rmac": lambda dim: RMAC(),
}

#: learning-rate multiplier of the pooling parameters (weight decay 0 for them).
POOLING_LR_MULTIPLIER: Dict[str, float] = {"gem": 10.0, "gemmp": 100.0}
