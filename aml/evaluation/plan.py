"""What a test is told and what that decides: `TestSettings` (test.py's flags besides the
networks) and `TestPlan`, the settings resolved once, before anything is encoded.

`TestPlan.of` checks the settings against the networks and the data, then reads everything
they name: each test set's images and ground truth, its distractor set's image list, the
whitening set (or the whitening that needs none), the folders where descriptors are cached and
stored, and the one `DescriptorKey` of the database encoder's descriptors (the database cache,
the distractor stores and the whitening cache are all keyed by it). A missing or damaged file
thus stops a test before its first image is encoded, and the encoding and the searches
(`aml.evaluation.testing`) work on these values, not on the settings.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, cast

from aml.data.distractors import DISTRACTOR_SETS, read_distractor_list, split_test_name
from aml.data.formats import TestConfig, TrainingDb
from aml.data.paths import DataRoot, DataRootLike
from aml.data.images import check_images_exist
from aml.data.testsets import query_and_database_paths, read_test_set
from aml.data.trainsets import read_whitening_db
from aml.descriptors import DescriptorKey, ExtractionConfig
from aml.descriptors.store import StoreKey
from aml.evaluation.ranking import most_neighbours
from aml.evaluation.reranking import Reranking
from aml.evaluation.whitening_store import Whitening, WhiteningRequest, known_whitening
from aml.networks.loading import LoadedNetwork, Source, check_loaded
from aml.reports.ranking import check_report_folder
from aml.utils.changeable import Changeable
from aml.utils.distributed import current_world, main_first
from aml.utils.errors import ConfigError, lookup

#: how test.py extracts unless told otherwise: its defaults (-j 8; the device is the network's)
TEST_EXTRACTION = ExtractionConfig(workers=8)


@dataclass(frozen=True)
class TestSettings(Changeable):
    """Everything test.py's flags decide besides the networks.

    Attributes:
        datasets: the test sets, with their ``+`` distractor suffixes (a string is split at
            commas).
        image_size: the longer side images are shrunk to.
        scales: the multi-scale factors.
        whitening: the whitening set (None: no whitening).
        extraction: how the images are encoded (its device, default the network's, is where
            the searches run too; ``skip_bad`` skips unreadable images, listed in
            ``skipped_dir``).
        data_root: the data root, resolved once (`aml.data.paths.DataRoot`).
        cache: keep the database descriptors in ``<data_root>/features/cache``.
        skipped_dir: where ``skipped_<dataset>.txt`` goes (None: the data set's folder).
        report_dir: write the visual ranking report there (None: none).
        report_top: the database images the report shows per query.
        distractor_dtype: the dtype of the distractor store (float16 halves its disk and reads).
        shard_size: images per distractor shard.
        reranking: αQE, DBA and SuperGlobal (default: none).

    Examples:
        >>> from aml.descriptors import ExtractionConfig
        >>> from aml.evaluation import TestSettings
        >>> settings = TestSettings(datasets=("roxford5k",), extraction=ExtractionConfig(workers=0, device="cpu"))
        >>> settings.scales, type(settings.data_root).__name__
        ((1.0,), 'DataRoot')
    """

    __test__ = False  # not a pytest test class, despite its name
    datasets: Tuple[str, ...] = ("roxford5k", "rparis6k")
    image_size: int = 1024
    scales: Tuple[float, ...] = (1.0,)
    whitening: Optional[str] = None
    extraction: ExtractionConfig = TEST_EXTRACTION
    data_root: DataRootLike = None  # resolved once, into a DataRoot
    cache: bool = True
    skipped_dir: Optional[Path] = None
    report_dir: Optional[Path] = None
    report_top: int = 10
    distractor_dtype: str = "float32"
    shard_size: int = 16384
    reranking: Reranking = Reranking()

    def __post_init__(self) -> None:
        self.check_parts(extraction=ExtractionConfig, reranking=Reranking)
        if isinstance(self.datasets, str):  # "a,b" as test.py's -d takes it (iterated, it was letters)
            object.__setattr__(self, "datasets", tuple(d for d in self.datasets.split(",") if d))
        object.__setattr__(self, "datasets", tuple(self.datasets))
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
        object.__setattr__(self, "data_root", DataRoot.resolve(self.data_root))
        self._refuse_ignored()

    def _refuse_ignored(self) -> None:
        """Refuse the fields these settings would ignore, as test.py refuses their flags: the
        report's size without a report, the distractor store's without a distractor set."""
        distractors = any(split_test_name(d)[1] for d in self.datasets)
        needs = {  # field -> what it is read with, when that is missing
            "report_top": None if self.report_dir is not None else "report_dir",
            "distractor_dtype": None if distractors else "a distractor set in datasets (NAME+1m)",
            "shard_size": None if distractors else "a distractor set in datasets (NAME+1m)",
        }
        for name, missing in needs.items():
            value = getattr(self, name)
            if missing and value != self.__dataclass_fields__[name].default:
                raise ConfigError(f"TestSettings {name}={value!r} is read only with {missing}; leave it out")

    @property
    def device(self) -> str:
        """Where the images are encoded and the searches run (the CPU when not set)."""
        return str(self.extraction.device_for())

    def whitening_request(self) -> WhiteningRequest:
        """What the whitening of these settings is learned (or found) with.

        Returns:
            The request: the whitening set, encoded like the test images.
        """
        assert self.whitening is not None
        return WhiteningRequest(self.whitening, self.image_size, self.scales, self.extraction, self.data_root)


def check_reranking(
    reranking: Reranking,
    datasets: Sequence[str],
    data_root: DataRootLike = None,
    sizes: bool = True,
    dim: Optional[int] = None,
) -> None:
    """Refuse a re-ranking that the test sets cannot take, before anything is encoded.

    DBA with a distractor set would need the neighbours of every distractor among all the
    others, so it is refused there; ``--dba`` must leave a neighbour out of the database
    (an image is not its own neighbour), and ``--qe`` and ``--superglobal`` must not exceed the
    database with its distractors, nor keep more neighbours' descriptors than memory is given
    for (`aml.evaluation.ranking.most_neighbours`).
    The test sets are prepared (downloaded or generated) when missing.

    Args:
        reranking: the re-ranking asked for.
        datasets: the test set names, with their ``+`` distractor suffixes.
        data_root: the data root.
        sizes: also check the sizes (reading the test sets); False: only what needs no data.
        dim: the descriptors' dimension (the database encoder's), for the memory bound of
            ``--qe`` and ``--superglobal``; None: not checked.

    Raises:
        ValueError: one line naming the flag, the test set and its size.
    """
    if not reranking.active:
        return
    for name in datasets:
        dataset, suffix = split_test_name(name)
        if reranking.dba and suffix is not None:
            raise ConfigError(
                f"--dba {reranking.dba} with {name}: database-side augmentation with distractors would "
                f"need the neighbours of every distractor among all the others; run --dba on {dataset} "
                f"(without '+{suffix}'); --qe works with distractors"
            )
    if not sizes:
        return
    test_root = DataRoot.resolve(data_root).subdir("test")
    for name in datasets:
        dataset, suffix = split_test_name(name)
        cfg = read_test_set(dataset, test_root)
        distractors = len(read_distractor_list(suffix, test_root)) if suffix is not None else 0
        _check_sizes(reranking, name, suffix, cfg["n"], cfg["nq"], distractors, dim)


def _check_sizes(
    reranking: Reranking,
    name: str,
    suffix: Optional[str],
    size: int,
    queries: int,
    distractors: int,
    dim: Optional[int],
) -> None:
    """`check_reranking` of one test set of ``size`` database images, ``queries`` queries and
    ``distractors`` distractors (its set ``suffix``)."""
    dataset = split_test_name(name)[0]
    if reranking.dba >= size:
        raise ConfigError(
            f"--dba {reranking.dba}: the database of {dataset} holds {size} images, so an image has "
            f"at most {size - 1} neighbours; give --dba {size - 1} or less"
        )
    # αQE keeps its neighbours' descriptors while distractors are searched, SuperGlobal its first M always
    for flag, k in reranking.kept_neighbours():
        if k > size + distractors:
            held = f"{size} images" + (f" and {distractors} distractors" if suffix is not None else "")
            raise ConfigError(
                f"{flag} {k}: the database of {name} holds {held}; give {flag} {size + distractors} or less"
            )
        _check_neighbours(flag, k, name, queries, dim)


def _check_neighbours(flag: str, k: int, name: str, queries: int, dim: Optional[int]) -> None:
    """Refuse a ``k`` whose nearest descriptors of every query (`most_neighbours`) would pass
    the memory a search keeps them in; ``dim`` None: not checked."""
    most = most_neighbours(queries, dim) if dim is not None else None
    if most is not None and k > most:
        gib = queries * k * (dim or 0) * 4 / 2**30
        raise ConfigError(
            f"{flag} {k} with {name}: its {queries} queries would keep their {k} nearest {dim}-d "
            f"descriptors ({gib:.3g} GiB) while the database is searched, more than a search is given; "
            f"give {flag} {most} or less"
        )


@dataclass(frozen=True)
class PlannedSet:
    """One test set of the settings, read: its ground truth and images.

    Attributes:
        name: the name the settings give it (with its ``+`` distractor suffix).
        cfg: its config (`aml.data.testsets.configdataset`): image lists, ground truth, protocol.
        images: its database images.
        queries: its query images.
        bbxs: the queries' boxes (None: the whole image).
        distractors: the suffix of its distractor set (`TestPlan.distractors`), or None.
        listing: where the list of its skipped images goes, if any.
    """

    name: str
    cfg: TestConfig
    images: List[str]
    queries: List[str]
    bbxs: List[Any]
    distractors: Optional[str]
    listing: Path

    @property
    def dataset(self) -> str:
        """The test set's own name (without the distractors)."""
        return split_test_name(self.name)[0]


@dataclass(frozen=True)
class PlannedDistractors:
    """A distractor set, and the store its descriptors by the database encoder go to.

    Attributes:
        name: the set's folder name (``revisitop1m``, ``synth-1m``).
        images: its images, in the order of its list.
        folder: the store's folder (one per network and settings, shared by every test set
            and by every student tested against this teacher).
        key: what the store holds (`aml.descriptors.store.StoreKey`).
        extraction: how its shards are encoded.
    """

    name: str
    images: List[str]
    folder: Path
    key: StoreKey
    extraction: ExtractionConfig


@dataclass(frozen=True)
class PlannedWhitening:
    """Where the whitening comes from: known already, or looked up in its cache and else learned.

    Attributes:
        request: the whitening set, encoded like the test images.
        known: the checkpoint's or the published whitening (then nothing is learned), or None.
        db: the whitening set, read (None when ``known``).
    """

    request: WhiteningRequest
    known: Optional[Whitening] = None
    db: Optional[TrainingDb] = None


@dataclass(frozen=True)
class TestPlan:
    """A test's settings resolved: everything they decide, read and keyed, nothing encoded.

    Attributes:
        student: the tested network (it encodes the queries, and the database without a teacher).
        teacher: the teacher, which encodes the database (asymmetric testing), or None.
        sets: the test sets, in order.
        settings: the settings, their extraction on the device where everything runs (the
            student's unless they name one).
        key: what the database encoder's descriptors depend on (the database cache, the
            distractor stores and the whitening cache are keyed by it).
        cache_dir: where the database descriptors are cached (None: not cached).
        distractors: the distractor sets, by suffix.
        whitening: where the whitening comes from (None: no whitening).

    Examples:
        >>> from aml.evaluation.plan import TestPlan
        >>> plan = TestPlan.of(student, settings, teacher)  # doctest: +SKIP
        >>> [test.name for test in plan.sets], plan.key.pixels  # doctest: +SKIP
        (['roxford5k+1m'], 'pil-fp32')
    """

    __test__ = False  # not a pytest test class, despite its name
    student: LoadedNetwork
    teacher: Optional[LoadedNetwork]
    sets: Tuple[PlannedSet, ...]
    settings: TestSettings
    key: DescriptorKey
    cache_dir: Optional[Path]
    distractors: Dict[str, PlannedDistractors]
    whitening: Optional[PlannedWhitening]

    @property
    def database_encoder(self) -> LoadedNetwork:
        """The network that encodes the database, the distractors and the whitening set."""
        return self.teacher or self.student

    @property
    def device(self) -> str:
        """Where the images are encoded and the searches run."""
        return self.settings.device

    @classmethod
    def of(cls, student: LoadedNetwork, settings: TestSettings, teacher: Optional[LoadedNetwork] = None) -> "TestPlan":
        """Check the settings, then read everything they name.

        Args:
            student: the tested network.
            settings: the test sets and how to test.
            teacher: the teacher, which encodes the database (asymmetric testing); None: symmetric.

        Returns:
            The plan.

        Raises:
            ConfigError: for a ranking report with distractors, networks of other dimensions, or
                a re-ranking or a report's top K the test sets cannot take (`check_reranking`).
        """
        check_loaded(student, "student")
        if teacher is not None:
            check_loaded(teacher, "teacher")
        database = teacher or student
        _check_networks(student, settings, teacher)
        check_reranking(settings.reranking, settings.datasets, sizes=False)
        root = cast(DataRoot, settings.data_root)  # resolved by the settings
        extraction = settings.extraction
        if extraction.device is None:  # the student's device, for every extraction and search
            extraction = extraction.but(device=extraction.device_for(student.net))
            settings = settings.but(extraction=extraction)
        progress, test_root = extraction.progress, root.subdir("test")
        world = current_world()  # what is downloaded or generated: by rank 0 first, under torchrun
        sets = main_first(world, lambda: _read_sets(settings, test_root, progress))
        suffixes = dict.fromkeys(test.distractors for test in sets if test.distractors is not None)
        lists = main_first(world, lambda: {s: read_distractor_list(s, test_root, progress) for s in suffixes})
        dim = database.net.meta["outputdim"]
        for test in sets:
            count = len(lists[test.distractors]) if test.distractors is not None else 0
            _check_sizes(
                settings.reranking, test.name, test.distractors, len(test.images), len(test.queries), count, dim
            )
            if settings.report_dir is not None:
                shown = min(settings.report_top, len(test.images))
                _check_neighbours("--report-top", shown, test.name, len(test.queries), dim)
                check_report_folder(settings.report_dir / test.name)  # before any image is encoded
        whitening = (
            main_first(world, lambda: _planned_whitening(database, settings, published=teacher is None))
            if settings.whitening
            else None
        )
        key = DescriptorKey.of(database.net, settings.image_size, settings.scales, extraction, database.fingerprint)
        distractors = {}
        for suffix, images in lists.items():  # one store per network and settings, shared by the test sets
            name = lookup(DISTRACTOR_SETS, suffix, "distractor set").folder
            store = StoreKey(key, database.name, settings.distractor_dtype, settings.shard_size)
            tag = f"imsize{settings.image_size}_{settings.distractor_dtype}_{store.tag()}"
            folder = root.subdir("features") / "distractors" / f"{name}_{database.fingerprint}_{tag}"
            # each process encodes its own shards
            shards = extraction.but(progress=progress and current_world().is_main, desc=f"{name} shard")
            distractors[suffix] = PlannedDistractors(name, images, folder, store, shards)
        return cls(
            student,
            teacher,
            tuple(sets),
            settings,
            key,
            # a network in memory alone is found by no later test: nothing cached for it
            root.subdir("features") / "cache" if settings.cache and database.spec.source is not Source.MEMORY else None,
            distractors,
            whitening,
        )


def _read_sets(settings: TestSettings, test_root: Path, progress: bool) -> List[PlannedSet]:
    """The test sets of ``settings``, prepared when missing and read."""
    sets = []
    for name in settings.datasets:
        dataset, suffix = split_test_name(name)
        cfg = read_test_set(dataset, test_root, progress=progress)
        listing = Path(settings.skipped_dir or cfg["dir_data"]) / f"skipped_{dataset}.txt"
        images, queries, bbxs = query_and_database_paths(cfg)
        if not settings.extraction.skip_bad:  # before any set, or the whitening, is encoded
            check_images_exist([*queries, *images], dataset)
        sets.append(PlannedSet(name, cfg, images, queries, bbxs, suffix, listing))
    return sets


def _planned_whitening(encoder: LoadedNetwork, settings: TestSettings, published: bool) -> PlannedWhitening:
    """Where the whitening of ``settings`` comes from; the whitening set read unless it is known."""
    request = settings.whitening_request()
    known = known_whitening(encoder, request, published)
    train_root = cast(DataRoot, settings.data_root).subdir("train")
    return PlannedWhitening(
        request, known, read_whitening_db(request.whitening_set, train_root) if known is None else None
    )


def _check_networks(student: LoadedNetwork, settings: TestSettings, teacher: Optional[LoadedNetwork]) -> None:
    """Refuse a ranking report with distractors, and networks of other dimensions."""
    with_distractors = [name for name in settings.datasets if split_test_name(name)[1] is not None]
    if with_distractors and settings.report_dir is not None:
        raise ConfigError(
            f"--report draws full rankings, which a distractor set makes too long "
            f"({with_distractors[0]}); run --report without the '+' suffix"
        )
    if teacher is not None and teacher.net.meta["outputdim"] != student.net.meta["outputdim"]:
        raise ConfigError(
            f"asymmetric test needs equal dimensions: student {student.name} is "
            f"{student.net.meta['outputdim']}-d, teacher {teacher.name} "
            f"{teacher.net.meta['outputdim']}-d"
        )
