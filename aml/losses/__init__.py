"""Training criteria behind one registry: name -> how to build it, what it needs, which
training modes it works with.

Every loss has one call shape, ``loss(student, reference, labels=None, target=None)``: the
student's rows against reference rows (pytorch-metric-learning's ``ref_emb``). A
:attr:`LossKind.TUPLE` loss is called once per tuple (one anchor row against the tuple's
members, labelled 1/0); a :attr:`LossKind.RELATIONAL` loss once per batch (the student's rows
against the teacher's rows of the same images). The trainer reads only this registry.
"""

from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, Dict

from torch import nn

from aml.losses.relational import HardDarkRank, RKdAD
from aml.losses.tuples import (ContrastiveDistLoss, ContrastiveLoss, CrossEntropyDistLoss, CrossEntropyLoss,
                               MultiSimilarityLoss, RegressionLoss, TripletLoss)


class LossKind(Enum):
    """The unit one call of a loss sees."""

    TUPLE = "tuple"  # one anchor row against its tuple's reference rows
    RELATIONAL = "relational"  # the batch's student rows against their teacher rows


@dataclass(frozen=True)
class LossSpec:
    """How to build a loss from (margin, temp), what one call sees, what it needs, and which
    training modes it works with (a predicate over a mode's attributes)."""

    build: Callable[[float, float], nn.Module]
    kind: LossKind
    accepts: Callable[[Any], bool]
    why: str  # shown when a mode is refused
    needs_target: bool = False  # the teacher's anchor-member distances


def _tuples(mode) -> bool:
    return mode.tuples


LOSSES: Dict[str, LossSpec] = {
    "contrastive": LossSpec(lambda m, t: ContrastiveLoss(margin=m), LossKind.TUPLE, lambda mode: not mode.relational,
                            "it needs tuples (anchor, positives, negatives)"),
    "triplet": LossSpec(lambda m, t: TripletLoss(margin=m), LossKind.TUPLE,
                        lambda mode: mode.tuples and not mode.self_positive,
                        "it needs exactly one positive and some negatives per tuple"),
    "multi": LossSpec(lambda m, t: MultiSimilarityLoss(), LossKind.TUPLE, _tuples, "it needs tuples with negatives"),
    "cross_entropy": LossSpec(lambda m, t: CrossEntropyLoss(temp=t), LossKind.TUPLE, _tuples,
                              "it needs tuples with negatives"),
    "cross_entropy_dist": LossSpec(lambda m, t: CrossEntropyDistLoss(temp=t), LossKind.TUPLE, _tuples,
                                   "it needs tuples with negatives"),
    "contrastive_dist": LossSpec(lambda m, t: ContrastiveDistLoss(), LossKind.TUPLE,
                                 lambda mode: mode.tuples and mode.needs_teacher,
                                 "its targets are teacher distances, so it needs a teacher tuple mode",
                                 needs_target=True),
    "regression": LossSpec(lambda m, t: RegressionLoss(), LossKind.TUPLE,
                           lambda mode: mode.self_positive and not mode.relational,
                           "it regresses the anchor onto teacher positives"),
    "rkd": LossSpec(lambda m, t: RKdAD(), LossKind.RELATIONAL, lambda mode: mode.relational,
                    "it compares batches of student and teacher descriptors (mode rand)"),
    "dark": LossSpec(lambda m, t: HardDarkRank(), LossKind.RELATIONAL, lambda mode: mode.relational,
                     "it compares batches of student and teacher descriptors (mode rand)"),
}


def build_loss(name: str, margin: float = 0.7, temp: float = 0.1) -> nn.Module:
    """The criterion ``name`` (see LOSSES) with the CLI's margin and temperature."""
    return LOSSES[name].build(margin, temp)


__all__ = ["LOSSES", "LossKind", "LossSpec", "build_loss", "ContrastiveLoss", "ContrastiveDistLoss",
           "CrossEntropyDistLoss", "CrossEntropyLoss", "HardDarkRank", "MultiSimilarityLoss", "RKdAD",
           "RegressionLoss", "TripletLoss"]
