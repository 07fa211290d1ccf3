"""A batch of training tuples as the losses take it: every tuple's anchor (the student's
descriptor of its query) against its members (positives and negatives, teacher's or
student's descriptors), as pytorch-metric-learning's losses take ``ref_emb``."""

from dataclasses import dataclass
from enum import Enum
from typing import Optional

import torch

from aml.layers import functional as LF
from aml.losses.context import TeacherContext
from aml.utils.errors import ConfigError


class LossKind(Enum):
    """What one value of a loss stands for.

    A loss says its kind as its class attribute ``kind``; the trainer reads it to know how to
    build the batch and what the loss's values are.

    Attributes:
        TUPLE: one value per tuple, its anchor against its members (`TupleLoss`).
        RELATIONAL: one value per batch, the student's rows against the teacher's rows of the
            same images (`RelationalLoss`).

    Examples:
        >>> from aml.losses import LossKind, RKdAD, TripletLoss
        >>> TripletLoss.kind, RKdAD.kind.value
        (<LossKind.TUPLE: 'tuple'>, 'relational')
        >>> LossKind("tuple") is LossKind.TUPLE
        True
    """

    TUPLE = "tuple"  # one value per tuple: its anchor against its members
    RELATIONAL = "relational"  # one value per batch: the student's rows against the teacher's rows


@dataclass(frozen=True)
class TupleBatch:
    """B tuples of up to M members, descriptors of dimension D.

    Attributes:
        anchors: B x D, the student's descriptor of each tuple's query.
        members: B x M x D, the descriptors each anchor is compared with.
        labels: B x M, 1 (positive), 0 (negative) or -1 (no member: a tuple shorter than M).
        target: B x M or None, the teacher's distance from each query to each member.
        queries: B or None, each tuple's query as a row of ``context`` (its image in the split).
        context: the teacher's view of the whole split (`TeacherContext`), with ``queries``,
            for the losses that compare a query with more than its tuple (``needs_context``).

    Raises:
        ValueError: when the shapes do not fit together.

    Examples:
        >>> import torch
        >>> from aml.losses import TupleBatch
        >>> batch = TupleBatch.single(torch.ones(4), torch.eye(4)[:2], torch.tensor([1, 0]))
        >>> len(batch), batch.members.shape
        (1, torch.Size([1, 2, 4]))
        >>> TupleBatch(torch.zeros(2, 4), torch.zeros(2, 3, 4), torch.tensor([[1, 0, 0], [1, 0, -1]])).labels.shape
        torch.Size([2, 3])
    """

    anchors: torch.Tensor
    members: torch.Tensor
    labels: torch.Tensor
    target: Optional[torch.Tensor] = None
    queries: Optional[torch.Tensor] = None
    context: Optional[TeacherContext] = None

    def __post_init__(self):
        b, d = self.anchors.shape if self.anchors.dim() == 2 else (None, None)
        if b is None or self.members.dim() != 3 or self.members.shape[0] != b or self.members.shape[2] != d:
            raise ValueError(
                f"a tuple batch holds anchors B x D and members B x M x D, got "
                f"{tuple(self.anchors.shape)} and {tuple(self.members.shape)}"
            )
        for name in ("labels", "target"):
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != tuple(self.members.shape[:2]):
                raise ValueError(f"{name} must be B x M = {tuple(self.members.shape[:2])}, got {tuple(value.shape)}")
        if (self.queries is None) != (self.context is None):
            raise ValueError("queries and context come together: each tuple's query is a row of the context")
        if self.queries is not None and tuple(self.queries.shape) != (b,):
            raise ValueError(f"queries must be B = {b} row indices of the context, got {tuple(self.queries.shape)}")

    def __len__(self) -> int:
        return self.anchors.shape[0]

    @classmethod
    def single(
        cls, anchor: torch.Tensor, members: torch.Tensor, labels: torch.Tensor, target: Optional[torch.Tensor] = None
    ) -> "TupleBatch":
        """One tuple: an anchor, its members and their labels.

        Args:
            anchor: the anchor, D or 1 x D.
            members: its M x D members.
            labels: their M labels, 1 (positive) or 0 (negative).
            target: the teacher's M distances from the query to each member, if any.

        Returns:
            A batch of one tuple (the members in the anchor's dtype).

        Raises:
            ValueError: when there are not as many labels as members.
        """
        labels = torch.as_tensor(labels).reshape(1, -1)
        if members.shape[0] != labels.shape[1]:
            raise ValueError(f"{members.shape[0]} members but {labels.shape[1]} labels")
        return cls(
            anchor.reshape(1, -1),
            members[None].to(anchor.dtype),
            labels,
            None if target is None else torch.as_tensor(target).reshape(1, -1),
        )

    @classmethod
    def pairs(cls, student: torch.Tensor, teacher: torch.Tensor) -> "TupleBatch":
        """N tuples of one positive each: the student's and the teacher's rows of one image.

        What the relational losses compare (mode ``rand``).

        Args:
            student: N x D student descriptors, the anchors.
            teacher: N x D teacher descriptors of the same images, each anchor's positive.

        Returns:
            N tuples of one member labelled 1.
        """
        if student.ndim != 2 or student.shape != teacher.shape:
            raise ConfigError(
                f"pairs takes N x D rows of the same images from both networks: got {tuple(student.shape)} and "
                f"{tuple(teacher.shape)} (aml's descriptor matrices are D x N: pass them transposed, .T)"
            )
        labels = torch.ones((len(student), 1), dtype=torch.long, device=student.device)
        return cls(student, teacher[:, None, :].to(student.dtype), labels)

    @classmethod
    def from_columns(cls, x: torch.Tensor, label: torch.Tensor, target: Optional[torch.Tensor] = None) -> "TupleBatch":
        """A batch from cirtorch's D x N tuple matrix and labels.

        Args:
            x: D x N descriptors of several tuples of any lengths, each starting at its anchor.
            label: N labels: -1 (anchor), 1 (positive), 0 (negative).
            target: one distance per non-anchor column, in column order, if any.

        Returns:
            The tuples as a batch, the shorter ones padded with label -1.
        """
        if target is None:
            anchors, members, labels = LF.columns_to_tuples(x, label)
            return cls(anchors, members, labels)
        anchors, members, labels, targets = LF.columns_to_tuples(x, label, target)
        return cls(anchors, members, labels, targets)
