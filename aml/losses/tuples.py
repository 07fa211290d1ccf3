"""Losses over tuples: columns of a D x S matrix with labels -1 (anchor), 1 (positive),
0 (negative). A matrix may hold several tuples one after another; each starts at a -1.
Every loss here sums over tuples (the original's reduction) and never prints or writes.
The formulas are in :mod:`aml.layers.functional`; these modules hold the hyper-parameters.
"""

from typing import Optional

import torch
from torch import nn

from aml.layers import functional as LF


class ContrastiveLoss(nn.Module):
    """0.5 d^2 for positives, 0.5 max(0, margin - d)^2 for negatives, summed."""

    def __init__(self, margin: float = 0.7, eps: float = 1e-6):
        super().__init__()
        self.margin, self.eps = margin, eps

    def forward(self, x: torch.Tensor, label: torch.Tensor, target: Optional[torch.Tensor] = None) -> torch.Tensor:
        return LF.contrastive_loss(x, label, self.margin, self.eps)


class RegressionLoss(nn.Module):
    """0.5 ||anchor - positive||^2 summed over positives (regression to the teacher)."""

    def __init__(self, eps: float = 1e-6):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor, label: torch.Tensor, target: Optional[torch.Tensor] = None) -> torch.Tensor:
        return LF.regression_loss(x, label, self.eps)


class ContrastiveDistLoss(nn.Module):
    """Contrastive loss whose negatives are pulled to a target distance (the teacher's
    distance between the same images) instead of a margin: 0.5 y d^2 + 0.5 (1-y)(t - d)^2.
    ``target`` holds one distance per column (the anchor's is ignored)."""

    needs_target = True

    def __init__(self, eps: float = 1e-6):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor, label: torch.Tensor, target: Optional[torch.Tensor] = None) -> torch.Tensor:
        if target is None:
            raise ValueError("contrastive_dist needs the teacher's distances (target)")
        return LF.contrastive_loss_dist(x, label, target.reshape(-1)[label.reshape(-1) != -1], self.eps)


class TripletLoss(nn.Module):
    """Sum over negatives of max(0, |a-p|^2 - |a-n|^2 + margin); one positive per tuple."""

    def __init__(self, margin: float = 0.1):
        super().__init__()
        self.margin = margin

    def forward(self, x: torch.Tensor, label: torch.Tensor, target: Optional[torch.Tensor] = None) -> torch.Tensor:
        return LF.triplet_loss(x, label, self.margin)


class MultiSimilarityLoss(nn.Module):
    """Multi-similarity (Wang et al.) with l = 0.5, a = 2, b = 40, per tuple."""

    def __init__(self, thresh: float = 0.5, scale_pos: float = 2.0, scale_neg: float = 40.0):
        super().__init__()
        self.thresh, self.scale_pos, self.scale_neg = thresh, scale_pos, scale_neg

    def forward(self, x: torch.Tensor, label: torch.Tensor, target: Optional[torch.Tensor] = None) -> torch.Tensor:
        return LF.multi_similarity_loss(x, label, self.thresh, self.scale_pos, self.scale_neg)


class CrossEntropyDistLoss(nn.Module):
    """InfoNCE on distances: -sum_pos log softmax_j(-d_j / T) over one tuple's members."""

    def __init__(self, temp: float = 0.1, eps: float = 1e-6):
        super().__init__()
        self.temp, self.eps = temp, eps

    def forward(self, x: torch.Tensor, label: torch.Tensor, target: Optional[torch.Tensor] = None) -> torch.Tensor:
        return LF.cross_entropy_loss_dist(x, label, self.temp, self.eps)


class CrossEntropyLoss(nn.Module):
    """InfoNCE on similarities: -sum_pos log softmax_j(a . x_j / T) over one tuple's members.
    (The original's version, :func:`aml.layers.functional.cross_entropy_loss`, took a softmax
    over descriptor rows and is meaningless as a training loss.)"""

    def __init__(self, temp: float = 0.1):
        super().__init__()
        self.temp = temp

    def forward(self, x: torch.Tensor, label: torch.Tensor, target: Optional[torch.Tensor] = None) -> torch.Tensor:
        return LF.similarity_cross_entropy_loss(x, label, self.temp)
