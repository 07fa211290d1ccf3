"""Tuple losses: one call per batch of tuples (`aml.losses.batch.TupleBatch`), each
anchor against its members (teacher or student descriptors) labelled 1 (positive) or 0
(negative). Each loss sums over a tuple's members (the original's reduction) and returns one
value per tuple; none prints or writes. The formulas are in `aml.layers.functional`;
these modules hold the hyper-parameters.
"""

import torch
from torch import nn

from aml.layers import functional as LF
from aml.losses.batch import LossKind, TupleBatch


class TupleLoss(nn.Module):
    """Base class: ``forward(batch)`` gives one loss per tuple of a `TupleBatch` (B
    values; the training step sums them)."""

    kind = LossKind.TUPLE
    needs_target = False  # the teacher's query-member distances (TupleBatch.target)
    needs_context = False  # the teacher's view of the split (TupleBatch.context and queries)
    batch_mean = False  # a training step sums the tuples' values (the original's); True: averages them

    def forward(self, batch: TupleBatch, *cirtorch_arguments) -> torch.Tensor:
        if cirtorch_arguments or not isinstance(batch, TupleBatch):
            raise TypeError(
                f"aml.losses.{type(self).__name__} takes a TupleBatch; for cirtorch's call "
                f"loss(x, label) with x D x N use aml.layers.loss.{type(self).__name__}"
            )
        if self.needs_target and batch.target is None:
            raise ValueError(f"{type(self).__name__} needs the teacher's distances (TupleBatch.target)")
        if self.needs_context and batch.context is None:
            raise ValueError(f"{type(self).__name__} needs the teacher's view of the split (TupleBatch.context)")
        return self.formula(batch)

    def formula(self, batch: TupleBatch) -> torch.Tensor:
        raise NotImplementedError


class ContrastiveLoss(TupleLoss):
    """0.5 d^2 for positives, 0.5 max(0, margin - d)^2 for negatives, summed."""

    def __init__(self, margin: float = 0.7, eps: float = 1e-6):
        super().__init__()
        self.margin, self.eps = margin, eps

    def formula(self, batch):
        return LF.contrastive_losses(batch.anchors, batch.members, batch.labels, self.margin, self.eps)


class RegressionLoss(TupleLoss):
    """0.5 ||anchor - positive||^2 summed over positives (regression to the teacher)."""

    def __init__(self, eps: float = 1e-6):
        super().__init__()
        self.eps = eps

    def formula(self, batch):
        return LF.regression_losses(batch.anchors, batch.members, batch.labels, self.eps)


class ContrastiveDistLoss(TupleLoss):
    """Contrastive loss whose negatives are pulled to a target distance (the teacher's
    distance between the same images) instead of a margin: 0.5 y d^2 + 0.5 (1-y)(t - d)^2.
    The batch's ``target`` holds the teacher's distances."""

    needs_target = True

    def __init__(self, eps: float = 1e-6):
        super().__init__()
        self.eps = eps

    def formula(self, batch):
        return LF.contrastive_dist_losses(batch.anchors, batch.members, batch.labels, batch.target, self.eps)


class TripletLoss(TupleLoss):
    """Sum over negatives of max(0, |a-p|^2 - |a-n|^2 + margin); one positive per tuple."""

    def __init__(self, margin: float = 0.1):
        super().__init__()
        self.margin = margin

    def formula(self, batch):
        return LF.triplet_losses(batch.anchors, batch.members, batch.labels, self.margin)


class MultiSimilarityLoss(TupleLoss):
    """Multi-similarity (Wang et al.) with l = 0.5, a = 2, b = 40, per tuple."""

    def __init__(self, thresh: float = 0.5, scale_pos: float = 2.0, scale_neg: float = 40.0):
        super().__init__()
        self.thresh, self.scale_pos, self.scale_neg = thresh, scale_pos, scale_neg

    def formula(self, batch):
        return LF.multi_similarity_losses(
            batch.anchors, batch.members, batch.labels, self.thresh, self.scale_pos, self.scale_neg
        )


class CrossEntropyDistLoss(TupleLoss):
    """InfoNCE on distances: -sum_pos log softmax_j(-d_j / T) over one tuple's members."""

    def __init__(self, temp: float = 0.1, eps: float = 1e-6):
        super().__init__()
        self.temp, self.eps = temp, eps

    def formula(self, batch):
        return LF.cross_entropy_dist_losses(batch.anchors, batch.members, batch.labels, self.temp, self.eps)


class CrossEntropyLoss(TupleLoss):
    """InfoNCE on similarities: -sum_pos log softmax_j(a . x_j / T) over one tuple's members.
    (The original's version, `aml.layers.functional.cross_entropy_loss`, took a softmax
    over descriptor rows and is meaningless as a training loss.)"""

    def __init__(self, temp: float = 0.1):
        super().__init__()
        self.temp = temp

    def formula(self, batch):
        return LF.similarity_cross_entropy_losses(batch.anchors, batch.members, batch.labels, self.temp)
