"""Losses of the papers that followed AML, which compare the student's descriptor of a query
with the teacher's view of the whole training split (`TeacherContext`), not only with the
members of its tuple: CSD (Wu et al., CVPR 2022) with the teacher's neighbours of the image,
and the classifier-based compatibility losses that SSP (Wu et al., 2024) trains AML against,
BCT (Shen et al., CVPR 2020), HVS (Duggal et al., CVPR 2021) and LCE (Meng et al., ICCV 2021),
with the teacher's class prototypes in place of the teacher's classifier.

Every loss here is a `TupleLoss` (one value per tuple, from its anchor alone: a padded batch
is each tuple alone) with ``needs_context``; the formulas are the pure functions below, on
L2-normalised descriptors (cosines), the teacher side without gradient.
"""

import math

import torch
import torch.nn.functional as F

from aml.losses.batch import TupleBatch
from aml.losses.tuples import TupleLoss


def prototype_logits(
    anchors: torch.Tensor,
    prototypes: torch.Tensor,
    classes: torch.Tensor,
    scale: float,
    margin: float = 0.0,
    eps: float = 1e-6,
) -> torch.Tensor:
    """ArcFace logits of each anchor against C class prototypes: ``scale * cos(theta_c)``, and
    ``scale * cos(theta_y + margin)`` for the anchor's own class y when ``theta_y + margin``
    does not pass pi (as SSP's ArcFace); margin 0 gives the normalised softmax's logits.

    Args:
        anchors: B x D descriptors (L2-normalised here).
        prototypes: C x D unit class prototypes.
        classes: B class indices, each anchor's class.
        scale: s, the inverse temperature.
        margin: m, the additive angular margin (radians).
        eps: cosines are clamped to [-1 + eps, 1 - eps] before the arccosine.

    Returns:
        B x C logits.

    Examples:
        >>> import torch
        >>> a, p = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.6, 0.8], [0.0, 1.0]])
        >>> prototype_logits(a, p, torch.tensor([0]), 10.0).tolist()
        [[6.0, 0.0]]
        >>> round(prototype_logits(a, p, torch.tensor([0]), 1.0, margin=0.2)[0, 0].item(), 4)  # cos(0.9273 + 0.2)
        0.4291
    """
    cosines = F.normalize(anchors, dim=1) @ prototypes.t()
    if margin:
        own = cosines.gather(1, classes[:, None])
        theta = torch.acos(own.clamp(-1 + eps, 1 - eps))
        shifted = torch.where(theta + margin <= math.pi, torch.cos(theta + margin), own)
        cosines = cosines.scatter(1, classes[:, None], shifted)
    return scale * cosines


def prototype_cross_entropy_losses(
    anchors: torch.Tensor, prototypes: torch.Tensor, classes: torch.Tensor, scale: float, margin: float = 0.0
) -> torch.Tensor:
    """Per anchor: -log softmax_c(logits)[y], the logits of `prototype_logits`.

    Args:
        anchors: B x D descriptors.
        prototypes: C x D unit class prototypes.
        classes: B class indices y.
        scale: s, the inverse temperature.
        margin: m, ArcFace's additive angular margin (0: none).

    Returns:
        B losses.

    Examples:
        >>> import torch
        >>> a, p = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.6, 0.8], [0.0, 1.0]])
        >>> round(prototype_cross_entropy_losses(a, p, torch.tensor([0]), 10.0).item(), 6)  # log(1 + e^-6)
        0.002476
    """
    logits = prototype_logits(anchors, prototypes, classes, scale, margin)
    return F.cross_entropy(logits, classes, reduction="none")


def boundary_losses(
    anchors: torch.Tensor, prototypes: torch.Tensor, boundaries: torch.Tensor, classes: torch.Tensor
) -> torch.Tensor:
    """LCE's boundary loss per anchor: ``max(0, b_y - cos(anchor, prototype_y))``, zero once
    the anchor is at least as close to its class's prototype as the class's farthest teacher
    descriptor.

    Args:
        anchors: B x D descriptors (L2-normalised here).
        prototypes: C x D unit class prototypes.
        boundaries: C cosines b (`aml.losses.context.class_prototypes`).
        classes: B class indices y.

    Returns:
        B losses.

    Examples:
        >>> import torch
        >>> p, b = torch.tensor([[1.0, 0.0]], dtype=torch.float64), torch.tensor([0.9], dtype=torch.float64)
        >>> anchors = torch.tensor([[0.6, 0.8], [1.0, 0.1]], dtype=torch.float64)
        >>> boundary_losses(anchors, p, b, torch.tensor([0, 0])).round(decimals=4).tolist()
        [0.3, 0.0]
    """
    own = (F.normalize(anchors, dim=1) * prototypes[classes]).sum(dim=1)
    return torch.clamp(boundaries[classes] - own, min=0)


def contextual_similarity_losses(
    anchors: torch.Tensor, teacher_queries: torch.Tensor, context: torch.Tensor, k: int, temp: float
) -> torch.Tensor:
    """CSD per query: KL(p_t || p_s) over the k context descriptors nearest the teacher's
    descriptor g of the query (itself included when it is in the context), with
    ``p_t = softmax_j(g . c_j / temp)`` and ``p_s = softmax_j(q . c_j / temp)``, q the student's
    descriptor (all L2-normalised; cosines).

    Args:
        anchors: B x D student descriptors q.
        teacher_queries: B x D teacher descriptors g of the same images.
        context: N x D teacher descriptors c (the split's).
        k: the neighbours per query (all N when fewer).
        temp: the temperature of both distributions.

    Returns:
        B losses, zero where the student's cosines to the neighbours equal the teacher's.

    Examples:
        >>> import torch
        >>> context = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
        >>> g = torch.tensor([[1.0, 0.0]])
        >>> abs(contextual_similarity_losses(g, g, context, 2, 0.5).item()) < 1e-6
        True
        >>> round(contextual_similarity_losses(torch.tensor([[0.0, 1.0]]), g, context, 2, 1.0).item(), 6)
        0.462117
    """
    context = F.normalize(context, dim=1)
    with torch.no_grad():
        teacher = F.normalize(teacher_queries, dim=1) @ context.t()
        nearest, index = teacher.topk(min(k, context.shape[0]), dim=1)
        # in log space: at a low temperature far neighbours' probabilities underflow to 0, and 0 * log(0) is NaN
        log_p_teacher = F.log_softmax(nearest / temp, dim=1)
    student = (F.normalize(anchors, dim=1) @ context.t()).gather(1, index)
    log_p_student = F.log_softmax(student / temp, dim=1)
    return torch.sum(log_p_teacher.exp() * (log_p_teacher - log_p_student), dim=1)


class _ContextLoss(TupleLoss):
    """A tuple loss that reads each query's class or teacher descriptor from the context."""

    needs_context = True
    batch_mean = True  # the papers' code averages the per-image losses over the batch

    def classes(self, batch: TupleBatch) -> torch.Tensor:
        assert batch.context is not None  # TupleLoss.forward checked it
        return batch.context.classes[batch.queries]


class BackwardCompatibleLoss(_ContextLoss):
    """BCT's influence loss (Shen et al., CVPR 2020), the teacher's class prototypes as classifier.

    The cross-entropy of the student's descriptor under the old model's classifier,
    ``-log softmax_c(cos(q, w_c) / temp)[y]``.

    Simplification: aml's teachers have no classifier, so the classifier weights w_c are the
    teacher's class prototypes (the mean teacher descriptor of each cluster, normalised: what
    BCT itself uses for classes its old classifier lacks), on cosines with ``--temp``; BCT's
    own new-classifier loss is left out (the student has no classifier either).

    Args:
        temp: the temperature of the softmax over cosines (``--temp``).

    Examples:
        >>> import torch
        >>> from aml.losses import BackwardCompatibleLoss, TeacherContext, TupleBatch
        >>> teacher = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])  # a split of 4 images
        >>> context = TeacherContext.of(teacher, [7, 7, 3, 3])  # in 2 clusters
        >>> queries = torch.tensor([0, 2])  # two tuples' query images, rows of the context
        >>> student = torch.tensor([[0.8, 0.6], [1.0, 0.0]])  # the first near its class, the second in the other
        >>> labels = torch.ones(2, 1, dtype=torch.long)  # each tuple's member: its query's teacher descriptor
        >>> batch = TupleBatch(student, teacher[queries, None], labels, queries=queries, context=context)
        >>> [round(value, 4) for value in BackwardCompatibleLoss(temp=0.1)(batch).tolist()]
        [0.0018, 12.6491]
    """

    def __init__(self, temp: float = 0.1):
        super().__init__()
        self.temp = temp

    def formula(self, batch):
        """Per tuple: -log softmax_c(cos(q, w_c) / temp)[y], q its anchor, w_c the class prototypes.

        Args:
            batch (TupleBatch): the tuples, with ``queries`` and ``context`` (`TupleLoss.forward` checked them).
        """
        c = batch.context
        return prototype_cross_entropy_losses(
            batch.anchors, c.prototypes.to(batch.anchors.dtype), self.classes(batch), 1 / self.temp
        )


class HeterogeneousCompatibilityLoss(_ContextLoss):
    """HVS's compatibility loss (Duggal et al., CVPR 2021) as SSP trains it, ArcFace on prototypes.

    ArcFace under the gallery (teacher) model's frozen classifier,
    ``-log softmax(s cos(theta_c + m [c = y]))[y]`` with m = 0.15 and s = 1 / ``--temp``.

    Simplification: the teacher's classifier is its class prototypes (`BackwardCompatibleLoss`),
    and SSP's second term, ArcFace under the student's own trained classifier, is left out; SSP
    uses s = sqrt(D) (22.6 for 512-d: ``--temp 0.044``).

    Args:
        temp: 1 / s, the inverse of ArcFace's scale (``--temp``).
        margin: m, ArcFace's additive angular margin (radians).

    Examples:
        >>> import torch
        >>> from aml.losses import HeterogeneousCompatibilityLoss, TeacherContext, TupleBatch
        >>> teacher = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])  # a split of 4 images
        >>> context = TeacherContext.of(teacher, [7, 7, 3, 3])  # in 2 clusters
        >>> queries = torch.tensor([0, 2])  # two tuples' query images, rows of the context
        >>> student = torch.tensor([[0.8, 0.6], [1.0, 0.0]])  # the first near its class, the second in the other
        >>> labels = torch.ones(2, 1, dtype=torch.long)  # each tuple's member: its query's teacher descriptor
        >>> batch = TupleBatch(student, teacher[queries, None], labels, queries=queries, context=context)
        >>> [round(value, 4) for value in HeterogeneousCompatibilityLoss(temp=0.1)(batch).tolist()]
        [0.0032, 14.0313]
    """

    def __init__(self, temp: float = 0.1, margin: float = 0.15):
        super().__init__()
        self.temp, self.margin = temp, margin

    def formula(self, batch):
        """Per tuple: ArcFace's cross-entropy of its anchor under the class prototypes (`prototype_logits`).

        Args:
            batch (TupleBatch): the tuples, with ``queries`` and ``context`` (`TupleLoss.forward` checked them).
        """
        c = batch.context
        return prototype_cross_entropy_losses(
            batch.anchors, c.prototypes.to(batch.anchors.dtype), self.classes(batch), 1 / self.temp, self.margin
        )


class CompatibleEmbeddingLoss(_ContextLoss):
    """LCE (Meng et al., ICCV 2021): ArcFace on the teacher's class centres plus a boundary loss.

    ArcFace under the classifier aligned with the old (teacher's) class centres plus the
    boundary loss, ``ce + max(0, b_y - cos(q, c_y))``, m = 0.1 and s = 1 / ``--temp`` (LCE's
    code: m = 0.1, s = 16).

    The class centres c and boundaries b are LCE's: the normalised mean teacher descriptor of
    each cluster and the smallest cosine of its members to it. Simplification: LCE trains a
    new classifier pulled onto those centres (align loss, weight 100); here it is the centres
    themselves (the align loss is zero), and there is no transformation module.

    Args:
        temp: 1 / s, the inverse of ArcFace's scale (``--temp``).
        margin: m, ArcFace's additive angular margin (radians).
        boundary_weight: the weight of the boundary loss.

    Examples:
        >>> import torch
        >>> from aml.losses import CompatibleEmbeddingLoss, TeacherContext, TupleBatch
        >>> teacher = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])  # a split of 4 images
        >>> context = TeacherContext.of(teacher, [7, 7, 3, 3])  # in 2 clusters
        >>> queries = torch.tensor([0, 2])  # two tuples' query images, rows of the context
        >>> student = torch.tensor([[0.8, 0.6], [1.0, 0.0]])  # the first near its class, the second in the other
        >>> labels = torch.ones(2, 1, dtype=torch.long)  # each tuple's member: its query's teacher descriptor
        >>> batch = TupleBatch(student, teacher[queries, None], labels, queries=queries, context=context)
        >>> [round(value, 4) for value in CompatibleEmbeddingLoss(temp=0.1)(batch).tolist()]
        [0.0026, 14.8453]
    """

    def __init__(self, temp: float = 0.1, margin: float = 0.1, boundary_weight: float = 1.0):
        super().__init__()
        self.temp, self.margin, self.boundary_weight = temp, margin, boundary_weight

    def formula(self, batch):
        """Per tuple: ArcFace's cross-entropy of its anchor under the class centres plus the boundary loss.

        Args:
            batch (TupleBatch): the tuples, with ``queries`` and ``context`` (`TupleLoss.forward` checked them).
        """
        c, classes = batch.context, self.classes(batch)
        prototypes = c.prototypes.to(batch.anchors.dtype)
        ce = prototype_cross_entropy_losses(batch.anchors, prototypes, classes, 1 / self.temp, self.margin)
        return ce + self.boundary_weight * boundary_losses(
            batch.anchors, prototypes, c.boundaries.to(batch.anchors.dtype), classes
        )


class ContextualSimilarityLoss(_ContextLoss):
    """CSD (Wu et al., CVPR 2022): the student keeps the teacher's contextual similarity of each image.

    The KL divergence between the teacher's and the student's softmax over the image's k
    nearest teacher descriptors of the training split (`contextual_similarity_losses`), one
    temperature ``--temp`` for both sides, k = 256.

    As the paper, the context is the teacher's descriptors of the whole split, computed once;
    D3still's reimplementation takes each batch's instead, with two temperatures.

    Args:
        temp: the temperature of both softmaxes (``--temp``).
        k: the nearest teacher descriptors each image is compared with (all when fewer).

    Examples:
        >>> import torch
        >>> from aml.losses import ContextualSimilarityLoss, TeacherContext, TupleBatch
        >>> teacher = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])  # a split of 4 images
        >>> context = TeacherContext.of(teacher, [7, 7, 3, 3])  # in 2 clusters
        >>> queries = torch.tensor([0, 2])  # two tuples' query images, rows of the context
        >>> student = torch.tensor([[0.8, 0.6], [1.0, 0.0]])  # the first near its class, the second in the other
        >>> labels = torch.ones(2, 1, dtype=torch.long)  # each tuple's member: its query's teacher descriptor
        >>> batch = TupleBatch(student, teacher[queries, None], labels, queries=queries, context=context)
        >>> [round(value, 4) for value in ContextualSimilarityLoss(temp=0.1)(batch).tolist()]
        [1.5389, 10.2619]
    """

    def __init__(self, temp: float = 0.1, k: int = 256):
        super().__init__()
        self.temp, self.k = temp, k

    def formula(self, batch):
        """Per tuple: CSD's KL divergence over its query's k nearest teacher descriptors.

        Args:
            batch (TupleBatch): the tuples, with ``queries`` and ``context`` (`TupleLoss.forward` checked them).
        """
        context = batch.context.descriptors.to(batch.anchors.dtype)
        return contextual_similarity_losses(batch.anchors, context[batch.queries], context, self.k, self.temp)
