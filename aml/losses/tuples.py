"""Losses over tuples: columns of a D x S matrix with labels -1 (anchor), 1 (positive),
0 (negative). A matrix may hold several tuples one after another; each starts at a -1.
Every loss here sums over tuples (the original's reduction) and never prints or writes.
"""

from typing import Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn


def split_tuples(x: torch.Tensor, label: torch.Tensor) -> Iterator[Tuple[torch.Tensor, torch.Tensor, torch.Tensor, slice]]:
    """Yield (anchor D, members D x M, member labels M, column slice of the members)."""
    label = label.reshape(-1)
    starts = torch.nonzero(label == -1).flatten().tolist()
    if not starts or starts[0] != 0:
        raise ValueError("a tuple must start with its anchor (label -1)")
    for begin, end in zip(starts, starts[1:] + [label.numel()]):
        yield x[:, begin], x[:, begin + 1:end], label[begin + 1:end], slice(begin + 1, end)


def pair_distances(anchor: torch.Tensor, members: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """||anchor - member + eps|| for each member column (eps added per coordinate)."""
    return torch.sqrt(torch.sum((anchor[:, None] - members + eps) ** 2, dim=0))


class ContrastiveLoss(nn.Module):
    """0.5 d^2 for positives, 0.5 max(0, margin - d)^2 for negatives, summed."""

    def __init__(self, margin: float = 0.7, eps: float = 1e-6):
        super().__init__()
        self.margin, self.eps = margin, eps

    def forward(self, x: torch.Tensor, label: torch.Tensor, target: Optional[torch.Tensor] = None) -> torch.Tensor:
        total = x.new_zeros(())
        for anchor, members, y, _ in split_tuples(x, label):
            d = pair_distances(anchor, members, self.eps)
            total = total + torch.sum(0.5 * y * d ** 2 + 0.5 * (1 - y) * torch.clamp(self.margin - d, min=0) ** 2)
        return total


class RegressionLoss(nn.Module):
    """0.5 ||anchor - positive||^2 summed over positives (regression to the teacher)."""

    def __init__(self, eps: float = 1e-6, **_: float):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor, label: torch.Tensor, target: Optional[torch.Tensor] = None) -> torch.Tensor:
        total = x.new_zeros(())
        for anchor, members, y, _ in split_tuples(x, label):
            total = total + torch.sum(0.5 * (y == 1) * pair_distances(anchor, members, self.eps) ** 2)
        return total


class ContrastiveDistLoss(nn.Module):
    """Contrastive loss whose negatives are pulled to a target distance (the teacher's
    distance between the same images) instead of a margin: 0.5 y d^2 + 0.5 (1-y)(t - d)^2."""

    needs_target = True

    def __init__(self, eps: float = 1e-6, **_: float):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor, label: torch.Tensor, target: Optional[torch.Tensor] = None) -> torch.Tensor:
        if target is None:
            raise ValueError("contrastive_dist needs the teacher's distances (target)")
        total = x.new_zeros(())
        for anchor, members, y, columns in split_tuples(x, label):
            d = pair_distances(anchor, members, self.eps)
            total = total + torch.sum(0.5 * y * d ** 2 + 0.5 * (1 - y) * (target.reshape(-1)[columns] - d) ** 2)
        return total


class TripletLoss(nn.Module):
    """Sum over negatives of max(0, |a-p|^2 - |a-n|^2 + margin); one positive per tuple."""

    def __init__(self, margin: float = 0.1):
        super().__init__()
        self.margin = margin

    def forward(self, x: torch.Tensor, label: torch.Tensor, target: Optional[torch.Tensor] = None) -> torch.Tensor:
        total = x.new_zeros(())
        for anchor, members, y, _ in split_tuples(x, label):
            if int((y == 1).sum()) != 1:
                raise ValueError("the triplet loss needs exactly one positive per tuple")
            squared = torch.sum((anchor[:, None] - members) ** 2, dim=0)
            total = total + torch.sum(torch.clamp(squared[y == 1] - squared[y == 0] + self.margin, min=0))
        return total


class MultiSimilarityLoss(nn.Module):
    """Multi-similarity (Wang et al.) on anchor-member dot products s:
    (1/a) log(1 + sum_pos exp(-a (s - l))) + (1/b) log(1 + sum_neg exp(b (s - l))),
    with l = 0.5, a = 2, b = 40, per tuple (the original used only the first anchor)."""

    def __init__(self, thresh: float = 0.5, scale_pos: float = 2.0, scale_neg: float = 40.0, **_: float):
        super().__init__()
        self.thresh, self.scale_pos, self.scale_neg = thresh, scale_pos, scale_neg

    def forward(self, x: torch.Tensor, label: torch.Tensor, target: Optional[torch.Tensor] = None) -> torch.Tensor:
        total = x.new_zeros(())
        for anchor, members, y, _ in split_tuples(x, label):
            s = anchor @ members
            pos, neg = s[y == 1], s[y == 0]
            if pos.numel():
                total = total + torch.log1p(torch.exp(-self.scale_pos * (pos - self.thresh)).sum()) / self.scale_pos
            if neg.numel():
                total = total + torch.log1p(torch.exp(self.scale_neg * (neg - self.thresh)).sum()) / self.scale_neg
        return total


class CrossEntropyDistLoss(nn.Module):
    """InfoNCE on distances: -sum_pos log softmax_j(-d_j / T) over one tuple's members."""

    def __init__(self, temp: float = 0.1, eps: float = 1e-6, **_: float):
        super().__init__()
        self.temp, self.eps = temp, eps

    def forward(self, x: torch.Tensor, label: torch.Tensor, target: Optional[torch.Tensor] = None) -> torch.Tensor:
        total = x.new_zeros(())
        for anchor, members, y, _ in split_tuples(x, label):
            log_p = F.log_softmax(-pair_distances(anchor, members, self.eps) / self.temp, dim=0)
            total = total - torch.sum(y * log_p)
        return total


class CrossEntropyLoss(nn.Module):
    """InfoNCE on similarities: -sum_pos log softmax_j(a . x_j / T) over one tuple's members.
    (The original's version took a softmax over descriptor rows and is meaningless.)"""

    def __init__(self, temp: float = 0.1, **_: float):
        super().__init__()
        self.temp = temp

    def forward(self, x: torch.Tensor, label: torch.Tensor, target: Optional[torch.Tensor] = None) -> torch.Tensor:
        total = x.new_zeros(())
        for anchor, members, y, _ in split_tuples(x, label):
            total = total - torch.sum(y * F.log_softmax(anchor @ members / self.temp, dim=0))
        return total
