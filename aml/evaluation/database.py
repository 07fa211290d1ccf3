"""What a test's queries are searched in, behind one interface: the test set's own database
descriptors in memory, followed (for the +1M protocol) by distractors read block by block
from a descriptor store. A plain test is the case without distractors, so one code path
serves both: the places of the test set's images in the ranking of everything
(`aml.evaluation.ranking.positions_with_distractors`, which the metrics read) and each
query's first neighbours (`aml.evaluation.ranking.nearest_with_distractors`, which αQE,
SuperGlobal and the ranking report read)."""

import dataclasses
import functools
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence, Tuple

import numpy as np

from aml.evaluation.ranking import Transform, nearest_with_distractors, positions_with_distractors
from aml.evaluation.reranking import database_augmentation
from aml.evaluation.whitening import whitened, whitened_rows, whitening_on
from aml.utils.errors import ConfigError

Blocks = Callable[[], Iterator[Tuple[int, np.ndarray]]]  # a fresh pass over (first index, n_k x D rows) blocks


@dataclass(frozen=True)
class Distractors:
    """Images added to a test set's database, read block by block (a descriptor store's shards).

    Attributes:
        blocks: starts a pass over the (first index, n_k x D rows) blocks, in order.
        count: the images.
        skipped: the images that could not be read (their rows score -inf).
        transform: what every block goes through first (the whitening), or None.
        store: where the blocks are kept (said in the results), or None.
    """

    blocks: Blocks
    count: int
    skipped: Sequence[int] = ()
    transform: Optional[Transform] = None
    store: Optional[str] = None


@dataclass(frozen=True)
class TestDatabase:
    """A test's database: the test set's D x N descriptors, then its distractors if any.

    Attributes:
        vecs: the test set's database descriptors, D x N (L2-normalised).
        excluded: its images that could not be read: they rank last for every query.
        distractors: the distractors after them (None: a plain test).
        device: where the scores are computed.

    Examples:
        >>> import numpy as np
        >>> from aml.evaluation.database import TestDatabase
        >>> database = TestDatabase(np.eye(3, dtype=np.float32))
        >>> query = np.array([[0.0], [0.6], [0.8]], dtype=np.float32)
        >>> database.positions(query)[:, 0]  # image 0 third, 1 second, 2 first
        array([2, 1, 0])
        >>> database.nearest(query, 2)[0][:, 0]
        array([2, 1])
    """

    __test__ = False  # not a pytest test class, despite its name
    vecs: np.ndarray
    excluded: Sequence[int] = ()
    distractors: Optional[Distractors] = None
    device: str = "cpu"

    def _blocks(self) -> Tuple[Iterator[Tuple[int, np.ndarray]], Sequence[int], Optional[Transform]]:
        if self.distractors is None:
            return iter(()), (), None
        return self.distractors.blocks(), self.distractors.skipped, self.distractors.transform

    @property
    def searchable(self) -> int:
        """The images a query can find: the readable ones of the test set and of the distractors."""
        extra = 0 if self.distractors is None else self.distractors.count - len(set(self.distractors.skipped))
        return self.vecs.shape[1] - len(set(self.excluded)) + extra

    def positions(self, queries: np.ndarray) -> np.ndarray:
        """The places of the test set's images in each query's ranking of the whole database.

        Args:
            queries: D x Q descriptors.

        Returns:
            N x Q places, 0-based (equal scores keep the database's order, the test set's
            images before the distractors).
        """
        blocks, skipped, transform = self._blocks()
        return positions_with_distractors(self.vecs, queries, blocks, self.device, self.excluded, skipped, transform)

    def nearest(self, queries: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """Each query's ``k`` best images of the whole database, with their descriptors.

        Args:
            queries: D x Q descriptors.
            k: neighbours per query.

        Returns:
            k x Q indices (the test set's images 0..N-1, distractor i at N + i), best first,
            and their D x k x Q descriptors (transformed distractors).

        Raises:
            ConfigError: when ``k`` passes the images that could be read: an unreadable one,
                whitened, would be a neighbour with a descriptor (αQE, SuperGlobal).
        """
        if k > self.searchable:
            raise ConfigError(
                f"{k} neighbours asked for, but the database holds {self.searchable} images that could be read; "
                f"give {self.searchable} or less (--qe, --superglobal)"
            )
        blocks, skipped, transform = self._blocks()
        return nearest_with_distractors(self.vecs, queries, k, blocks, self.device, self.excluded, skipped, transform)

    def whitened(self, whitening: Tuple[np.ndarray, np.ndarray], name: str) -> "TestDatabase":
        """The same database in the whitened space.

        Args:
            whitening: the learned whitening (m, P), checked (`check_whitening`).
            name: the test set's name, for an error.

        Returns:
            The database with its descriptors whitened and every distractor block whitened as
            it is read, on the device the scores are computed on (`whitened_rows`).

        Raises:
            WhiteningError: when whitening makes a descriptor NaN or infinite.
        """
        distractors = self.distractors
        if distractors is not None:
            white = functools.partial(whitened_rows, whitening=whitening_on(whitening, self.device), what="distractor")
            distractors = dataclasses.replace(distractors, transform=white)
        return dataclasses.replace(
            self, vecs=whitened(self.vecs, whitening, f"{name} database"), distractors=distractors
        )

    def augmented(self, k: int, alpha: float) -> "TestDatabase":
        """The database after database-side augmentation (DBA) of its descriptors.

        Args:
            k: neighbours per image.
            alpha: the power of their similarities.

        Returns:
            The augmented database (`aml.evaluation.reranking.database_augmentation`).

        Raises:
            ConfigError: with distractors, whose neighbours among all the others DBA would need.
        """
        if self.distractors is not None:
            raise ConfigError(
                f"DBA with {self.distractors.count} distractors would need the neighbours of every "
                "distractor among all the others"
            )
        return dataclasses.replace(self, vecs=database_augmentation(self.vecs, k, alpha, self.device, self.excluded))
