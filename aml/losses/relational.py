"""Relational knowledge-distillation losses: one value per batch, the student's rows (the
anchors, N x C) against the teacher's rows of the same images (each tuple's first member,
N x C: `TupleBatch.pairs`), the same call shape as the tuple losses. The teacher side
carries no gradient. Pairwise distances are `aml.layers.functional.pdist`."""

import torch
import torch.nn.functional as F
from torch import nn

from aml.layers import functional as LF
from aml.losses.batch import LossKind, TupleBatch


def _angles(e: torch.Tensor) -> torch.Tensor:
    diff = F.normalize(e[None, :, :] - e[:, None, :], p=2, dim=2)  # [i, j] = unit(ej - ei)
    return torch.bmm(diff, diff.transpose(1, 2)).reshape(-1)


def _normalised_distances(e: torch.Tensor) -> torch.Tensor:
    d = LF.pdist(e)
    return d / d[d > 0].mean()


class RelationalLoss(nn.Module):
    """Base class: ``forward(batch)`` compares ``batch.anchors`` (the student's rows) with
    ``batch.members[:, 0]`` (the teacher's rows of the same images); one value."""

    kind = LossKind.RELATIONAL
    needs_target = False
    needs_context = False

    def forward(self, batch: TupleBatch, *cirtorch_arguments) -> torch.Tensor:
        if cirtorch_arguments or not isinstance(batch, TupleBatch):
            raise TypeError(f"{type(self).__name__} takes a TupleBatch; from rows: TupleBatch.pairs(student, teacher)")
        return self.formula(batch.anchors, batch.members[:, 0])

    def formula(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class RKdAD(RelationalLoss):
    """Relational KD (Park et al.): 2 x angle loss + 1 x distance loss, smooth-L1 (mean)."""

    def __init__(self, dist_ratio: float = 1.0, angle_ratio: float = 2.0):
        super().__init__()
        self.dist_ratio, self.angle_ratio = dist_ratio, angle_ratio

    def formula(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_d, teacher_a = _normalised_distances(teacher), _angles(teacher)
        return (self.dist_ratio * F.smooth_l1_loss(_normalised_distances(student), teacher_d)
                + self.angle_ratio * F.smooth_l1_loss(_angles(student), teacher_a))


class HardDarkRank(RelationalLoss):
    """DarkRank (Chen et al.), hard version: the log-likelihood under the student's scores
    (-alpha d^beta) of the teacher's ranking of each row's ``permute_len`` nearest neighbours."""

    def __init__(self, alpha: float = 3.0, beta: float = 3.0, permute_len: int = 4):
        super().__init__()
        self.alpha, self.beta, self.permute_len = alpha, beta, permute_len

    def formula(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if len(student) <= self.permute_len:
            raise ValueError(f"DarkRank needs batches of more than {self.permute_len} images")
        with torch.no_grad():
            teacher_scores = -self.alpha * LF.pdist(teacher).pow(self.beta)
            order = teacher_scores.sort(dim=1, descending=True)[1][:, 1:self.permute_len + 1]
        ordered = torch.gather(-self.alpha * LF.pdist(student).pow(self.beta), 1, order)
        tails = torch.stack([torch.logsumexp(ordered[:, k:], dim=1) for k in range(ordered.shape[1])], dim=1)
        return -(ordered - tails).sum(dim=1).mean()
