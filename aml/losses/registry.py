"""The loss registry: name -> how to build the loss from ``--loss-margin`` and ``--temp``, and which
training modes it works with (`LOSSES`, `build_loss`), and the temperatures that still learn."""

import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Dict, Tuple, Union

from aml.losses.batch import LossKind
from aml.losses.compatibility import (
    BackwardCompatibleLoss,
    CompatibleEmbeddingLoss,
    ContextualSimilarityLoss,
    HeterogeneousCompatibilityLoss,
)
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
from aml.utils.errors import ConfigError, lookup


Loss = Union[TupleLoss, RelationalLoss]  # what the registry builds: one call shape, loss(batch)


@dataclass(frozen=True)
class LossSpec:
    """How to build a loss from (margin, temp) and which training modes it works with.

    The modes it works with are given by a predicate over a mode's attributes; `LOSSES` holds
    one spec per loss name.

    Attributes:
        build: (margin, temp) -> the loss, from ``--loss-margin`` and ``--temp``.
        accepts: mode -> whether the loss works with that training mode (a predicate over the
            mode's attributes: ``tuples``, ``relational``, ``needs_teacher``, ``self_positive``).
        why: why a mode is refused, shown when one is.
        min_batch: the fewest images per mini-batch (``--batch-size``) with which the loss
            measures anything, and why (a relational loss compares the images of a batch).
        uses_negatives: whether a tuple's negatives enter the loss (a regression does not).
        uses_temperature: whether ``--temp`` enters the loss (a softmax over similarities / T),
            whose range `check_temperature` then checks.

    Examples:
        >>> from aml.losses import LOSSES, LossSpec, TripletLoss
        >>> spec = LOSSES["triplet"]
        >>> spec.build(0.3, 0.1), spec.kind.value
        (TripletLoss(), 'tuple')
        >>> spec.why
        'it needs exactly one positive and some negatives per tuple'
        >>> LossSpec(lambda m, t: TripletLoss(margin=m), lambda mode: True, "").build(0.3, 0.1).margin
        0.3
    """

    build: Callable[[float, float], "Loss"]
    accepts: Callable[[Any], bool]
    why: str  # shown when a mode is refused
    min_batch: Tuple[int, str] = (1, "")
    uses_negatives: bool = True
    uses_temperature: bool = False

    @property
    def kind(self) -> LossKind:
        """What one value of the loss stands for (read from its module)."""
        return self.build(0.7, 0.1).kind


def _tuples(mode) -> bool:
    return mode.tuples


def _images(mode) -> bool:
    return mode.needs_teacher and not mode.tuples and not mode.relational


_IMAGES_WHY = "it trains on single images against the teacher's view of the whole split (modes reg, reg_only_pos)"


LOSSES: Dict[str, LossSpec] = {
    "contrastive": LossSpec(
        lambda m, t: ContrastiveLoss(margin=m),
        lambda mode: not mode.relational,
        "it needs tuples (anchor, positives, negatives)",
    ),
    "triplet": LossSpec(
        lambda m, t: TripletLoss(margin=m),
        lambda mode: mode.tuples and not mode.self_positive,
        "it needs exactly one positive and some negatives per tuple",
    ),
    "multi": LossSpec(lambda m, t: MultiSimilarityLoss(), _tuples, "it needs tuples with negatives"),
    "cross_entropy": LossSpec(
        lambda m, t: CrossEntropyLoss(temp=t), _tuples, "it needs tuples with negatives", uses_temperature=True
    ),
    "cross_entropy_dist": LossSpec(
        lambda m, t: CrossEntropyDistLoss(temp=t), _tuples, "it needs tuples with negatives", uses_temperature=True
    ),
    "contrastive_dist": LossSpec(
        lambda m, t: ContrastiveDistLoss(),
        lambda mode: mode.tuples and mode.needs_teacher,
        "its targets are teacher distances, so it needs a teacher tuple mode",
    ),
    "regression": LossSpec(
        lambda m, t: RegressionLoss(),
        lambda mode: mode.self_positive and not mode.relational,
        "it regresses the anchor onto teacher positives",
        uses_negatives=False,
    ),
    "rkd": LossSpec(
        lambda m, t: RKdAD(),
        lambda mode: mode.relational,
        "it compares batches of student and teacher descriptors (mode rand)",
        (3, "its angles take three images; of two, the distances divided by their mean are 1 on both sides"),
        uses_negatives=False,
    ),
    "dark": LossSpec(
        lambda m, t: HardDarkRank(),
        lambda mode: mode.relational,
        "it compares batches of student and teacher descriptors (mode rand)",
        (5, "4 neighbours per image"),
        uses_negatives=False,
    ),
    # losses of later papers (aml.losses.compatibility): single images; --temp is their temperature
    "csd": LossSpec(
        lambda m, t: ContextualSimilarityLoss(temp=t), _images, _IMAGES_WHY, uses_negatives=False, uses_temperature=True
    ),
    "bct": LossSpec(
        lambda m, t: BackwardCompatibleLoss(temp=t), _images, _IMAGES_WHY, uses_negatives=False, uses_temperature=True
    ),
    "hvs": LossSpec(
        lambda m, t: HeterogeneousCompatibilityLoss(temp=t),
        _images,
        _IMAGES_WHY,
        uses_negatives=False,
        uses_temperature=True,
    ),
    "lce": LossSpec(
        lambda m, t: CompatibleEmbeddingLoss(temp=t), _images, _IMAGES_WHY, uses_negatives=False, uses_temperature=True
    ),
}


#: the temperatures (``--temp``) with which the softmax losses still learn, `check_temperature`
TEMPERATURES = (1e-3, 10.0)


def check_temperature(temp: float, softmax: bool = True) -> None:
    """Refuse a temperature that makes the softmax losses degenerate, saying why.

    Descriptors are L2-normalised, so the logits (similarities / temp) span at most 2 / temp.

    Args:
        temp: the temperature (``--temp``).
        softmax: whether the loss reads it (`LossSpec.uses_temperature`); else only a value
            that is no temperature at all is refused (the original accepted any, which names
            the run folder alone).

    Raises:
        ConfigError: below `TEMPERATURES` (the softmax is a hard maximum and the gradients grow
            as 1 / temp, so the run diverges whatever the learning rate), above it (the logits
            are nearly equal, so the loss stays constant and nothing is learned), or not a
            finite positive number.

    Examples:
        >>> from aml.losses import check_temperature
        >>> check_temperature(0.1)
        >>> check_temperature(100.0)
        Traceback (most recent call last):
        ...
        aml.utils.errors.ConfigError: --temp 100: above 10 the logits (similarities / temp) span only 0.02: ...
    """
    low, high = TEMPERATURES
    if not isinstance(temp, (int, float)) or isinstance(temp, bool) or not math.isfinite(temp) or temp <= 0:
        raise ConfigError(f"--temp {temp!r}: a temperature is a finite number > 0 (default 0.1)")
    if not softmax:
        return
    if temp < low:
        raise ConfigError(
            f"--temp {temp:g}: below {low:g} the logits (similarities / temp) span {2 / temp:.3g}: the "
            f"softmax is a hard maximum and the gradients grow as 1/temp, so training diverges whatever "
            f"--lr is; use {low:g} to {high:g} (default 0.1)"
        )
    if temp > high:
        raise ConfigError(
            f"--temp {temp:g}: above {high:g} the logits (similarities / temp) span only {2 / temp:.3g}: "
            f"the softmax is nearly uniform, the loss stays constant and nothing is learned; use {low:g} "
            f"to {high:g} (default 0.1)"
        )


def build_loss(name: str, margin: float = 0.7, temp: float = 0.1) -> "Loss":
    """The criterion ``name`` (see LOSSES) with the CLI's margin and temperature.

    The name is looked up, then the temperature checked (`check_temperature`); each loss takes
    the one of the two it has, if any (``--loss-margin`` for the contrastive and triplet losses,
    ``--temp`` for the softmax ones).

    Args:
        name: the loss's name, a key of `LOSSES` (``--loss``).
        margin: the margin (``--loss-margin``).
        temp: the temperature (``--temp``).

    Returns:
        The loss, a `TupleLoss` or a `RelationalLoss` (its ``kind`` says which).

    Raises:
        ConfigError: for a name `LOSSES` lacks (the message lists the choices), a temperature
            `check_temperature` refuses, or a margin that is not a finite number >= 0.

    Examples:
        >>> from aml.losses import build_loss
        >>> loss = build_loss("triplet", margin=0.3)
        >>> loss, loss.margin
        (TripletLoss(), 0.3)
        >>> build_loss("cross_entropy", temp=0.05).temp
        0.05
    """
    spec = lookup(LOSSES, name, "loss")
    check_temperature(temp, spec.uses_temperature)
    if isinstance(margin, bool) or not isinstance(margin, numbers.Real) or not 0 <= margin < math.inf:
        raise ConfigError(f"--loss-margin {margin!r}: a margin is a finite number >= 0 (default 0.7)")
    return spec.build(margin, temp)
