"""Relational knowledge-distillation losses: one value per batch, the student's rows (the
anchors, N x C) against the teacher's rows of the same images (each tuple's first member,
N x C: `TupleBatch.pairs`), the same call shape as the tuple losses. The teacher side
carries no gradient. Pairwise distances are `aml.layers.functional.pdist`."""

import torch
from torch import nn

from aml.layers import functional as LF
from aml.losses.batch import LossKind, TupleBatch


class RelationalLoss(nn.Module):
    """Base class: ``forward(batch)`` compares ``batch.anchors`` (the student's rows) with
    ``batch.members[:, 0]`` (the teacher's rows of the same images); one value."""

    kind = LossKind.RELATIONAL
    needs_target = False
    needs_context = False
    batch_mean = False  # one value per batch already

    def forward(self, batch: TupleBatch, *cirtorch_arguments) -> torch.Tensor:
        if cirtorch_arguments or not isinstance(batch, TupleBatch):
            raise TypeError(
                f"aml.losses.{type(self).__name__} takes a TupleBatch (from rows: "
                f"TupleBatch.pairs(student, teacher)); for the original's call loss(student, teacher) "
                f"use aml.layers.loss.{type(self).__name__}"
            )
        return self.formula(batch.anchors, batch.members[:, 0])

    def formula(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class RKdAD(RelationalLoss):
    """Relational KD (Park et al.): 2 x angle loss + 1 x distance loss, smooth-L1 (mean)."""

    def __init__(self, dist_ratio: float = 1.0, angle_ratio: float = 2.0):
        super().__init__()
        self.dist_ratio, self.angle_ratio = dist_ratio, angle_ratio

    def formula(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return LF.rkd_loss(student, teacher, self.dist_ratio, self.angle_ratio)


class HardDarkRank(RelationalLoss):
    """DarkRank (Chen et al.), hard version: the log-likelihood under the student's scores
    (-alpha d^beta) of the teacher's ranking of each row's ``permute_len`` nearest neighbours."""

    def __init__(self, alpha: float = 3.0, beta: float = 3.0, permute_len: int = 4):
        super().__init__()
        self.alpha, self.beta, self.permute_len = alpha, beta, permute_len

    def formula(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return LF.hard_darkrank_loss(student, teacher, self.alpha, self.beta, self.permute_len)
