"""Relational knowledge-distillation losses: one value per batch, the student's rows (the
anchors, N x C) against the teacher's rows of the same images (each tuple's first member,
N x C: `TupleBatch.pairs`), the same call shape as the tuple losses. The teacher side
carries no gradient. Pairwise distances are `aml.layers.functional.pdist`."""

from typing import Optional

import torch
from torch import nn

from aml.layers import functional as LF
from aml.losses.batch import LossKind, TupleBatch


class RelationalLoss(nn.Module):
    """Base class of the relational losses: one value for a batch of student and teacher rows.

    ``forward(batch)`` compares ``batch.anchors`` (the student's rows) with
    ``batch.members[:, 0]`` (the teacher's rows of the same images, `TupleBatch.pairs`); one
    value. A subclass defines `formula`; ``kind`` is `LossKind.RELATIONAL`.

    Examples:
        >>> import torch
        >>> from aml.losses import LossKind, RelationalLoss, RKdAD, TupleBatch
        >>> loss = RKdAD()
        >>> isinstance(loss, RelationalLoss), loss.kind is LossKind.RELATIONAL
        (True, True)
        >>> rows = torch.eye(3)
        >>> loss(TupleBatch.pairs(rows, rows)).shape  # one value for the batch
        torch.Size([])
    """

    kind = LossKind.RELATIONAL
    needs_target = False
    needs_context = False
    batch_mean = False  # one value per batch already
    #: the same loss called on the original's ``(student, teacher)`` rows
    cirtorch_call: Optional[str] = None

    def forward(self, batch: TupleBatch, *cirtorch_arguments) -> torch.Tensor:
        """The loss of a batch: its student rows against the teacher's rows of the same images.

        Args:
            batch: N tuples of one member each, ``TupleBatch.pairs(student, teacher)``: the
                anchors are the student's rows, each first member the teacher's row.
            *cirtorch_arguments (Any): none; they are there to refuse the original's call
                ``loss(student, teacher)``, which the call ``cirtorch_call`` names takes.

        Returns:
            The loss, a scalar (`formula`).

        Raises:
            TypeError: when given anything but a `TupleBatch` (the original's call
                ``loss(student, teacher)``).
        """
        if cirtorch_arguments or not isinstance(batch, TupleBatch):
            raise TypeError(
                f"aml.losses.{type(self).__name__} takes a TupleBatch (from rows: "
                f"TupleBatch.pairs(student, teacher)); for the original's call loss(student, teacher) "
                f"use {self.cirtorch_call}"
            )
        return self.formula(batch.anchors, batch.members[:, 0])

    def formula(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """The loss of the student's rows against the teacher's, what a subclass defines.

        Args:
            student: N x C student descriptors.
            teacher: N x C teacher descriptors of the same images, in the same order.

        Returns:
            The loss, a scalar.

        Raises:
            NotImplementedError: in this base class.
        """
        raise NotImplementedError


class RKdAD(RelationalLoss):
    """Relational KD (Park et al.): 2 x angle loss + 1 x distance loss, smooth-L1 (mean).

    The distance loss compares the pairwise distances of the student's rows (divided by their
    mean) with the teacher's, the angle loss the cosines of the angles that triplets of rows
    form; the teacher's side carries no gradient.

    Args:
        dist_ratio: the weight of the distance loss.
        angle_ratio: the weight of the angle loss.

    Examples:
        >>> import torch
        >>> from aml.losses import RKdAD, TupleBatch
        >>> student = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
        >>> teacher = student[[0, 2, 1]]  # rows 1 and 2 swapped: other relations
        >>> RKdAD()(TupleBatch.pairs(student, student)).item()  # the same relations
        0.0
        >>> round(RKdAD()(TupleBatch.pairs(student, teacher)).item(), 4)
        0.4838
    """

    cirtorch_call = "aml.layers.loss.RKdAD"

    def __init__(self, dist_ratio: float = 1.0, angle_ratio: float = 2.0):
        super().__init__()
        self.dist_ratio, self.angle_ratio = dist_ratio, angle_ratio

    def formula(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """The relational KD loss of the student's rows against the teacher's.

        Args:
            student: N x C student descriptors.
            teacher: N x C teacher descriptors of the same images, in the same order.

        Returns:
            ``angle_ratio`` x the angle loss + ``dist_ratio`` x the distance loss, a scalar.
        """
        return LF.rkd_loss(student, teacher, self.dist_ratio, self.angle_ratio)


class HardDarkRank(RelationalLoss):
    """DarkRank (Chen et al.), hard version: the teacher's ranking's likelihood under the student.

    Minus the mean log-likelihood, under the student's scores (-alpha d^beta, d the
    distances between rows), of the teacher's ranking of each row's ``permute_len`` nearest
    neighbours (the N - 1 others where N <= ``permute_len``); N >= 2 rows.

    Args:
        alpha: the scale of the scores.
        beta: the power of the distances in the scores.
        permute_len: how many of each row's nearest neighbours the teacher ranks.

    Examples:
        >>> import torch
        >>> from aml.losses import HardDarkRank, TupleBatch
        >>> student = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
        >>> teacher = student[[0, 2, 1]]  # rows 1 and 2 swapped: other relations
        >>> round(HardDarkRank()(TupleBatch.pairs(student, student)).item(), 4)  # the same ranking
        0.075
        >>> round(HardDarkRank()(TupleBatch.pairs(student, teacher)).item(), 4)
        5.2259
    """

    cirtorch_call = "aml.layers.loss.HardDarkRank"

    def __init__(self, alpha: float = 3.0, beta: float = 3.0, permute_len: int = 4):
        super().__init__()
        self.alpha, self.beta, self.permute_len = alpha, beta, permute_len

    def formula(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """Hard DarkRank of the student's rows against the teacher's.

        Args:
            student: N x C student descriptors, N >= 2.
            teacher: N x C teacher descriptors of the same images, in the same order.

        Returns:
            Minus the mean log-likelihood of the teacher's rankings, a scalar.

        Raises:
            ValueError: with fewer than 2 rows.
        """
        return LF.hard_darkrank_loss(student, teacher, self.alpha, self.beta, self.permute_len)
