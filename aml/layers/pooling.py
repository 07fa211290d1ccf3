"""Global pooling of a convolutional feature map (B x C x H x W -> B x C x 1 x 1).

Pure functions first (exactly testable), then thin modules, then the ``POOLINGS`` registry
that the network factory reads. GeM's ``p`` is a learnable parameter (init 3, eps 1e-6).
"""

import math
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from aml.layers.normalization import l2n


def mac(x: torch.Tensor) -> torch.Tensor:
    """Maximum activation of convolutions: global max pooling."""
    return torch.amax(x, dim=(-2, -1), keepdim=True)


def spoc(x: torch.Tensor) -> torch.Tensor:
    """Sum-pooling of convolutions (as an average): global average pooling."""
    return torch.mean(x, dim=(-2, -1), keepdim=True)


def gem(x: torch.Tensor, p: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Generalised mean: (mean over positions of clamp(x, eps)^p)^(1/p).

    ``p`` is a scalar (shape (1,)) or one value per channel (shape (C,)).
    """
    p = p.reshape(1, -1, 1, 1) if p.numel() > 1 else p
    return x.clamp(min=eps).pow(p).mean(dim=(-2, -1), keepdim=True).pow(1.0 / p)


def rmac_regions(height: int, width: int, levels: int = 3, overlap: float = 0.4) -> List[Tuple[int, int, int]]:
    """R-MAC grid (Tolias et al.): square regions as (top, left, side) on an H x W map.

    At level l the side is floor(2 * min(H, W) / (l + 1)); the long dimension gets extra
    regions so that neighbours overlap by about ``overlap``.
    """
    short = min(height, width)
    steps = torch.tensor([2.0, 3, 4, 5, 6, 7])
    gap = (max(height, width) - short) / (steps - 1)
    extra = int(torch.argmin(torch.abs((short ** 2 - short * gap) / short ** 2 - overlap)).item()) + 1
    extra_w = extra if height < width else 0
    extra_h = extra if height > width else 0

    def starts(length: int, side: int, count: int) -> List[int]:
        half = math.floor(side / 2 - 1)
        step = 0.0 if count == 1 else (length - side) / (count - 1)
        return [int(math.floor(half + i * step) - half) for i in range(count)]

    regions = []
    for level in range(1, levels + 1):
        side = math.floor(2 * short / (level + 1))
        if side == 0:
            continue
        for top in starts(height, side, level + extra_h):
            for left in starts(width, side, level + extra_w):
                regions.append((top, left, side))
    return regions


def rmac(x: torch.Tensor, levels: int = 3, eps: float = 1e-6) -> torch.Tensor:
    """R-MAC: L2-normalised global MAC plus the sum of L2-normalised regional MACs."""
    out = l2n(mac(x), eps=eps)
    for top, left, side in rmac_regions(x.shape[-2], x.shape[-1], levels):
        out = out + l2n(mac(x[..., top:top + side, left:left + side]), eps=eps)
    return out


class MAC(nn.Module):
    """Global max pooling."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mac(x)


class SPoC(nn.Module):
    """Global average pooling."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return spoc(x)


class GeM(nn.Module):
    """Generalised-mean pooling with one learnable exponent ``p`` (init 3)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.ones(1) * p)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gem(x, self.p, self.eps)

    def extra_repr(self) -> str:
        return f"p={self.p.data.tolist()[0]:.4f}, eps={self.eps}"


class GeMmp(nn.Module):
    """GeM with one learnable exponent per channel (``mp`` of them, all init 3)."""

    def __init__(self, p: float = 3.0, mp: int = 1, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.ones(mp) * p)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gem(x, self.p, self.eps)


class RMAC(nn.Module):
    """R-MAC pooling (regional MAC on a 3-level grid)."""

    def __init__(self, levels: int = 3, eps: float = 1e-6):
        super().__init__()
        self.levels = levels
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rmac(x, self.levels, self.eps)


class Rpool(nn.Module):
    """Regional pooling: the whole map and every R-MAC region pooled with ``rpool``,
    L2-normalised, optionally whitened (``whiten``) and normalised again, then summed."""

    def __init__(self, rpool: nn.Module, whiten: Optional[nn.Module] = None, levels: int = 3, eps: float = 1e-6):
        super().__init__()
        self.rpool = rpool
        self.whiten = whiten
        self.levels = levels
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        crops = [x] + [x[..., t:t + s, l:l + s] for t, l, s in rmac_regions(x.shape[-2], x.shape[-1], self.levels)]
        regions = torch.stack([self.rpool(c).flatten(1) for c in crops], dim=1)  # B x R x C
        regions = l2n(regions, eps=self.eps, dim=-1)
        if self.whiten is not None:
            regions = l2n(self.whiten(regions), eps=self.eps, dim=-1)
        return l2n(regions.sum(dim=1), eps=self.eps)[..., None, None]


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
