"""Training criteria behind one registry: name -> how to build it and what it needs.

``kind`` 'tuple' losses take (D x S descriptors, labels[, target distances]); 'relational'
losses take (student N x C, teacher N x C).
"""

from dataclasses import dataclass
from typing import Callable, Dict, FrozenSet

from torch import nn

from aml.losses.relational import HardDarkRank, RKdAD
from aml.losses.tuples import (ContrastiveDistLoss, ContrastiveLoss, CrossEntropyDistLoss, CrossEntropyLoss,
                               MultiSimilarityLoss, RegressionLoss, TripletLoss)

TUPLE_MODES = frozenset({"std", "ts", "ts_self", "ts_rand", "rand_tpl", "rand_tpl_a"})
TEACHER_TUPLE_MODES = frozenset({"ts", "ts_self", "ts_rand", "rand_tpl", "rand_tpl_a"})
REGRESSION_MODES = frozenset({"reg", "reg_only_pos"})


@dataclass(frozen=True)
class LossSpec:
    """How to build a loss from (margin, temp), and which training modes it works with."""

    build: Callable[[float, float], nn.Module]
    kind: str
    modes: FrozenSet[str]
    why: str  # shown when a mode is refused


LOSSES: Dict[str, LossSpec] = {
    "contrastive": LossSpec(lambda m, t: ContrastiveLoss(margin=m), "tuple", TUPLE_MODES | REGRESSION_MODES,
                            "it needs tuples (anchor, positives, negatives)"),
    "triplet": LossSpec(lambda m, t: TripletLoss(margin=m), "tuple", TUPLE_MODES - {"ts_self"},
                        "it needs exactly one positive and some negatives per tuple"),
    "multi": LossSpec(lambda m, t: MultiSimilarityLoss(), "tuple", TUPLE_MODES,
                      "it needs tuples with negatives"),
    "cross_entropy": LossSpec(lambda m, t: CrossEntropyLoss(temp=t), "tuple", TUPLE_MODES,
                              "it needs tuples with negatives"),
    "cross_entropy_dist": LossSpec(lambda m, t: CrossEntropyDistLoss(temp=t), "tuple", TUPLE_MODES,
                                   "it needs tuples with negatives"),
    "contrastive_dist": LossSpec(lambda m, t: ContrastiveDistLoss(), "tuple", TEACHER_TUPLE_MODES,
                                 "its targets are teacher distances, so it needs a teacher tuple mode"),
    "regression": LossSpec(lambda m, t: RegressionLoss(), "tuple", REGRESSION_MODES | {"ts_self"},
                           "it regresses the anchor onto teacher positives"),
    "rkd": LossSpec(lambda m, t: RKdAD(), "relational", frozenset({"rand"}),
                    "it compares batches of student and teacher descriptors (mode rand)"),
    "dark": LossSpec(lambda m, t: HardDarkRank(), "relational", frozenset({"rand"}),
                     "it compares batches of student and teacher descriptors (mode rand)"),
}


def check_loss_mode(loss: str, mode: str) -> None:
    """Raise ValueError with the reason when ``loss`` cannot train in ``mode``."""
    spec = LOSSES[loss]
    if mode not in spec.modes:
        raise ValueError(f"--loss {loss} cannot be used with --mode {mode}: {spec.why}; "
                         f"modes that work: {', '.join(sorted(spec.modes))}")


def build_loss(name: str, margin: float = 0.7, temp: float = 0.1) -> nn.Module:
    """The criterion ``name`` (see LOSSES) with the CLI's margin and temperature."""
    return LOSSES[name].build(margin, temp)


__all__ = ["LOSSES", "LossSpec", "build_loss", "check_loss_mode", "ContrastiveLoss", "ContrastiveDistLoss",
           "CrossEntropyDistLoss", "CrossEntropyLoss", "HardDarkRank", "MultiSimilarityLoss", "RKdAD",
           "RegressionLoss", "TripletLoss"]
