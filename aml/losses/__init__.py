"""Training criteria behind one registry: name -> how to build it, what it needs, which
training modes it works with.

Every loss has one call shape, ``loss(batch)`` with a `TupleBatch` (anchors B x D,
members B x M x D, labels B x M): a `LossKind.TUPLE` loss gives one value per tuple
(its anchor against its members, labelled 1/0), a `LossKind.RELATIONAL` loss one value
for the batch (the student's rows against the teacher's rows of the same images). Each module
says its ``kind``, whether it ``needs_target`` (the teacher's distances) and whether it
``needs_context`` (the teacher's view of the whole split: `TeacherContext`, for the losses of
later papers in `aml.losses.compatibility`), and whether a training step takes the mean of its
values (``batch_mean``, those papers' reduction) or their sum (the original's). The trainer
reads only this registry and those four attributes.
"""

from aml.losses.batch import LossKind, TupleBatch
from aml.losses.compatibility import (
    BackwardCompatibleLoss,
    CompatibleEmbeddingLoss,
    ContextualSimilarityLoss,
    HeterogeneousCompatibilityLoss,
)
from aml.losses.context import TeacherContext
from aml.losses.registry import LOSSES, TEMPERATURES, LossSpec, build_loss, check_temperature
from aml.losses.registry import Loss as Loss  # the type of what the registry builds
from aml.losses.relational import HardDarkRank, RelationalLoss, RKdAD
from aml.losses.tuples import (
    ContrastiveDistLoss,
    ContrastiveLoss,
    CrossEntropyDistLoss,
    CrossEntropyLoss,
    MultiSimilarityLoss,
    RegressionLoss,
    TripletLoss,
    TupleLoss,
)

__all__ = [
    "LOSSES",
    "LossKind",
    "LossSpec",
    "TeacherContext",
    "TupleBatch",
    "build_loss",
    "check_temperature",
    "TEMPERATURES",
    "BackwardCompatibleLoss",
    "CompatibleEmbeddingLoss",
    "ContextualSimilarityLoss",
    "ContrastiveLoss",
    "ContrastiveDistLoss",
    "CrossEntropyDistLoss",
    "CrossEntropyLoss",
    "HardDarkRank",
    "HeterogeneousCompatibilityLoss",
    "MultiSimilarityLoss",
    "RKdAD",
    "RegressionLoss",
    "RelationalLoss",
    "TripletLoss",
    "TupleLoss",
]
