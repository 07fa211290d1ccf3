"""cirtorch's functional API (``cirtorch.layers.functional``): pooling, normalisation and
tuple losses as pure functions, with the original names, signatures and results.

This module is the one implementation of each formula: the pooling modules
(`aml.layers.pooling`), `aml.layers.normalization.L2N` and the loss classes
(`aml.losses`) call these functions.

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
    extra = int(torch.argmin(torch.abs((short**2 - short * gap) / short**2 - overlap)).item()) + 1
    extra_w = extra if height < width else 0
    extra_h = extra if height > width else 0

    def starts(length: int, side: int, count: int) -> List[int]:
        half = math.floor(side / 2 - 1)
        step = 0.0 if count == 1 else (length - side) / (count - 1)
        # in float32, as cirtorch: a start that is a whole number in float64 can fall just below it
        # (34 x 5 has a region at row 30, not 31)
        positions = torch.floor(half + torch.arange(count, dtype=torch.float32) * step) - half
        return [int(start) for start in positions.tolist()]

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
        out = out + l2n(mac(x[..., top : top + side, left : left + side]), eps=eps)
    return out


def roipool(x: torch.Tensor, rpool, L: int = 3, eps: float = 1e-6) -> torch.Tensor:
    """``rpool`` applied to the whole map and to every R-MAC region: B x R x C x 1 x 1
    (region 0 is the whole map). ``eps`` is unused, as in cirtorch."""
    crops = [x] + [x[..., top : top + s, left : left + s] for top, left, s in rmac_regions(x.shape[-2], x.shape[-1], L)]
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
# tuple losses, batched: anchors B x D, members B x M x D, labels B x M (1 positive, 0 negative,
# -1 no member: the padding of a tuple shorter than the batch's longest); one value per tuple.
# These are the formulas; the cirtorch-shaped functions after them (x: D x N columns, label: N
# values in {-1, 1, 0}) regroup their columns into this shape and sum.


def tuple_distances(anchors: torch.Tensor, members: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """B x M distances ||anchor_b - member_bj + eps|| (eps added to every coordinate, as cirtorch)."""
    return torch.sqrt(torch.sum((anchors[:, None, :] - members + eps) ** 2, dim=-1))


def _masked_sum(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Sum over members of ``values`` where ``keep`` (a where, so that a discarded inf or NaN
    sends no NaN into the sum or the gradient)."""
    return torch.where(keep, values, values.new_zeros(())).sum(dim=-1)


def contrastive_losses(
    anchors: torch.Tensor, members: torch.Tensor, labels: torch.Tensor, margin: float = 0.7, eps: float = 1e-6
) -> torch.Tensor:
    """Per tuple: sum over members of 0.5 y d^2 + 0.5 (1 - y) max(0, margin - d)^2."""
    d = tuple_distances(anchors, members, eps)
    y = labels.to(d.dtype)
    return _masked_sum(0.5 * y * d**2 + 0.5 * (1 - y) * torch.clamp(margin - d, min=0) ** 2, labels >= 0)


def contrastive_dist_losses(
    anchors: torch.Tensor, members: torch.Tensor, labels: torch.Tensor, dists: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """Per tuple: sum of 0.5 y d^2 + 0.5 (1 - y) (dist - d)^2, the negatives pulled to the
    target distances ``dists`` (B x M) instead of pushed past a margin."""
    d = tuple_distances(anchors, members, eps)
    y = labels.to(d.dtype)
    return _masked_sum(0.5 * y * d**2 + 0.5 * (1 - y) * (dists.to(d.dtype) - d) ** 2, labels >= 0)


def regression_losses(
    anchors: torch.Tensor, members: torch.Tensor, labels: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """Per tuple: 0.5 ||anchor - positive + eps||^2 summed over positives (negatives ignored):
    what the contrastive loss computes on (-1, 1) pairs, aml's ``regression`` loss."""
    return _masked_sum(0.5 * tuple_distances(anchors, members, eps) ** 2, labels == 1)


def triplet_losses(
    anchors: torch.Tensor, members: torch.Tensor, labels: torch.Tensor, margin: float = 0.1
) -> torch.Tensor:
    """Per tuple: sum over negatives of max(0, |a - p|^2 - |a - n|^2 + margin), exactly one
    positive per tuple (no eps)."""
    one_positive = ((labels == 1).sum(dim=1) == 1).all()
    if labels.device.type in ("cuda", "meta"):  # asserted by the device: reading it back would stall every batch
        torch._assert_async(one_positive, "the triplet loss needs exactly one positive per tuple")
    elif not bool(one_positive):  # the CPU (and MPS, which has no asynchronous assert)
        raise ValueError("the triplet loss needs exactly one positive per tuple")
    squared = torch.sum((anchors[:, None, :] - members) ** 2, dim=-1)
    positive = _masked_sum(squared, labels == 1)
    return _masked_sum(torch.clamp(positive[:, None] - squared + margin, min=0), labels == 0)


def _positive_log_likelihood(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per tuple: -sum over positives of log softmax over the tuple's members of ``scores``."""
    present = labels >= 0
    log_p = F.log_softmax(scores.masked_fill(~present, float("-inf")), dim=-1)
    return -_masked_sum(log_p, labels == 1)


def cross_entropy_dist_losses(
    anchors: torch.Tensor, members: torch.Tensor, labels: torch.Tensor, temp: float, eps: float = 1e-6
) -> torch.Tensor:
    """InfoNCE on distances, per tuple: -sum_pos log softmax_j(-d_j / temp) over its members."""
    return _positive_log_likelihood(-tuple_distances(anchors, members, eps) / temp, labels)


def similarity_cross_entropy_losses(
    anchors: torch.Tensor, members: torch.Tensor, labels: torch.Tensor, temp: float
) -> torch.Tensor:
    """InfoNCE on similarities, per tuple: -sum_pos log softmax_j(anchor . x_j / temp) over
    its members (aml's ``cross_entropy`` loss)."""
    return _positive_log_likelihood(torch.einsum("bd,bmd->bm", anchors, members) / temp, labels)


def multi_similarity_losses(
    anchors: torch.Tensor,
    members: torch.Tensor,
    labels: torch.Tensor,
    thresh: float = 0.5,
    scale_pos: float = 2.0,
    scale_neg: float = 40.0,
) -> torch.Tensor:
    """Multi-similarity (Wang et al.) on anchor-member dot products s, per tuple:
    (1/a) log(1 + sum_pos exp(-a (s - l))) + (1/b) log(1 + sum_neg exp(b (s - l)))
    (a term without members is 0)."""
    s = torch.einsum("bd,bmd->bm", anchors, members)
    positive = torch.log1p(_masked_sum(torch.exp(-scale_pos * (s - thresh)), labels == 1)) / scale_pos
    return positive + torch.log1p(_masked_sum(torch.exp(scale_neg * (s - thresh)), labels == 0)) / scale_neg


# cirtorch's column shape


def _tuple_index(label: torch.Tensor) -> torch.Tensor:
    """For every column, the index of its tuple (0, 1, ...); tuples start at a -1."""
    label = label.reshape(-1)
    if label.numel() == 0 or label[0] != -1:
        raise ValueError("a tuple must start with its anchor (label -1)")
    return torch.cumsum((label == -1).long(), dim=0) - 1


def columns_to_tuples(x: torch.Tensor, label: torch.Tensor, *per_member: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """cirtorch's D x N tuple matrix (several tuples of any lengths, each starting at its
    anchor, label -1) as (anchors B x D, members B x M x D, labels B x M with -1 padding),
    followed by each of ``per_member`` (one value per non-anchor column, in column order)
    as B x M."""
    label = label.reshape(-1).to(x.device)  # a CPU label for descriptors on a GPU
    tuples = _tuple_index(label)
    is_member = label != -1
    starts = torch.nonzero(~is_member).flatten()
    slot = torch.arange(label.numel(), device=label.device) - starts[tuples] - 1
    count, width = len(starts), int(slot.max().clamp(min=0)) + 1 if is_member.any() else 0
    rows, cols = tuples[is_member], slot[is_member]
    members = x.new_zeros((count, width, x.shape[0]))
    members[rows, cols] = x[:, is_member].t()
    labels = torch.full((count, width), -1, dtype=torch.long, device=label.device)
    labels[rows, cols] = label[is_member].long()
    extra = []
    for values in per_member:
        padded = x.new_zeros((count, width))
        padded[rows, cols] = torch.as_tensor(values, dtype=x.dtype, device=x.device).reshape(-1)
        extra.append(padded)
    return (x[:, ~is_member].t(), members, labels, *extra)


def pair_distances(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """||a_i - b_i + eps|| per column (eps added to every coordinate, as cirtorch)."""
    return torch.sqrt(torch.sum((a - b + eps) ** 2, dim=0))


def _tuples(x: torch.Tensor, label: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`columns_to_tuples` without per-member values: (anchors, members, labels)."""
    anchors, members, labels = columns_to_tuples(x, label)
    return anchors, members, labels


def contrastive_loss(x: torch.Tensor, label: torch.Tensor, margin: float = 0.7, eps: float = 1e-6) -> torch.Tensor:
    """Sum over (anchor, member) pairs of 0.5 y d^2 + 0.5 (1 - y) max(0, margin - d)^2."""
    return contrastive_losses(*_tuples(x, label), margin, eps).sum()


def contrastive_loss_dist(x: torch.Tensor, label: torch.Tensor, dists: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Contrastive loss whose negatives are pulled to target distances ``dists`` (one per
    non-anchor column, in column order) instead of pushed past a margin:
    sum of 0.5 y d^2 + 0.5 (1 - y) (dist - d)^2."""
    anchors, members, labels, targets = columns_to_tuples(x, label, dists)
    return contrastive_dist_losses(anchors, members, labels, targets, eps).sum()


def regression_loss(x: torch.Tensor, label: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """0.5 ||anchor - positive + eps||^2 summed over positives (negatives ignored)."""
    return regression_losses(*_tuples(x, label), eps).sum()


def triplet_loss(x: torch.Tensor, label: torch.Tensor, margin: float = 0.1) -> torch.Tensor:
    """Sum over negatives of max(0, |a - p|^2 - |a - n|^2 + margin), exactly one positive
    per tuple (no eps)."""
    return triplet_losses(*_tuples(x, label), margin).sum()


def cross_entropy_loss(x: torch.Tensor, label: torch.Tensor, temp: float, eps: float = 1e-6) -> torch.Tensor:
    """The original's ``cross_entropy_loss``, kept for compatibility: -sum(label * log_softmax(x / temp))
    with the softmax over dimension 1 of the D x N matrix and the label broadcast over rows.
    It is not a retrieval loss (the anchor's label -1 enters it); aml's ``cross_entropy``
    loss uses `similarity_cross_entropy_loss`."""
    return -torch.sum(label.reshape(1, -1).to(x.dtype) * F.log_softmax(x / temp, dim=1))


def cross_entropy_loss_dist(x: torch.Tensor, label: torch.Tensor, temp: float, eps: float = 1e-6) -> torch.Tensor:
    """InfoNCE on distances: for each tuple, -sum_pos log softmax_j(-d_j / temp) over its
    members (d as in the contrastive loss). The original took one softmax over all pairs
    given; for a single tuple both are equal."""
    return cross_entropy_dist_losses(*_tuples(x, label), temp, eps).sum()


def similarity_cross_entropy_loss(x: torch.Tensor, label: torch.Tensor, temp: float) -> torch.Tensor:
    """InfoNCE on similarities: for each tuple, -sum_pos log softmax_j(anchor . x_j / temp)
    over its members."""
    return similarity_cross_entropy_losses(*_tuples(x, label), temp).sum()


def multi_similarity_loss(
    x: torch.Tensor, label: torch.Tensor, thresh: float = 0.5, scale_pos: float = 2.0, scale_neg: float = 40.0
) -> torch.Tensor:
    """Multi-similarity (Wang et al.), summed over tuples (the original used only the first
    anchor of a batch)."""
    return multi_similarity_losses(*_tuples(x, label), thresh, scale_pos, scale_neg).sum()


def pdist(e: torch.Tensor, squared: bool = False, eps: float = 1e-12) -> torch.Tensor:
    """N x N Euclidean distances between rows: sqrt(max(|ei|^2 + |ej|^2 - 2 ei.ej, eps)),
    zero diagonal (squared distances with ``squared``)."""
    norms = e.pow(2).sum(dim=1)
    d = (norms[:, None] + norms[None, :] - 2 * e @ e.t()).clamp(min=eps)
    if not squared:
        d = d.sqrt()
    return d * (1 - torch.eye(len(e), dtype=e.dtype, device=e.device))


def _angles(e: torch.Tensor) -> torch.Tensor:
    diff = F.normalize(e[None, :, :] - e[:, None, :], p=2, dim=2)  # [i, j] = unit(ej - ei)
    return torch.bmm(diff, diff.transpose(1, 2)).reshape(-1)


def _normalised_distances(e: torch.Tensor) -> torch.Tensor:
    d = pdist(e)
    # the mean over the positive distances (the diagonal's zeros left out), counted on the
    # device: d[d > 0] would make the host wait on CUDA to learn how many there are
    return d / (d.sum() / (d > 0).sum())


def rkd_loss(
    student: torch.Tensor, teacher: torch.Tensor, dist_ratio: float = 1.0, angle_ratio: float = 2.0
) -> torch.Tensor:
    """Relational KD (Park et al.): ``angle_ratio`` x the angle loss + ``dist_ratio`` x the
    distance loss (smooth-L1, mean) between the rows of the student and of the teacher (N x C
    each, the same images in the same order); the teacher's side carries no gradient."""
    with torch.no_grad():
        teacher_d, teacher_a = _normalised_distances(teacher), _angles(teacher)
    return dist_ratio * F.smooth_l1_loss(_normalised_distances(student), teacher_d) + angle_ratio * F.smooth_l1_loss(
        _angles(student), teacher_a
    )


def hard_darkrank_loss(
    student: torch.Tensor, teacher: torch.Tensor, alpha: float = 3.0, beta: float = 3.0, permute_len: int = 4
) -> torch.Tensor:
    """DarkRank (Chen et al.), hard version: minus the mean log-likelihood, under the student's
    scores -alpha d^beta, of the teacher's ranking of each row's ``permute_len`` nearest rows
    (student and teacher N x C, N >= 2; the N - 1 others where N <= ``permute_len``, as the
    original ranked them)."""
    if len(student) < 2:
        raise ValueError("DarkRank ranks each image's nearest others: it needs at least 2 images")
    with torch.no_grad():
        teacher_scores = -alpha * pdist(teacher).pow(beta)
        order = teacher_scores.sort(dim=1, descending=True)[1][:, 1 : permute_len + 1]
    ordered = torch.gather(-alpha * pdist(student).pow(beta), 1, order)
    tails = torch.stack([torch.logsumexp(ordered[:, k:], dim=1) for k in range(ordered.shape[1])], dim=1)
    return -(ordered - tails).sum(dim=1).mean()


__all__ = [
    "mac",
    "spoc",
    "gem",
    "rmac",
    "rmac_regions",
    "roipool",
    "l2n",
    "powerlaw",
    "contrastive_loss",
    "contrastive_loss_dist",
    "regression_loss",
    "triplet_loss",
    "cross_entropy_loss",
    "cross_entropy_loss_dist",
    "similarity_cross_entropy_loss",
    "multi_similarity_loss",
    "pair_distances",
    "pdist",
    "tuple_distances",
    "columns_to_tuples",
    "contrastive_losses",
    "contrastive_dist_losses",
    "regression_losses",
    "triplet_losses",
    "cross_entropy_dist_losses",
    "similarity_cross_entropy_losses",
    "multi_similarity_losses",
    "rkd_loss",
    "hard_darkrank_loss",
]
