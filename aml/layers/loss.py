"""cirtorch's loss modules (``cirtorch.layers.loss``) and the original aml's: thin modules over
the formulas of `aml.layers.functional`, called as cirtorch calls them,
``loss(x, label)`` with ``x`` D x S (one tuple, anchor first, or several tuples of any
lengths) and ``label`` of S values in {-1 (anchor), 1 (positive), 0 (negative)}.

For code written against cirtorch or the original aml::

    from aml.layers.loss import ContrastiveLoss
    loss = ContrastiveLoss(margin=0.7)(x, label)

The original's relational losses are here too, called as it called them, ``loss(student,
teacher)`` with the rows (N x C) of the same images: ``RKdAD()(student, teacher)``,
``HardDarkRank()(student, teacher)``.

aml's training reads its losses from the registry (`aml.losses`), whose modules take a
`aml.losses.TupleBatch` (``TupleBatch.from_columns(x, label)``, ``TupleBatch.pairs(student,
teacher)``); both compute the same numbers, with the formulas of `aml.layers.functional`.
"""

import torch
from torch import nn

from aml.layers import functional as LF


class ContrastiveLoss(nn.Module):
    """cirtorch's contrastive loss: sum of 0.5 y d^2 + 0.5 (1 - y) max(0, margin - d)^2."""

    def __init__(self, margin: float = 0.7, eps: float = 1e-6):
        super().__init__()
        self.margin, self.eps = margin, eps

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return LF.contrastive_loss(x, label, margin=self.margin, eps=self.eps)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(margin={self.margin:.4f})"


class TripletLoss(nn.Module):
    """cirtorch's triplet loss: sum over negatives of max(0, |a-p|^2 - |a-n|^2 + margin)."""

    def __init__(self, margin: float = 0.1):
        super().__init__()
        self.margin = margin

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return LF.triplet_loss(x, label, margin=self.margin)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(margin={self.margin:.4f})"


class ContrastiveDistLoss(nn.Module):
    """The original aml's: negatives pulled to target distances ``dist`` (one per non-anchor
    column) instead of past a margin."""

    def __init__(self, margin: float = 0.7, eps: float = 1e-6):
        super().__init__()
        self.margin, self.eps = margin, eps  # the margin is the original's argument; the targets replace it

    def forward(self, x: torch.Tensor, label: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
        return LF.contrastive_loss_dist(x, label, dist, eps=self.eps)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(margin={self.margin:.4f})"


class MultiSimilarityLoss(nn.Module):
    """The original aml's multi-similarity loss (thresh 0.5, scale_pos 2, scale_neg 40), per tuple."""

    def __init__(self, thresh: float = 0.5, scale_pos: float = 2.0, scale_neg: float = 40.0):
        super().__init__()
        self.thresh, self.scale_pos, self.scale_neg = thresh, scale_pos, scale_neg

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return LF.multi_similarity_loss(x, label, self.thresh, self.scale_pos, self.scale_neg)


class CrossEntropyDistLoss(nn.Module):
    """The original aml's InfoNCE on distances, -sum_pos log softmax_j(-d_j / temp), per tuple."""

    def __init__(self, temp: float = 1.0, eps: float = 1e-6):
        super().__init__()
        self.temp, self.eps = temp, eps

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return LF.cross_entropy_loss_dist(x, label, self.temp, eps=self.eps)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(temp={self.temp:.2f})"


class CrossEntropyLoss(nn.Module):
    """The original aml's ``CrossEntropyLoss`` as it computed it (a softmax over the rows of x,
    the anchor's -1 included: not a retrieval loss, kept so that old code gets old numbers);
    aml's ``cross_entropy`` training loss is InfoNCE on similarities instead."""

    def __init__(self, temp: float = 1.0, eps: float = 1e-6):
        super().__init__()
        self.temp, self.eps = temp, eps

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return LF.cross_entropy_loss(x, label, self.temp, eps=self.eps)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(temp={self.temp:.2f})"


class RKdAD(nn.Module):
    """The original aml's relational KD: 2 x angle loss + 1 x distance loss, smooth-L1, of
    ``(student, teacher)`` rows N x C."""

    def __init__(self, dist_ratio: float = 1.0, angle_ratio: float = 2.0):
        super().__init__()
        self.dist_ratio, self.angle_ratio = dist_ratio, angle_ratio

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return LF.rkd_loss(student, teacher, self.dist_ratio, self.angle_ratio)


class HardDarkRank(nn.Module):
    """The original aml's hard DarkRank (alpha 3, beta 3, 4 neighbours) of ``(student, teacher)``
    rows N x C, N >= 2 (with N - 1 neighbours where N <= 4, as the original)."""

    def __init__(self, alpha: float = 3.0, beta: float = 3.0, permute_len: int = 4):
        super().__init__()
        self.alpha, self.beta, self.permute_len = alpha, beta, permute_len

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return LF.hard_darkrank_loss(student, teacher, self.alpha, self.beta, self.permute_len)
