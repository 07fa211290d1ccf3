"""cirtorch's functional API (``cirtorch.layers.functional``): pooling, normalisation and
tuple losses as pure functions, with the original names, signatures and results.

This module is the one implementation of each formula: the pooling modules
(:mod:`aml.layers.pooling`), :class:`aml.layers.normalization.L2N` and the loss classes
(:mod:`aml.losses`) call these functions.

Conventions, as cirtorch's: feature maps are B x C x H x W; descriptors are columns of a
D x N matrix; a tuple is a run of columns that starts at its anchor (label -1) and holds
positives (label 1) and negatives (label 0). Several tuples may follow one another (a
validation batch); unlike cirtorch, tuples may differ in length.
"""

import math
from typing import List, Tuple, Union

import torch
import torch.nn.functional as F

Number = Union[float, torch.Tensor]

# ------------------------------------------------------------------------------------------
# pooling


def mac(x: torch.Tensor) -> torch.Tensor:
    """Maximum activation of convolutions: global max pooling, B x C x 1 x 1."""
    return torch.amax(x, dim=(-2, -1), keepdim=True)


def spoc(x: torch.Tensor) -> torch.Tensor:
    """Sum-pooling of convolutions (as an average): global average pooling, B x C x 1 x 1."""
    return torch.mean(x, dim=(-2, -1), keepdim=True)


def gem(x: torch.Tensor, p: Number = 3, eps: float = 1e-6) -> torch.Tensor:
    """Generalised mean: (mean over positions of clamp(x, eps)^p)^(1/p).

    ``p`` is a number, a one-element tensor, or one value per channel (shape (C,), or
    (C, 1, 1) as cirtorch's GeMmp passes it).
    """
    if isinstance(p, torch.Tensor) and p.dim() == 1 and p.numel() > 1:
        p = p.reshape(1, -1, 1, 1)
    return x.clamp(min=eps).pow(p).mean(dim=(-2, -1), keepdim=True).pow(1.0 / p)


def rmac_regions(height: int, width: int, levels: int = 3, overlap: float = 0.4) -> List[Tuple[int, int, int]]:
    """R-MAC grid (Tolias et al.): square regions as (top, left, side) on an H x W map.

    At level l the side is floor(2 * min(H, W) / (l + 1)); the long dimension gets extra
    regions (chosen among 2..7) so that neighbours overlap by about ``overlap``.
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


def rmac(x: torch.Tensor, L: int = 3, eps: float = 1e-6) -> torch.Tensor:
    """R-MAC: L2-normalised global MAC plus the sum of L2-normalised regional MACs."""
    out = l2n(mac(x), eps=eps)
    for top, left, side in rmac_regions(x.shape[-2], x.shape[-1], L):
        out = out + l2n(mac(x[..., top:top + side, left:left + side]), eps=eps)
    return out


def roipool(x: torch.Tensor, rpool, L: int = 3, eps: float = 1e-6) -> torch.Tensor:
    """``rpool`` applied to the whole map and to every R-MAC region: B x R x C x 1 x 1
    (region 0 is the whole map). ``eps`` is unused, as in cirtorch."""
    crops = [x] + [x[..., t:t + s, l:l + s] for t, l, s in rmac_regions(x.shape[-2], x.shape[-1], L)]
    return torch.stack([rpool(crop) for crop in crops], dim=1)


# ------------------------------------------------------------------------------------------
# normalisation


def l2n(x: torch.Tensor, eps: float = 1e-6, dim: int = 1) -> torch.Tensor:
    """Divide ``x`` by its L2 norm along ``dim`` (channels by default) plus ``eps``."""
    return x / (torch.linalg.vector_norm(x, ord=2, dim=dim, keepdim=True) + eps)


def powerlaw(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Signed square root of x + eps (cirtorch's version referenced an undefined ``self``)."""
    x = x + eps
    return x.abs().sqrt().mul(x.sign())


# ------------------------------------------------------------------------------------------
# tuple losses (x: D x N columns, label: N values in {-1, 1, 0})


def _tuple_index(label: torch.Tensor) -> torch.Tensor:
    """For every column, the index of its tuple (0, 1, ...); tuples start at a -1."""
    label = label.reshape(-1)
    if label.numel() == 0 or label[0] != -1:
        raise ValueError("a tuple must start with its anchor (label -1)")
    return torch.cumsum((label == -1).long(), dim=0) - 1


def _anchor_pairs(x: torch.Tensor, label: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(anchor of each non-anchor column D x M, those columns D x M, their labels M)."""
    label = label.reshape(-1)
    tuples = _tuple_index(label)
    members = label != -1
    anchors = x[:, label == -1]
    return anchors[:, tuples[members]], x[:, members], label[members].to(x.dtype)


def pair_distances(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """||a_i - b_i + eps|| per column (eps added to every coordinate, as cirtorch)."""
    return torch.sqrt(torch.sum((a - b + eps) ** 2, dim=0))


def contrastive_loss(x: torch.Tensor, label: torch.Tensor, margin: float = 0.7, eps: float = 1e-6) -> torch.Tensor:
    """Sum over (anchor, member) pairs of 0.5 y d^2 + 0.5 (1 - y) max(0, margin - d)^2."""
    anchors, members, y = _anchor_pairs(x, label)
    d = pair_distances(anchors, members, eps)
    return torch.sum(0.5 * y * d ** 2 + 0.5 * (1 - y) * torch.clamp(margin - d, min=0) ** 2)


def contrastive_loss_dist(x: torch.Tensor, label: torch.Tensor, dists: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Contrastive loss whose negatives are pulled to target distances ``dists`` (one per
    non-anchor column, in column order) instead of pushed past a margin:
    sum of 0.5 y d^2 + 0.5 (1 - y) (dist - d)^2."""
    anchors, members, y = _anchor_pairs(x, label)
    d = pair_distances(anchors, members, eps)
    dists = torch.as_tensor(dists, dtype=d.dtype, device=d.device).reshape(-1)
    return torch.sum(0.5 * y * d ** 2 + 0.5 * (1 - y) * (dists - d) ** 2)


def regression_loss(x: torch.Tensor, label: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """0.5 ||anchor - positive + eps||^2 summed over positives (negatives ignored): what the
    contrastive loss computes on (-1, 1) pairs, aml's ``regression`` loss."""
    anchors, members, y = _anchor_pairs(x, label)
    return torch.sum(0.5 * (y == 1) * pair_distances(anchors, members, eps) ** 2)


def triplet_loss(x: torch.Tensor, label: torch.Tensor, margin: float = 0.1) -> torch.Tensor:
    """Sum over negatives of max(0, |a - p|^2 - |a - n|^2 + margin), exactly one positive
    per tuple (no eps)."""
    label = label.reshape(-1)
    tuples = _tuple_index(label)
    positives_per_tuple = torch.bincount(tuples[label == 1], minlength=int(tuples[-1]) + 1)
    if not bool((positives_per_tuple == 1).all()):
        raise ValueError("the triplet loss needs exactly one positive per tuple")
    negative_tuples = tuples[label == 0]
    anchors = x[:, label == -1][:, negative_tuples]
    positives = x[:, label == 1][:, negative_tuples]
    negatives = x[:, label == 0]
    dist_pos = torch.sum((anchors - positives) ** 2, dim=0)
    dist_neg = torch.sum((anchors - negatives) ** 2, dim=0)
    return torch.sum(torch.clamp(dist_pos - dist_neg + margin, min=0))


def cross_entropy_loss(x: torch.Tensor, label: torch.Tensor, temp: float, eps: float = 1e-6) -> torch.Tensor:
    """The original's ``cross_entropy_loss``, kept for compatibility: -sum(label * log_softmax(x / temp))
    with the softmax over dimension 1 of the D x N matrix and the label broadcast over rows.
    It is not a retrieval loss (the anchor's label -1 enters it); aml's ``cross_entropy``
    loss uses :func:`similarity_cross_entropy_loss`."""
    return -torch.sum(label.reshape(1, -1).to(x.dtype) * F.log_softmax(x / temp, dim=1))


def _per_tuple(label: torch.Tensor) -> List[Tuple[int, int]]:
    """(first, end) column of every tuple, checked as :func:`_tuple_index` checks them."""
    label = label.reshape(-1)
    _tuple_index(label)
    starts = torch.nonzero(label == -1).flatten().tolist()
    return list(zip(starts, starts[1:] + [label.numel()]))


def cross_entropy_loss_dist(x: torch.Tensor, label: torch.Tensor, temp: float, eps: float = 1e-6) -> torch.Tensor:
    """InfoNCE on distances: for each tuple, -sum_pos log softmax_j(-d_j / temp) over its
    members (d as in the contrastive loss). The original took one softmax over all pairs
    given; for a single tuple both are equal."""
    label = label.reshape(-1)
    total = x.new_zeros(())
    for begin, end in _per_tuple(label):
        d = pair_distances(x[:, begin:begin + 1], x[:, begin + 1:end], eps)
        total = total - torch.sum(label[begin + 1:end].to(x.dtype) * F.log_softmax(-d / temp, dim=0))
    return total


def similarity_cross_entropy_loss(x: torch.Tensor, label: torch.Tensor, temp: float) -> torch.Tensor:
    """InfoNCE on similarities: for each tuple, -sum_pos log softmax_j(anchor . x_j / temp)
    over its members (aml's ``cross_entropy`` loss)."""
    label = label.reshape(-1)
    total = x.new_zeros(())
    for begin, end in _per_tuple(label):
        scores = x[:, begin] @ x[:, begin + 1:end] / temp
        total = total - torch.sum(label[begin + 1:end].to(x.dtype) * F.log_softmax(scores, dim=0))
    return total


def multi_similarity_loss(x: torch.Tensor, label: torch.Tensor, thresh: float = 0.5, scale_pos: float = 2.0,
                          scale_neg: float = 40.0) -> torch.Tensor:
    """Multi-similarity (Wang et al.) on anchor-member dot products s, per tuple:
    (1/a) log(1 + sum_pos exp(-a (s - l))) + (1/b) log(1 + sum_neg exp(b (s - l))).
    (The original used only the first anchor of a batch.)"""
    label = label.reshape(-1)
    total = x.new_zeros(())
    for begin, end in _per_tuple(label):
        s = x[:, begin] @ x[:, begin + 1:end]
        y = label[begin + 1:end]
        pos, neg = s[y == 1], s[y == 0]
        if pos.numel():
            total = total + torch.log1p(torch.exp(-scale_pos * (pos - thresh)).sum()) / scale_pos
        if neg.numel():
            total = total + torch.log1p(torch.exp(scale_neg * (neg - thresh)).sum()) / scale_neg
    return total


def pdist(e: torch.Tensor, squared: bool = False, eps: float = 1e-12) -> torch.Tensor:
    """N x N Euclidean distances between rows: sqrt(max(|ei|^2 + |ej|^2 - 2 ei.ej, eps)),
    zero diagonal (squared distances with ``squared``)."""
    norms = e.pow(2).sum(dim=1)
    d = (norms[:, None] + norms[None, :] - 2 * e @ e.t()).clamp(min=eps)
    if not squared:
        d = d.sqrt()
    return d * (1 - torch.eye(len(e), dtype=e.dtype, device=e.device))


__all__ = ["mac", "spoc", "gem", "rmac", "rmac_regions", "roipool", "l2n", "powerlaw", "contrastive_loss",
           "contrastive_loss_dist", "regression_loss", "triplet_loss", "cross_entropy_loss", "cross_entropy_loss_dist",
           "similarity_cross_entropy_loss", "multi_similarity_loss", "pair_distances", "pdist"]
