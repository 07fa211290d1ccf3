"""The teacher's view of a whole training split, for the losses that look beyond a tuple:
CSD's context (every teacher descriptor of the split) and the class prototypes that stand in
for a teacher's classifier in BCT, HVS and LCE (aml's teachers are GeM networks without one)."""

from dataclasses import dataclass
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F


def class_prototypes(descriptors: torch.Tensor, classes: torch.Tensor, count: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Each class's prototype (mean unit descriptor, L2-normalised) and boundary (the smallest
    cosine between a member of the class and its prototype).

    LCE's class centres and boundaries, computed from the old model's features of the training
    set; here from the teacher's.

    Args:
        descriptors: N x D descriptors (each row is L2-normalised first).
        classes: N class indices in 0 .. count - 1.
        count: the number of classes C (every one has a member).

    Returns:
        C x D prototypes and C boundaries.

    Examples:
        >>> import torch
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, -2.0]], dtype=torch.float64)
        >>> prototypes, boundaries = class_prototypes(x, torch.tensor([0, 0, 1]), 2)
        >>> prototypes.mul(2 ** 0.5).round(decimals=4).tolist(), boundaries.mul(2 ** 0.5).round(decimals=4).tolist()
        ([[1.0, 1.0], [0.0, -1.4142]], [1.0, 1.4142])
    """
    unit = F.normalize(descriptors, dim=1)
    sums = unit.new_zeros((count, unit.shape[1])).index_add_(0, classes, unit)
    prototypes = F.normalize(sums, dim=1)
    cosines = (unit * prototypes[classes]).sum(dim=1)
    boundaries = cosines.new_full((count,), float("inf")).scatter_reduce(0, classes, cosines, "amin")
    return prototypes, boundaries


@dataclass(frozen=True)
class TeacherContext:
    """The teacher's descriptors of every image of a split, with their classes (clusters).

    Attributes:
        descriptors: N x D, the teacher's descriptor of every image of the split.
        classes: N, each image's class: its cluster (landmark) id, renumbered 0 .. C-1.
        prototypes: C x D, each class's mean unit teacher descriptor, L2-normalised.
        boundaries: C, the smallest cosine between a class's teacher descriptors and its prototype.

    Examples:
        >>> import torch
        >>> from aml.losses import TeacherContext
        >>> context = TeacherContext.of(torch.eye(3, dtype=torch.float64), [7, 7, 2])
        >>> context.classes.tolist(), context.prototypes.shape, context.boundaries.round(decimals=4).tolist()
        ([1, 1, 0], torch.Size([2, 3]), [1.0, 0.7071])
    """

    descriptors: torch.Tensor
    classes: torch.Tensor
    prototypes: torch.Tensor
    boundaries: torch.Tensor

    @classmethod
    def of(cls, descriptors: torch.Tensor, clusters: Sequence[int]) -> "TeacherContext":
        """The context of a split from its N x D teacher descriptors and N cluster ids.

        Args:
            descriptors: N x D teacher descriptors (rows), on the device the losses run on.
            clusters: the cluster id of every image (any integers; ``db["cluster"]``).

        Returns:
            The context, its prototypes computed once (`class_prototypes`), detached: no
            gradient reaches the teacher.

        Raises:
            ValueError: when there are not as many cluster ids as descriptors.
        """
        descriptors = descriptors.detach()
        ids_of = torch.as_tensor(list(clusters), dtype=torch.long, device=descriptors.device)
        if ids_of.shape != descriptors.shape[:1]:
            raise ValueError(f"{descriptors.shape[0]} teacher descriptors but {ids_of.numel()} cluster ids")
        ids, classes = torch.unique(ids_of, return_inverse=True)
        prototypes, boundaries = class_prototypes(descriptors, classes, len(ids))
        return cls(descriptors, classes, prototypes, boundaries)

    def __len__(self) -> int:
        return self.descriptors.shape[0]
