"""Tuple losses: one call per tuple, the student's anchor row against the tuple's reference
rows (teacher or student descriptors) labelled 1 (positive) or 0 (negative), as
pytorch-metric-learning's losses take ``ref_emb``. Every loss sums over the references (the
original's reduction) and never prints or writes. The formulas are in
:mod:`aml.layers.functional`; these modules hold the hyper-parameters.
"""

from typing import Optional

import torch
from torch import nn

from aml.layers import functional as LF


def tuple_matrix(student: torch.Tensor, reference: torch.Tensor, labels: torch.Tensor):
    """cirtorch's D x S tuple matrix and labels (-1 for the anchor) from an anchor row (1 x D),
    reference rows (M x D) and their M labels."""
    if student.dim() != 2 or student.shape[0] != 1:
        raise ValueError(f"a tuple loss takes one anchor row (1 x D), got {tuple(student.shape)}")
    if reference.shape[0] != labels.reshape(-1).numel():
        raise ValueError(f"{reference.shape[0]} reference rows but {labels.numel()} labels")
    x = torch.cat([student, reference.to(student.dtype)]).t()
    label = torch.cat([labels.new_full((1,), -1), labels.reshape(-1)]).to(student.dtype)
    return x, label


class TupleLoss(nn.Module):
    """Base class: ``forward(student 1 x D, reference M x D, labels M, target M or None)``."""

    def forward(self, student: torch.Tensor, reference: torch.Tensor, labels: Optional[torch.Tensor] = None,
                target: Optional[torch.Tensor] = None) -> torch.Tensor:
        if labels is None:
            raise ValueError(f"{type(self).__name__} needs the labels of the reference rows")
        x, label = tuple_matrix(student, reference, labels)
        return self.formula(x, label, target)

    def formula(self, x: torch.Tensor, label: torch.Tensor, target: Optional[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError


class ContrastiveLoss(TupleLoss):
    """0.5 d^2 for positives, 0.5 max(0, margin - d)^2 for negatives, summed."""

    def __init__(self, margin: float = 0.7, eps: float = 1e-6):
        super().__init__()
        self.margin, self.eps = margin, eps

    def formula(self, x, label, target):
        return LF.contrastive_loss(x, label, self.margin, self.eps)


class RegressionLoss(TupleLoss):
    """0.5 ||anchor - positive||^2 summed over positives (regression to the teacher)."""

    def __init__(self, eps: float = 1e-6):
        super().__init__()
        self.eps = eps

    def formula(self, x, label, target):
        return LF.regression_loss(x, label, self.eps)


class ContrastiveDistLoss(TupleLoss):
    """Contrastive loss whose negatives are pulled to a target distance (the teacher's
    distance between the same images) instead of a margin: 0.5 y d^2 + 0.5 (1-y)(t - d)^2.
    ``target`` holds one distance per reference row."""

    def __init__(self, eps: float = 1e-6):
        super().__init__()
        self.eps = eps

    def formula(self, x, label, target):
        if target is None:
            raise ValueError("contrastive_dist needs the teacher's distances (target)")
        return LF.contrastive_loss_dist(x, label, target.reshape(-1), self.eps)


class TripletLoss(TupleLoss):
    """Sum over negatives of max(0, |a-p|^2 - |a-n|^2 + margin); one positive per tuple."""

    def __init__(self, margin: float = 0.1):
        super().__init__()
        self.margin = margin

    def formula(self, x, label, target):
        return LF.triplet_loss(x, label, self.margin)


class MultiSimilarityLoss(TupleLoss):
    """Multi-similarity (Wang et al.) with l = 0.5, a = 2, b = 40, per tuple."""

    def __init__(self, thresh: float = 0.5, scale_pos: float = 2.0, scale_neg: float = 40.0):
        super().__init__()
        self.thresh, self.scale_pos, self.scale_neg = thresh, scale_pos, scale_neg

    def formula(self, x, label, target):
        return LF.multi_similarity_loss(x, label, self.thresh, self.scale_pos, self.scale_neg)


class CrossEntropyDistLoss(TupleLoss):
    """InfoNCE on distances: -sum_pos log softmax_j(-d_j / T) over one tuple's members."""

    def __init__(self, temp: float = 0.1, eps: float = 1e-6):
        super().__init__()
        self.temp, self.eps = temp, eps

    def formula(self, x, label, target):
        return LF.cross_entropy_loss_dist(x, label, self.temp, self.eps)


class CrossEntropyLoss(TupleLoss):
    """InfoNCE on similarities: -sum_pos log softmax_j(a . x_j / T) over one tuple's members.
    (The original's version, :func:`aml.layers.functional.cross_entropy_loss`, took a softmax
    over descriptor rows and is meaningless as a training loss.)"""

    def __init__(self, temp: float = 0.1):
        super().__init__()
        self.temp = temp

    def formula(self, x, label, target):
        return LF.similarity_cross_entropy_loss(x, label, self.temp)
