"""The compatibility matrix of several networks: each network's queries searched in each
network's database on every test set. Every cell is test.py's number for that pair
(`aml.evaluation.evaluate` of the query and the database network; on the diagonal the
network with itself, which is its symmetric test, whitened with the same whitening as the
rest of its column); a pair of networks
whose dimensions differ has no search. The first network is the teacher whose symmetric mAP
`aml.compat.marks.beats_teacher` compares with."""

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, TypedDict

import numpy as np

from aml.compat.marks import bct_compatible, beats_teacher
from aml.data.testsets import REPORTED_LEVELS
from aml.evaluation.results import DatasetResult, SearchResult
from aml.evaluation.plan import TestSettings
from aml.evaluation.testing import evaluate
from aml.networks.loading import LoadedNetwork, Source, check_loaded
from aml.networks.fingerprint import spelling_free_fingerprint
from aml.utils.errors import ConfigError

log = logging.getLogger(__name__)

#: the level of a classic test set's one mAP (a revisited one holds `aml.data.testsets.REPORTED_LEVELS`)
CLASSIC = "all"
#: how the record lays its numbers out
LAYOUT = (
    "maps[test set][search][level]['map'][i][j]: the mAP (0-1) of network i's queries searched in "
    "network j's database, networks in the order of 'networks'; null: their dimensions differ (no "
    "search), or no query has a positive at this level (mAP undefined; the networks' 'dim' tell which)"
)


class MatrixCell(TypedDict):
    """One matrix of the record: the mAP of each pair (null: no search), and its marks."""

    map: List[List[Optional[float]]]
    beats_teacher: List[List[bool]]
    bct: List[List[bool]]


class MatrixRecord(TypedDict):
    """`CompatibilityMatrix.record`: the networks (each `MatrixNetwork`'s fields), the teacher's
    label, how to read the numbers (`LAYOUT`) and the matrices by test set, search and level."""

    networks: List[Dict[str, Any]]  # dataclasses.asdict of each MatrixNetwork
    teacher: str
    layout: str
    maps: Dict[str, Dict[str, Dict[str, MatrixCell]]]


#: called with the query network's label, the database network's label and the pair's results
PairCallback = Callable[[str, str, Dict[str, DatasetResult]], None]


def levels_of(search: SearchResult) -> Tuple[str, ...]:
    """The levels a search's numbers have: Medium and Hard (revisited protocol), else one (classic).

    Args:
        search: one search of a test set.

    Returns:
        `aml.data.testsets.REPORTED_LEVELS`, or ``("all",)`` for a classic test set.

    Examples:
        >>> from aml.evaluation import Reranking, SearchResult
        >>> from aml.compat.matrix import levels_of
        >>> levels_of(SearchResult(False, Reranking(), {"map": 0.5}))
        ('all',)
    """
    return REPORTED_LEVELS if "medium" in search.metrics else (CLASSIC,)


@dataclass(frozen=True)
class MatrixNetwork:
    """One network of a compatibility matrix, as the record names it.

    Attributes:
        label: what the matrix calls it (unique in the matrix).
        name: what it goes by elsewhere (`aml.networks.LoadedNetwork.name`).
        given: the text it was loaded by (a published name, an alias, a checkpoint path).
        source: where it comes from (``published``, ``checkpoint``, ...).
        architecture: its trunk.
        dim: its descriptor dimension.
        fingerprint: the content hash of its weights and meta.
        mode: the training mode its checkpoint records, or None.

    Examples:
        >>> from aml.compat import MatrixNetwork
        >>> from aml.networks import LoadedNetwork, build_network
        >>> net = build_network("resnet18", pretrained=False, teacher_dim=64)
        >>> MatrixNetwork.of("student", LoadedNetwork.in_memory(net, "resnet18")).dim
        64
    """

    label: str
    name: str
    given: str
    source: str
    architecture: str
    dim: int
    fingerprint: str
    mode: Optional[str] = None

    @classmethod
    def of(cls, label: str, network: LoadedNetwork) -> "MatrixNetwork":
        """The entry of a loaded network.

        Args:
            label: what the matrix calls it.
            network: the network with its provenance.

        Returns:
            Its entry.
        """
        meta = network.net.meta
        return cls(
            label,
            network.name,
            network.spec.given,
            network.spec.source.value,
            str(meta["architecture"]),
            int(meta["outputdim"]),
            network.fingerprint,
            meta.get("mode"),
        )


@dataclass(frozen=True)
class CompatibilityMatrix:
    """The mAP of every network's queries in every network's database, per test set, search and level.

    Attributes:
        networks: the networks in order; the first is the teacher.
        maps: per (test set, search, level) the N x N mAP in [0, 1], row i's queries searched
            in column j's database; NaN where the two dimensions differ (no search) or no query
            has a positive at the level (undefined). The search is a
            `aml.evaluation.SearchResult.key` (``plain``, ``whiten``); the level ``medium``,
            ``hard``, or ``all`` for a classic test set.

    Examples:
        >>> import numpy as np
        >>> from aml.compat import CompatibilityMatrix, MatrixNetwork
        >>> teacher = MatrixNetwork("teacher", "t", "t.pth", "checkpoint", "resnet18", 8, "0" * 16)
        >>> student = MatrixNetwork("student", "s", "s.pth", "checkpoint", "mobilenet_v2", 8, "1" * 16, "reg")
        >>> maps = {("synth-oxford", "plain", "medium"): np.array([[0.6, 0.4], [0.5, 0.3]])}
        >>> matrix = CompatibilityMatrix((teacher, student), maps)
        >>> matrix.marks("synth-oxford", "plain", "medium")[1].tolist()
        [[False, True], [False, False]]
        >>> CompatibilityMatrix.from_record(matrix.record()) == matrix
        True
    """

    networks: Tuple[MatrixNetwork, ...]
    maps: Mapping[Tuple[str, str, str], np.ndarray]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CompatibilityMatrix):
            return NotImplemented
        return (
            self.networks == other.networks
            and list(self.maps) == list(other.maps)
            and all(np.array_equal(self.maps[key], other.maps[key], equal_nan=True) for key in self.maps)
        )

    @property
    def labels(self) -> List[str]:
        """The networks' labels, in order (rows and columns)."""
        return [network.label for network in self.networks]

    @property
    def teacher(self) -> MatrixNetwork:
        """The teacher: the first network."""
        return self.networks[0]

    @property
    def datasets(self) -> List[str]:
        """The test sets, in order."""
        return list(dict.fromkeys(dataset for dataset, _, _ in self.maps))

    def searches(self, dataset: str) -> List[str]:
        """The searches of a test set (``plain``, then ``whiten`` with whitening).

        Args:
            dataset: the test set.

        Returns:
            The search keys, in order.
        """
        return list(dict.fromkeys(search for name, search, _ in self.maps if name == dataset))

    def levels(self, dataset: str) -> List[str]:
        """The levels of a test set (``medium`` and ``hard``, or ``all`` for a classic one).

        Args:
            dataset: the test set.

        Returns:
            The levels, in order.
        """
        return list(dict.fromkeys(level for name, _, level in self.maps if name == dataset))

    def marks(self, dataset: str, search: str = "plain", level: str = "medium") -> Tuple[np.ndarray, np.ndarray]:
        """The marked cells of one matrix (`aml.compat.marks`).

        Args:
            dataset: the test set.
            search: the search (``plain``, ``whiten``).
            level: the level.

        Returns:
            The cells that beat the teacher's symmetric mAP, and those where BCT's criterion
            holds, as N x N booleans.
        """
        maps = self.maps[dataset, search, level]
        return beats_teacher(maps), bct_compatible(maps)

    def record(self) -> MatrixRecord:
        """The matrix as JSON data.

        Returns:
            ``networks`` (each `MatrixNetwork` as a dict), ``teacher`` (its label), ``layout``
            (how to read the numbers) and ``maps``: per test set, search and level the mAP
            (``map``, null where no search) and the marks (``beats_teacher``, ``bct``).
        """
        maps: Dict[str, Dict[str, Dict[str, MatrixCell]]] = {}
        for (dataset, search, level), values in self.maps.items():
            better, bct = self.marks(dataset, search, level)
            numbers = [[None if np.isnan(value) else float(value) for value in row] for row in values]
            maps.setdefault(dataset, {}).setdefault(search, {})[level] = {
                "map": numbers,
                "beats_teacher": better.tolist(),
                "bct": bct.tolist(),
            }
        return {
            "networks": [dataclasses.asdict(network) for network in self.networks],
            "teacher": self.teacher.label,
            "layout": LAYOUT,
            "maps": maps,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> "CompatibilityMatrix":
        """The matrix a record holds (the marks are computed again from the numbers).

        Args:
            record: what `record` gives (a ``--json`` file of ``python -m aml.compat``).

        Returns:
            The matrix.
        """
        networks = tuple(MatrixNetwork(**network) for network in record["networks"])
        maps = {
            (dataset, search, level): np.array([[np.nan if v is None else v for v in row] for row in cell["map"]])
            for dataset, searches in record["maps"].items()
            for search, levels in searches.items()
            for level, cell in levels.items()
        }
        return cls(networks, maps)


def check_distinct(networks: Mapping[str, LoadedNetwork]) -> None:
    """Refuse one network given twice: its rows and columns would repeat.

    The same weights under two labels: a copy of a file, ``model_best`` beside the epoch it
    copies, a timm network under two spellings of its name (`spelling_free_fingerprint`).

    Args:
        networks: label -> network.

    Raises:
        ConfigError: naming both labels.

    Examples:
        >>> from aml.compat import check_distinct
        >>> check_distinct({"teacher": teacher, "student": student})  # doctest: +SKIP
    """
    seen: Dict[str, str] = {}
    for label, network in networks.items():
        first = seen.setdefault(spelling_free_fingerprint(network.net), label)
        if first != label:
            raise ConfigError(
                f"networks {first!r} and {label!r} are one network (the same weights, fingerprint "
                f"{network.fingerprint[:8]}): its rows and columns would repeat; give it once"
            )


def compatibility_matrix(
    networks: Mapping[str, LoadedNetwork], settings: TestSettings, on_pair: Optional[PairCallback] = None
) -> CompatibilityMatrix:
    """Search every network's queries in every network's database, on every test set of ``settings``.

    Each cell is `aml.evaluation.evaluate` of the pair, test.py's path: the row's network as
    the student and the column's as the teacher (the network with itself on the diagonal, so
    that with whitening every cell of a column uses the whitening learned for its network,
    where test.py alone would apply a published network's whitening file). The columns are done one after
    the other, so that with ``settings.cache`` (the default) each network encodes each
    database once, and every other cell of its column reads the database cache; the queries
    are encoded for each pair. A network in memory alone (`LoadedNetwork.in_memory`) has
    nothing cached: it encodes its database (and its distractors) for every query network of
    its dimension, which a warning says.

    Args:
        networks: the networks by label, in order; the first is the teacher.
        settings: the test sets and how to test (`aml.evaluation.TestSettings`; a ranking
            report is refused).
        on_pair: called with the query network's label, the database network's label and
            the pair's results (`aml.evaluation.DatasetResult` per test set) as each pair is done.

    Returns:
        The matrix.

    Raises:
        ConfigError: for no network or no test set, or a ranking report (``settings.report_dir``).

    Examples:
        >>> from aml.compat import compatibility_matrix
        >>> from aml.descriptors import ExtractionConfig
        >>> from aml.evaluation import TestSettings
        >>> from aml.networks import load_named_or_file
        >>> teacher = load_named_or_file("teacher.pth.tar")  # doctest: +SKIP
        >>> student = load_named_or_file("student.pth.tar")  # doctest: +SKIP
        >>> settings = TestSettings(datasets=("synth-oxford",), image_size=96, extraction=ExtractionConfig(workers=0))
        >>> matrix = compatibility_matrix({"teacher": teacher, "student": student}, settings)  # doctest: +SKIP
        >>> matrix.maps["synth-oxford", "plain", "medium"]  # doctest: +SKIP
        array([[0.70, 0.13],
               [0.12, 0.39]])
    """
    if not isinstance(networks, Mapping):
        raise ConfigError(f"networks must map a label to each LoadedNetwork, got a {type(networks).__name__}")
    if not networks or not settings.datasets:
        raise ConfigError("a compatibility matrix needs at least one network and one test set")
    for label, network in networks.items():
        check_loaded(network, f"network {label!r}")
    check_distinct(networks)
    if settings.report_dir is not None:
        raise ConfigError("a compatibility matrix draws no ranking report; test a pair with test.py --report")
    labels, loaded = list(networks), list(networks.values())
    size = len(loaded)
    _warn_of_networks_in_memory(networks, settings)
    maps: Dict[Tuple[str, str, str], np.ndarray] = {}
    for column, database in enumerate(loaded):
        for row, query in enumerate(loaded):
            dims = query.net.meta["outputdim"], database.net.meta["outputdim"]
            if dims[0] != dims[1]:
                log.info(">> %s in %s: %d-d queries, %d-d database: no search", labels[row], labels[column], *dims)
                continue
            log.info(">> queries by %s, database by %s", labels[row], labels[column])
            results = evaluate(query, settings, database)  # the diagonal too: one whitening per column
            for dataset, result in results.items():
                for search in result.searches:
                    for level in levels_of(search):
                        key = (dataset, search.key, level)
                        maps.setdefault(key, np.full((size, size), np.nan))[row, column] = search.map(level)
            if on_pair is not None:
                on_pair(labels[row], labels[column], results)
    return CompatibilityMatrix(tuple(MatrixNetwork.of(label, network) for label, network in networks.items()), maps)


def _warn_of_networks_in_memory(networks: Mapping[str, LoadedNetwork], settings: TestSettings) -> None:
    """Say which networks, in memory alone, encode their database once per cell of their column
    that is searched (a query network of their dimension): nothing is cached for them (without
    the cache, for none: nothing to say)."""
    if not settings.cache:
        return
    dims = [network.net.meta["outputdim"] for network in networks.values()]
    repeated = {
        label: dims.count(network.net.meta["outputdim"])
        for label, network in networks.items()
        if network.spec.source is Source.MEMORY and dims.count(network.net.meta["outputdim"]) > 1
    }
    if repeated:
        log.warning(
            ">> %s: in memory alone, nothing is cached for %s: each encodes its database once per query network "
            "of its dimension (%s times); load them from checkpoint files to encode each database once",
            ", ".join(repeated),
            "it" if len(repeated) == 1 else "them",
            ", ".join(str(count) for count in repeated.values()),
        )
