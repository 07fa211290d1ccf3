"""Training modes: what a tuple holds and who encodes each member.

A tuple is a list of image indices of the training split with labels (-1 query, 1 positive,
0 negative) and, per member, whether it is the *teacher's* descriptor of that image (read
from the feature file) or the image itself, encoded by the student. The query is always
an image through the student.
"""

from dataclasses import dataclass, replace
from enum import Enum
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

from aml.data.formats import TrainingDb
from aml.losses import LOSSES
from aml.training.mining import mine_hard_negatives, random_negatives, teacher_triplets
from aml.utils.errors import ConfigError, lookup


class TrainingTuple(NamedTuple):
    """Member 0 is the query; ``from_teacher[i]`` marks teacher descriptors."""

    members: Tuple[int, ...]
    labels: Tuple[int, ...]
    from_teacher: Tuple[bool, ...]


class Draw(Enum):
    """What an epoch draws to build its tuples."""

    PAIRS = "pairs"  # --query-size query/positive pairs of the training db
    IMAGES = "images"  # --pool-size random images (each paired with its teacher descriptor)
    TRIPLETS = "triplets"  # anchors with a positive and a negative ranked by the teacher


class Negatives(Enum):
    """Where the negatives of a tuple come from."""

    MINED = "mined"  # the hardest of the pool, one per other cluster
    RANDOM = "random"  # random pool images, one per other cluster
    NONE = "none"


@dataclass(frozen=True)
class Mode:
    """How one training mode builds its tuples."""

    name: str
    draw: Draw
    negatives: Negatives
    needs_teacher: bool
    asymmetric: bool  # positives and negatives are teacher descriptors (unless --sym)
    self_positive: bool = False  # the teacher's descriptor of the query is a positive
    relational: bool = False  # a batch of (student, teacher) pairs is the unit of the loss
    allows_sym: bool = True
    validate_as: str = ""  # the mode whose tuples validate this one (the original's val datasets); "" = itself

    @property
    def tuples(self) -> bool:
        """Whether its tuples are anchor, positive(s) and negatives (not image/teacher pairs)."""
        return self.draw is not Draw.IMAGES


# Validation follows the original's val datasets: ts_self, reg, reg_only_pos and rand_tpl_a are
# validated on ts tuples (student query, teacher positive and mined teacher negatives),
# rand_tpl on std tuples. reg_only_pos runs exactly as reg, as in the original (its
# RegressionTSOnlyPos class was never used).
MODES: Dict[str, Mode] = {
    "std": Mode("std", Draw.PAIRS, Negatives.MINED, needs_teacher=False, asymmetric=False, allows_sym=False),
    "ts": Mode("ts", Draw.PAIRS, Negatives.MINED, needs_teacher=True, asymmetric=True),
    "ts_self": Mode(
        "ts_self",
        Draw.PAIRS,
        Negatives.MINED,
        needs_teacher=True,
        asymmetric=True,
        self_positive=True,
        validate_as="ts",
    ),
    "ts_rand": Mode("ts_rand", Draw.PAIRS, Negatives.RANDOM, needs_teacher=True, asymmetric=True),
    "reg": Mode(
        "reg",
        Draw.IMAGES,
        Negatives.NONE,
        needs_teacher=True,
        asymmetric=True,
        self_positive=True,
        allows_sym=False,
        validate_as="ts",
    ),
    "reg_only_pos": Mode(
        "reg_only_pos",
        Draw.IMAGES,
        Negatives.NONE,
        needs_teacher=True,
        asymmetric=True,
        self_positive=True,
        allows_sym=False,
        validate_as="ts",
    ),
    "rand": Mode(
        "rand",
        Draw.IMAGES,
        Negatives.NONE,
        needs_teacher=True,
        asymmetric=True,
        self_positive=True,
        relational=True,
        allows_sym=False,
    ),
    "rand_tpl": Mode(
        "rand_tpl",
        Draw.TRIPLETS,
        Negatives.NONE,
        needs_teacher=True,
        asymmetric=False,
        allows_sym=False,
        validate_as="std",
    ),
    "rand_tpl_a": Mode(
        "rand_tpl_a", Draw.TRIPLETS, Negatives.NONE, needs_teacher=True, asymmetric=True, validate_as="ts"
    ),
}


def validation_mode(mode: Mode) -> Mode:
    """The mode whose tuples validate ``mode`` (see ``Mode.validate_as``)."""
    return MODES[mode.validate_as or mode.name]


def get_mode(name: str) -> Mode:
    """Table entry of a mode, or a ValueError listing the modes."""
    return lookup(MODES, name, "training mode")


def check_loss_mode(loss: str, mode: str) -> None:
    """Raise ValueError with the reason when ``loss`` (a LOSSES name) cannot train in ``mode``."""
    spec = lookup(LOSSES, loss, "loss")
    if not spec.accepts(get_mode(mode)):
        working = sorted(name for name, m in MODES.items() if spec.accepts(m))
        raise ConfigError(
            f"--loss {loss} cannot be used with --mode {mode}: {spec.why}; modes that work: {', '.join(working)}"
        )


@dataclass
class EpochSizes:
    """How many tuples and pool images one epoch draws."""

    query_size: int
    pool_size: int
    neg_num: int


StudentEncoder = Callable[[Sequence[int]], torch.Tensor]  # image indices -> D x n student descriptors


def epoch_tuple_count(mode: Mode, db: TrainingDb, sizes: EpochSizes) -> int:
    """How many tuples `build_epoch_tuples` draws for an epoch of ``sizes`` (known before any
    mining: images for the modes that draw images, anchors for triplets, else query pairs).

    Examples:
        >>> from aml.training.modes import MODES, EpochSizes, epoch_tuple_count
        >>> db = {"cids": list(range(10)), "cluster": [0] * 10, "qidxs": [0, 1, 2], "pidxs": [3, 4, 5]}
        >>> [epoch_tuple_count(MODES[name], db, EpochSizes(4, 8, 5)) for name in ("ts", "rand", "rand_tpl")]
        [3, 8, 3]
    """
    if mode.draw is Draw.IMAGES:
        return min(sizes.pool_size, len(db["cids"]))
    if mode.draw is Draw.TRIPLETS:
        return min(_query_count(db, sizes), len(db["cids"]))
    return _query_count(db, sizes)


def epoch_size_flag(mode: Mode, db: TrainingDb, sizes: EpochSizes) -> Optional[str]:
    """The flag whose larger value would draw more tuples of ``db`` an epoch: ``--pool-size``
    for the modes that draw images, else ``--query-size``; None where the db's images or
    query pairs already cap the epoch.

    Args:
        mode: the training mode.
        db: the split's training db.
        sizes: the epoch's sizes as the flags give them.

    Returns:
        The flag, or None.

    Examples:
        >>> from aml.training.modes import MODES, EpochSizes, epoch_size_flag
        >>> db = {"cids": list(range(10)), "cluster": [0] * 10, "qidxs": [0, 1, 2], "pidxs": [3, 4, 5]}
        >>> [epoch_size_flag(MODES["reg"], db, EpochSizes(2, s, 5)) for s in (8, 10)]
        ['--pool-size', None]
        >>> [epoch_size_flag(MODES["ts"], db, EpochSizes(q, 20, 5)) for q in (2, 3)]
        ['--query-size', None]
    """
    field = "pool_size" if mode.draw is Draw.IMAGES else "query_size"
    unbounded = replace(sizes, **{field: len(db["cids"]) + len(db["qidxs"])})
    grows = epoch_tuple_count(mode, db, unbounded) > epoch_tuple_count(mode, db, sizes)
    return f"--{field.replace('_', '-')}" if grows else None


def triplet_pool_count(db: TrainingDb, sizes: EpochSizes) -> int:
    """The pool a triplet epoch draws each anchor's positive and negative from: up to
    ``pool_size`` of the images that are not its anchors.

    Examples:
        >>> from aml.training.modes import EpochSizes, triplet_pool_count
        >>> db = {"cids": list(range(10)), "cluster": [0] * 10, "qidxs": [0, 1, 2], "pidxs": [3, 4, 5]}
        >>> triplet_pool_count(db, EpochSizes(4, 5, 5)), triplet_pool_count(db, EpochSizes(4, 20, 5))
        (5, 7)
    """
    return max(0, min(sizes.pool_size, len(db["cids"]) - _query_count(db, sizes)))


def _query_count(db: TrainingDb, sizes: EpochSizes) -> int:
    """An epoch's queries (a triplet epoch's anchors too): ``query_size``, at most one per
    query pair of the db, as the original caps its query size in every mode."""
    return min(sizes.query_size, len(db["qidxs"]))


def _tuple(mode: Mode, sym: bool, query: int, positives: Sequence[int], negatives: Sequence[int]) -> TrainingTuple:
    teacher_side = mode.asymmetric and not sym
    members = [query] + ([query] if mode.self_positive else []) + list(positives) + list(negatives)
    labels = [-1] + [1] * (len(members) - 1 - len(negatives)) + [0] * len(negatives)
    from_teacher = [False] + ([True] if mode.self_positive else []) + [teacher_side] * (len(positives) + len(negatives))
    return TrainingTuple(tuple(members), tuple(labels), tuple(from_teacher))


def build_epoch_tuples(
    mode: Mode,
    db: TrainingDb,
    sizes: EpochSizes,
    generator: torch.Generator,
    encode: StudentEncoder,
    teacher: Optional[torch.Tensor] = None,
    sym: bool = False,
    device: str = "cpu",
) -> Tuple[List[TrainingTuple], float]:
    """The tuples of one epoch (and the mean query-negative distance of mined negatives).

    ``encode`` gives student descriptors of image indices (used for mining); ``teacher`` is
    the D x N teacher feature matrix of the split (teacher modes).
    """
    n_images = len(db["cids"])
    clusters = np.asarray(db["cluster"])
    if mode.draw is Draw.IMAGES:
        images = torch.randperm(n_images, generator=generator)[: sizes.pool_size].tolist()
        return [_tuple(mode, sym, i, [], []) for i in images], 0.0
    if mode.draw is Draw.TRIPLETS:
        order = torch.randperm(n_images, generator=generator)
        count = _query_count(db, sizes)
        anchors = order[:count].tolist()
        pool = order[count : count + triplet_pool_count(db, sizes)].tolist()
        assert teacher is not None  # the mode needs_teacher
        pairs = teacher_triplets(teacher[:, anchors], teacher[:, pool], generator, device=device)
        return [_tuple(mode, sym, a, [pool[p]], [pool[n]]) for a, (p, n) in zip(anchors, pairs, strict=True)], 0.0
    qpool, ppool = list(db["qidxs"]), list(db["pidxs"])
    chosen = torch.randperm(len(qpool), generator=generator)[: sizes.query_size].tolist()
    queries = [qpool[i] for i in chosen]
    positives = [ppool[i] for i in chosen]
    if mode.negatives is Negatives.NONE or sizes.neg_num == 0:
        return [_tuple(mode, sym, q, [p], []) for q, p in zip(queries, positives, strict=True)], 0.0
    pool = torch.randperm(n_images, generator=generator)[: sizes.pool_size].tolist()
    if mode.negatives is Negatives.RANDOM:
        picked = random_negatives(clusters[queries].tolist(), clusters[pool].tolist(), sizes.neg_num, generator)
        distance = 0.0
    else:
        query_vecs = encode(queries)
        if mode.asymmetric:
            assert teacher is not None  # the mode needs_teacher
            pool_vecs = teacher[:, pool]
        else:
            pool_vecs = encode(pool)
        picked, distance = mine_hard_negatives(
            query_vecs, pool_vecs, clusters[queries].tolist(), clusters[pool].tolist(), sizes.neg_num, device
        )
    tuples = [
        _tuple(mode, sym, q, [p], [pool[n] for n in negs])
        for q, p, negs in zip(queries, positives, picked, strict=True)
    ]
    return tuples, distance
