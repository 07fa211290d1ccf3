"""Tuple losses: one call per batch of tuples (`aml.losses.batch.TupleBatch`), each
anchor against its members (teacher or student descriptors) labelled 1 (positive) or 0
(negative). Each loss sums over a tuple's members (the original's reduction) and returns one
value per tuple; none prints or writes. The formulas are in `aml.layers.functional`;
these modules hold the hyper-parameters.
"""

from typing import Optional

import torch
from torch import nn

from aml.layers import functional as LF
from aml.losses.batch import LossKind, TupleBatch


class TupleLoss(nn.Module):
    """Base class of the tuple losses: one loss per tuple of a `TupleBatch`.

    ``forward(batch)`` gives B values, one per tuple (its anchor against its members); the
    training step sums them (``batch_mean`` False, the original's reduction) or averages them
    (``batch_mean`` True). A subclass defines `formula` and says, as class attributes, whether
    it ``needs_target`` (the teacher's query-member distances, ``TupleBatch.target``) and
    whether it ``needs_context`` (the teacher's view of the split, ``TupleBatch.context`` and
    ``queries``); ``kind`` is `LossKind.TUPLE`.

    Examples:
        >>> import torch
        >>> from aml.losses import ContrastiveLoss, LossKind, TupleBatch, TupleLoss
        >>> loss = ContrastiveLoss()
        >>> isinstance(loss, TupleLoss), loss.kind is LossKind.TUPLE, loss.needs_target, loss.batch_mean
        (True, True, False, False)
        >>> batch = TupleBatch(torch.eye(3)[:2], torch.eye(3)[None, 1:].repeat(2, 1, 1), torch.tensor([[1, 0], [0, 1]]))
        >>> loss(batch).shape  # one value per tuple
        torch.Size([2])
    """

    kind = LossKind.TUPLE
    needs_target = False  # the teacher's query-member distances (TupleBatch.target)
    needs_context = False  # the teacher's view of the split (TupleBatch.context and queries)
    batch_mean = False  # a training step sums the tuples' values (the original's); True: averages them
    #: the same loss called on cirtorch's D x N columns and labels (None: the loss has no such call)
    cirtorch_call: Optional[str] = None

    def forward(self, batch: TupleBatch, *cirtorch_arguments) -> torch.Tensor:
        """The loss of each tuple of a batch, once the batch is checked to hold what it needs.

        Args:
            batch: the tuples, with ``target`` when the loss ``needs_target`` and ``queries``
                and ``context`` when it ``needs_context``.
            *cirtorch_arguments (Any): none; they are there to refuse cirtorch's call
                ``loss(x, label)`` (x D x N), which the call ``cirtorch_call`` names takes.

        Returns:
            B losses, one per tuple (`formula`).

        Raises:
            TypeError: when given anything but a `TupleBatch` (cirtorch's call ``loss(x, label)``).
            ValueError: when the batch lacks the teacher's distances (``needs_target``) or the
                teacher's view of the split (``needs_context``).
        """
        if cirtorch_arguments or not isinstance(batch, TupleBatch):
            instead = (
                f"for cirtorch's call on D x N columns x and their labels use {self.cirtorch_call}"
                if self.cirtorch_call
                else "it has no call on cirtorch's D x N columns"
            )
            raise TypeError(
                f"aml.losses.{type(self).__name__} takes a TupleBatch (TupleBatch.from_columns(x, label)); {instead}"
            )
        if self.needs_target and batch.target is None:
            raise ValueError(f"{type(self).__name__} needs the teacher's distances (TupleBatch.target)")
        if self.needs_context and batch.context is None:
            raise ValueError(f"{type(self).__name__} needs the teacher's view of the split (TupleBatch.context)")
        return self.formula(batch)

    def formula(self, batch: TupleBatch) -> torch.Tensor:
        """The loss of each tuple of a checked batch, what a subclass defines.

        Args:
            batch: the tuples (`forward` checked them).

        Returns:
            B losses, one per tuple.

        Raises:
            NotImplementedError: in this base class.
        """
        raise NotImplementedError


class ContrastiveLoss(TupleLoss):
    """The contrastive loss: 0.5 d^2 for positives, 0.5 max(0, margin - d)^2 for negatives, summed.

    d is the Euclidean distance between a tuple's anchor and a member, eps added to every
    coordinate of their difference (as cirtorch); the sum runs over the tuple's members.

    Args:
        margin: the distance past which a negative costs nothing.
        eps: added to every coordinate of anchor - member before the norm.

    Examples:
        >>> import torch
        >>> from aml.losses import ContrastiveLoss, TupleBatch
        >>> anchor = torch.tensor([1.0, 0.0])
        >>> members = torch.tensor([[0.6, 0.8], [0.8, 0.6]])  # a positive (d = 0.894), a negative (d = 0.632)
        >>> batch = TupleBatch.single(anchor, members, torch.tensor([1, 0]))
        >>> round(ContrastiveLoss(margin=0.7)(batch).item(), 4)  # 0.5 * 0.8 + 0.5 * (0.7 - 0.632)^2
        0.4023
    """

    cirtorch_call = "aml.layers.loss.ContrastiveLoss"

    def __init__(self, margin: float = 0.7, eps: float = 1e-6):
        super().__init__()
        self.margin, self.eps = margin, eps

    def formula(self, batch):
        """Per tuple: the sum over its members of 0.5 y d^2 + 0.5 (1 - y) max(0, margin - d)^2.

        Args:
            batch (TupleBatch): the tuples, anchors B x D against members B x M x D labelled 1, 0 or -1 (padding).
        """
        return LF.contrastive_losses(batch.anchors, batch.members, batch.labels, self.margin, self.eps)


class RegressionLoss(TupleLoss):
    """0.5 ||anchor - positive||^2 summed over positives (regression to the teacher).

    Negatives are ignored; eps is added to every coordinate of anchor - positive, as in the
    contrastive loss, which computes the same on (-1, 1) pairs.

    Args:
        eps: added to every coordinate of anchor - positive before the norm.

    Examples:
        >>> import torch
        >>> from aml.losses import RegressionLoss, TupleBatch
        >>> anchor = torch.tensor([1.0, 0.0])
        >>> members = torch.tensor([[0.6, 0.8], [0.8, 0.6]])  # a positive (d = 0.894), a negative (d = 0.632)
        >>> batch = TupleBatch.single(anchor, members, torch.tensor([1, 0]))
        >>> round(RegressionLoss()(batch).item(), 4)  # 0.5 * 0.894^2, the negative ignored
        0.4
    """

    cirtorch_call = "aml.layers.functional.regression_loss"

    def __init__(self, eps: float = 1e-6):
        super().__init__()
        self.eps = eps

    def formula(self, batch):
        """Per tuple: the sum over its positives of 0.5 ||anchor - positive + eps||^2.

        Args:
            batch (TupleBatch): the tuples, anchors B x D against members B x M x D labelled 1, 0 or -1 (padding).
        """
        return LF.regression_losses(batch.anchors, batch.members, batch.labels, self.eps)


class ContrastiveDistLoss(TupleLoss):
    """Contrastive loss whose negatives are pulled to a target distance instead of a margin.

    The target t is the teacher's distance between the same images: per member
    0.5 y d^2 + 0.5 (1-y)(t - d)^2, summed over the tuple's members. The batch's ``target``
    holds the teacher's distances (``needs_target``).

    Args:
        eps: added to every coordinate of anchor - member before the norm.

    Examples:
        >>> import torch
        >>> from aml.losses import ContrastiveDistLoss, TupleBatch
        >>> anchor = torch.tensor([1.0, 0.0])
        >>> members = torch.tensor([[0.6, 0.8], [0.8, 0.6]])  # a positive (d = 0.894), a negative (d = 0.632)
        >>> batch = TupleBatch.single(anchor, members, torch.tensor([1, 0]), target=torch.tensor([0.9, 1.0]))
        >>> round(ContrastiveDistLoss()(batch).item(), 4)  # 0.5 * 0.8 + 0.5 * (1.0 - 0.632)^2
        0.4675
    """

    needs_target = True

    cirtorch_call = "aml.layers.loss.ContrastiveDistLoss"

    def __init__(self, eps: float = 1e-6):
        super().__init__()
        self.eps = eps

    def formula(self, batch):
        """Per tuple: the sum over its members of 0.5 y d^2 + 0.5 (1 - y) (t - d)^2.

        The teacher's distances t are ``batch.target`` (`TupleLoss.forward` checked it is there).

        Args:
            batch (TupleBatch): the tuples, anchors B x D against members B x M x D labelled 1, 0 or -1 (padding).
        """
        return LF.contrastive_dist_losses(batch.anchors, batch.members, batch.labels, batch.target, self.eps)


class TripletLoss(TupleLoss):
    """Sum over negatives of max(0, |a-p|^2 - |a-n|^2 + margin); one positive per tuple.

    a is the anchor, p the tuple's positive and n each negative, squared Euclidean distances
    (no eps).

    Args:
        margin: how much farther than the positive (in squared distance) a negative must be.

    Examples:
        >>> import torch
        >>> from aml.losses import TripletLoss, TupleBatch
        >>> anchor = torch.tensor([1.0, 0.0])
        >>> members = torch.tensor([[0.6, 0.8], [0.8, 0.6]])  # a positive (d = 0.894), a negative (d = 0.632)
        >>> batch = TupleBatch.single(anchor, members, torch.tensor([1, 0]))
        >>> round(TripletLoss(margin=0.1)(batch).item(), 4)  # 0.8 - 0.4 + 0.1
        0.5
    """

    cirtorch_call = "aml.layers.loss.TripletLoss"

    def __init__(self, margin: float = 0.1):
        super().__init__()
        self.margin = margin

    def formula(self, batch):
        """Per tuple: the sum over its negatives of max(0, |a-p|^2 - |a-n|^2 + margin).

        Each tuple has exactly one positive (checked: a ValueError, or on CUDA a device-side assertion).

        Args:
            batch (TupleBatch): the tuples, anchors B x D against members B x M x D labelled 1, 0 or -1 (padding).
        """
        return LF.triplet_losses(batch.anchors, batch.members, batch.labels, self.margin)


class MultiSimilarityLoss(TupleLoss):
    """Multi-similarity (Wang et al.) with l = 0.5, a = 2, b = 40, per tuple.

    On the anchor-member dot products s: (1/a) log(1 + sum_pos exp(-a (s - l))) +
    (1/b) log(1 + sum_neg exp(b (s - l))), a term without members being 0.

    Args:
        thresh: l, the similarity threshold.
        scale_pos: a, the scale of the positives' term.
        scale_neg: b, the scale of the negatives' term.

    Examples:
        >>> import torch
        >>> from aml.losses import MultiSimilarityLoss, TupleBatch
        >>> anchor = torch.tensor([1.0, 0.0])
        >>> members = torch.tensor([[0.6, 0.8], [0.8, 0.6]])  # a positive (d = 0.894), a negative (d = 0.632)
        >>> batch = TupleBatch.single(anchor, members, torch.tensor([1, 0]))
        >>> round(MultiSimilarityLoss()(batch).item(), 4)  # dot products 0.6 (positive), 0.8 (negative)
        0.5991
    """

    cirtorch_call = "aml.layers.loss.MultiSimilarityLoss"

    def __init__(self, thresh: float = 0.5, scale_pos: float = 2.0, scale_neg: float = 40.0):
        super().__init__()
        self.thresh, self.scale_pos, self.scale_neg = thresh, scale_pos, scale_neg

    def formula(self, batch):
        """Per tuple: the multi-similarity loss of its anchor-member dot products.

        Args:
            batch (TupleBatch): the tuples, anchors B x D against members B x M x D labelled 1, 0 or -1 (padding).
        """
        return LF.multi_similarity_losses(
            batch.anchors, batch.members, batch.labels, self.thresh, self.scale_pos, self.scale_neg
        )


class CrossEntropyDistLoss(TupleLoss):
    """InfoNCE on distances: -sum_pos log softmax_j(-d_j / T) over one tuple's members.

    d_j is the Euclidean distance from the anchor to member j (eps added to every coordinate),
    T the temperature (``--temp``).

    Args:
        temp: T, the temperature.
        eps: added to every coordinate of anchor - member before the norm.

    Examples:
        >>> import torch
        >>> from aml.losses import CrossEntropyDistLoss, TupleBatch
        >>> anchor = torch.tensor([1.0, 0.0])
        >>> members = torch.tensor([[0.6, 0.8], [0.8, 0.6]])  # a positive (d = 0.894), a negative (d = 0.632)
        >>> batch = TupleBatch.single(anchor, members, torch.tensor([1, 0]))
        >>> round(CrossEntropyDistLoss(temp=0.1)(batch).item(), 4)  # the positive is the farther member
        2.69
    """

    cirtorch_call = "aml.layers.loss.CrossEntropyDistLoss"

    def __init__(self, temp: float = 0.1, eps: float = 1e-6):
        super().__init__()
        self.temp, self.eps = temp, eps

    def formula(self, batch):
        """Per tuple: -sum_pos log softmax_j(-d_j / T) over its members.

        Args:
            batch (TupleBatch): the tuples, anchors B x D against members B x M x D labelled 1, 0 or -1 (padding).
        """
        return LF.cross_entropy_dist_losses(batch.anchors, batch.members, batch.labels, self.temp, self.eps)


class CrossEntropyLoss(TupleLoss):
    """InfoNCE on similarities: -sum_pos log softmax_j(a . x_j / T) over one tuple's members.

    a is the anchor, x_j member j, T the temperature (``--temp``). (The original's version,
    `aml.layers.functional.cross_entropy_loss`, took a softmax over descriptor rows and is
    meaningless as a training loss.)

    Args:
        temp: T, the temperature.

    Examples:
        >>> import torch
        >>> from aml.losses import CrossEntropyLoss, TupleBatch
        >>> anchor = torch.tensor([1.0, 0.0])
        >>> members = torch.tensor([[0.6, 0.8], [0.8, 0.6]])  # a positive (d = 0.894), a negative (d = 0.632)
        >>> batch = TupleBatch.single(anchor, members, torch.tensor([1, 0]))
        >>> round(CrossEntropyLoss(temp=0.1)(batch).item(), 4)  # log(1 + e^2): the negative is more similar
        2.1269
    """

    cirtorch_call = "aml.layers.functional.similarity_cross_entropy_loss"

    def __init__(self, temp: float = 0.1):
        super().__init__()
        self.temp = temp

    def formula(self, batch):
        """Per tuple: -sum_pos log softmax_j(a . x_j / T) over its members.

        Args:
            batch (TupleBatch): the tuples, anchors B x D against members B x M x D labelled 1, 0 or -1 (padding).
        """
        return LF.similarity_cross_entropy_losses(batch.anchors, batch.members, batch.labels, self.temp)
