"""What a test gives: per test set, the numbers of each search (plain or whitened, after which
re-ranking steps), the images skipped, the distractors added and the ranking report, as typed
values. `DatasetResult.record` writes them as test.py's results file has them, and
`DatasetResult.lines` as it prints them."""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, cast

from aml.data.testsets import LEVELS
from aml.evaluation.metrics import LevelMetrics, Metrics, format_results
from aml.evaluation.reranking import Reranking
from aml.utils.errors import ConfigError


@dataclass(frozen=True)
class SearchResult:
    """The numbers of one search of a test set's queries.

    Attributes:
        whitened: the descriptors were whitened.
        reranking: the re-ranking steps that ran before these results (`Reranking.stages`):
            none (the first search), DBA (the first search of the augmented database), DBA and
            αQE (the search of the expanded queries), then SuperGlobal's re-ranking of it.
        metrics: the numbers, as `aml.evaluation.metrics.evaluate_ranks` gives them
            (``{"easy"|"medium"|"hard": {"map", "mp@k", "aps"}}`` for the revisited protocol).

    Examples:
        >>> from aml.evaluation import Reranking
        >>> from aml.evaluation.results import SearchResult
        >>> SearchResult(True, Reranking(qe=2, dba=10), {}).key
        'whiten + dba10 + αqe2'
        >>> SearchResult(False, Reranking(), {"medium": {"map": 0.5}}).map()
        0.5
    """

    whitened: bool
    reranking: Reranking
    metrics: Metrics

    @property
    def steps(self) -> List[str]:
        """What the descriptors went through, in order (``['whiten', 'dba10 + αqe2']``); empty: plain."""
        return ["whiten"] * self.whitened + [self.reranking.label()] * self.reranking.active

    @property
    def key(self) -> str:
        """Its name in the results file: ``'plain'``, ``'plain + αqe2'``, ``'whiten'``, ``'whiten + dba10'``, ..."""
        return " + ".join((["plain"] if not self.whitened else []) + self.steps)

    def map(self, level: str = "medium") -> float:
        """The mAP of one difficulty level (the revisited protocol), or the classic mAP.

        Args:
            level: ``"easy"``, ``"medium"`` or ``"hard"`` (the revisited protocol); ``"all"``
                or any of those for a classic test set, which has one mAP.

        Returns:
            The mAP in [0, 1].

        Raises:
            ConfigError: for another level (``"Hard"``), naming the levels (a ValueError).
        """
        if level not in (*LEVELS, "all"):
            raise ConfigError(f"level {level!r}: choose {_in_words(LEVELS, 'or')} (all: a classic test set's one mAP)")
        metrics = self.metrics
        if "map" in metrics:  # the classic protocol
            return float(metrics["map"])
        if level == "all":
            raise ConfigError(f"level 'all' is a classic test set's; this one has {_in_words(LEVELS, 'and')}")
        numbers = cast(Optional[LevelMetrics], metrics.get(level))
        if numbers is None:
            raise ConfigError(f"level {level!r}: these results hold no such level ({sorted(metrics)})")
        return float(numbers["map"])


@dataclass(frozen=True)
class SkippedImages:
    """The images of a test set that could not be read, and were left out.

    Attributes:
        database: the database images (ranked last for every query).
        queries: the queries (left out of the means).
        listing: the file that lists them (None: its folder could not be written).

    Examples:
        >>> from pathlib import Path
        >>> from aml.evaluation import SkippedImages
        >>> skipped = SkippedImages(("jpg/broken.jpg",), (), Path("skipped_roxford5k.txt"))
        >>> len(skipped.database) + len(skipped.queries)
        1
    """

    database: Tuple[str, ...]
    queries: Tuple[str, ...]
    listing: Optional[Path]


@dataclass(frozen=True)
class DistractorsAdded:
    """The distractors a test set's database was searched with.

    Attributes:
        count: the distractor images.
        skipped: those that could not be read.
        store: the descriptor store that holds their descriptors.
        kept: False for a store deleted after the test (that of a network in memory, a
            student between two epochs, which no later test finds again).

    Examples:
        >>> from aml.evaluation import DistractorsAdded
        >>> DistractorsAdded(1001001, 2, "data/features/distractors/revisitop1m_...").count
        1001001
    """

    count: int
    skipped: int
    store: str
    kept: bool = True


@dataclass(frozen=True)
class DatasetResult:
    """Everything a test of one test set gives.

    Attributes:
        dataset: the test set, with its ``+`` distractor suffix.
        searches: the searches in the order they ran: plain, its re-ranked searches, then
            whitened and its re-ranked searches.
        skipped: the images that could not be read, or None.
        distractors: the distractors added, or None.
        report: the ranking report's page, or None.

    Examples:
        >>> from aml.evaluation import Reranking
        >>> from aml.evaluation.results import DatasetResult, SearchResult
        >>> numbers = {"map": 0.5, "aps": [0.5], "mpr": [1.0], "prs": [[1.0, 1.0, 1.0]]}
        >>> result = DatasetResult("oxford5k", (SearchResult(False, Reranking(), numbers),
        ...                                     SearchResult(False, Reranking(qe=2), numbers)))
        >>> list(result.record())
        ['plain', 'plain + αqe2']
        >>> result.search(reranking=Reranking(qe=2)).key
        'plain + αqe2'
    """

    dataset: str
    searches: Tuple[SearchResult, ...]
    skipped: Optional[SkippedImages] = None
    distractors: Optional[DistractorsAdded] = None
    report: Optional[Path] = None

    @property
    def plain(self) -> SearchResult:
        """The first search: plain descriptors, nothing re-ranked."""
        return self.search()

    def search(self, whitened: bool = False, reranking: Reranking = Reranking()) -> SearchResult:
        """The search that ran after these steps.

        Args:
            whitened: of the whitened descriptors.
            reranking: the re-ranking steps that ran before it (`SearchResult.reranking`).

        Returns:
            The search.

        Raises:
            KeyError: when no such search ran.
        """
        for found in self.searches:
            if found.whitened == whitened and found.reranking == reranking:
                return found
        raise KeyError(f"{self.dataset}: no search {SearchResult(whitened, reranking, {}).key!r}")

    def record(self) -> Dict[str, Any]:
        """The test set's entry of test.py's results file.

        Returns:
            Each search's numbers under its `SearchResult.key`, then ``"distractors"``
            (count, skipped, store), ``"skipped"`` (database, queries, list) and ``"report"``
            when they apply.
        """
        entry: Dict[str, Any] = {search.key: search.metrics for search in self.searches}
        if self.distractors is not None:
            entry["distractors"] = {
                "count": self.distractors.count,
                "skipped": self.distractors.skipped,
                "store": self.distractors.store if self.distractors.kept else None,
            }
        if self.skipped is not None:
            entry["skipped"] = {
                "database": list(self.skipped.database),
                "queries": list(self.skipped.queries),
                "list": None if self.skipped.listing is None else os.path.abspath(self.skipped.listing),
            }
        if self.report is not None:
            entry["report"] = os.path.abspath(self.report)  # found from wherever the results file is read
        return entry

    def lines(self) -> List[str]:
        """The original's printed lines, one per search (``>> roxford5k + whiten + dba10 + αqe2: ...``).

        Returns:
            Each search's lines, ending with the count of skipped images when there were
            any, then where the distractors, the skipped list and the ranking report are.
        """
        skipped = self.skipped
        count = len(skipped.database) + len(skipped.queries) if skipped else 0
        note = f" ({count} unreadable images skipped)" if count else ""
        lines = []
        for search in self.searches:
            name = " + ".join([self.dataset] + search.steps)
            lines += [line + note for line in format_results(name, search.metrics)]
        if self.distractors is not None:
            extra = self.distractors
            unread = f", {extra.skipped} unreadable ones skipped (list next to the shards)" if extra.skipped else ""
            where = f"descriptors in {extra.store}" if extra.kept else "their descriptors encoded for this test alone"
            lines.append(f">> {self.dataset}: {extra.count} distractors added{unread}; {where}")
        if skipped:
            where = f"list in {skipped.listing}" if skipped.listing else "their list could not be written (see above)"
            lines.append(
                f">> {self.dataset}: {len(skipped.database)} database images and {len(skipped.queries)} "
                f"queries could not be read and were skipped; {where}"
            )
        if self.report is not None:
            lines.append(f">> {self.dataset}: ranking report in {self.report}")
        return lines


def _in_words(words: Tuple[str, ...], last: str) -> str:
    """``words`` as a sentence lists them: ``a, b or c``."""
    return f"{', '.join(words[:-1])} {last} {words[-1]}"
