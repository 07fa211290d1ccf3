"""Training curves: ``history.json`` (one record per epoch) and ``curves.png`` in a run
folder, rewritten after every epoch."""

import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, TypedDict, cast

from aml.data.testsets import REPORTED_LEVELS
from aml.utils.atomic import atomic_write
from aml.utils.text_files import strict_json

log = logging.getLogger(__name__)

#: an epoch's ``--test-freq`` results: {test kind: {dataset: its entry of test.py's results file}}
TestRecords = Dict[str, Dict[str, Dict[str, Any]]]
#: the same in ``history.json``: {test kind: {dataset: {'medium': mAP, 'hard': mAP} or {'map': mAP}}}
TestSummary = Dict[str, Dict[str, Dict[str, float]]]
#: how a curve's label names its level: the classic protocol's mAP ('map') is no Medium one
LEVEL_MARKS = {"easy": " E", "medium": " M", "hard": " H", "map": ""}


class EpochRecord(TypedDict):
    """The numbers of one trained epoch: its number (1-based), mean training and validation
    loss (None: not validated), learning rate and the seconds of its mining and training."""

    epoch: int
    train_loss: float
    val_loss: Optional[float]
    lr: float
    seconds: float


class TestedEpoch(EpochRecord, total=False):
    """An epoch as the trainer returns it, with its test results when it was tested."""

    test: TestRecords


class HistoryEpoch(EpochRecord, total=False):
    """An epoch as ``history.json`` holds it, with its test mAPs when it was tested."""

    test: TestSummary


def summarize_test(results: TestRecords) -> TestSummary:
    """{test kind: {dataset: {'medium': mAP, 'hard': mAP}}} (or {'map': mAP} for the classic
    protocol) from the trainer's ``--test-freq`` results, without the per-query lists: the plain
    search under the data set's name, each other one (``--test-whiten``'s) under
    ``'<dataset> + <its steps>'``."""
    summary: TestSummary = {}
    for kind, per_dataset in results.items():
        summary[kind] = {}
        for dataset, entry in per_dataset.items():
            for search, metrics in entry.items():
                if not isinstance(metrics, dict) or not ({"map", "medium"} & set(metrics)):
                    continue  # not a search: skipped images, distractors, a report
                name = dataset if search == "plain" else f"{dataset} + {search}"
                summary[kind][name] = (
                    {"map": metrics["map"]}
                    if "map" in metrics
                    else {level: metrics[level]["map"] for level in REPORTED_LEVELS}
                )
    return summary


def _matplotlib_figure():
    """A figure class and canvas without pyplot's global state, or None when absent."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return None
    return Figure, FigureCanvasAgg, MaxNLocator


def figure_classes_for(path: Path) -> Optional[Tuple[type, type, type]]:
    """matplotlib's figure classes to draw ``path`` with; None when matplotlib is not installed,
    after removing an earlier drawing at ``path``, which would stand beside newer numbers.

    Args:
        path: the PNG to draw.

    Returns:
        ``(Figure, FigureCanvasAgg, MaxNLocator)``, or None.
    """
    classes = _matplotlib_figure()
    if classes is None:
        path.unlink(missing_ok=True)
    return classes


def plot_history(records: List[HistoryEpoch], path: Path) -> bool:
    """Loss, learning rate and (when tested) mAP against the epoch as one PNG; False when
    matplotlib is not installed (an earlier PNG at ``path`` removed)."""
    classes = figure_classes_for(path)
    if classes is None:
        return False
    Figure, Canvas, MaxNLocator = classes
    tested = [r for r in records if r.get("test")]
    figure = Figure(figsize=(5 * (3 if tested else 2), 3.6), dpi=100)
    axes = figure.subplots(1, 3 if tested else 2)
    epochs = [r["epoch"] for r in records]
    axes[0].plot(epochs, [r["train_loss"] for r in records], "o-", label="train")
    val = [(r["epoch"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
    if val:
        axes[0].plot(*zip(*val, strict=True), "s-", label="val")
    axes[0].set(xlabel="epoch", ylabel="loss", title="loss")
    axes[0].legend()
    axes[1].plot(epochs, [r["lr"] for r in records], "o-")
    axes[1].set(xlabel="epoch", ylabel="learning rate", title="learning rate")
    axes[1].ticklabel_format(axis="y", style="sci", scilimits=(0, 0))  # lr decays by 1% an epoch: a linear axis
    if tested:
        for label, points in map_curves(tested).items():
            axes[2].plot(*zip(*points, strict=True), "o-", label=label)
        axes[2].set(xlabel="epoch", ylabel="mAP (%)", title="test mAP")
        axes[2].legend(fontsize=7)
    for axis in axes:
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.subplots_adjust(left=0.08, right=0.98, bottom=0.15, top=0.9, wspace=0.3)  # tight_layout: 3x the time
    Canvas(figure)
    atomic_write(path, lambda out: figure.savefig(out, format="png"))
    return True


def map_curves(tested: Sequence[HistoryEpoch]) -> Dict[str, List[Tuple[int, float]]]:
    """The test mAP curves of epoch records: label -> (epoch, mAP in %) of the epochs where it
    is defined, one curve per test kind, data set and level found in any epoch (a run resumed
    with other ``-td`` tested other sets before).

    Args:
        tested: the records that hold a ``test`` entry.

    Returns:
        The curves, by label (``roxford5k M (symm)``; a classic set's mAP has no level letter).

    Examples:
        >>> from aml.reports.curves import map_curves
        >>> map_curves([{"epoch": 1, "train_loss": 0.1, "lr": 0.1, "test": {"symmetric": {"oxford5k": {"map": 0.5}}}}])
        {'oxford5k (symm)': [(1, 50.0)]}
    """
    keys = dict.fromkeys(
        (kind, dataset, level)
        for r in tested
        for kind, sets in r["test"].items()
        for dataset, levels in sets.items()
        for level in levels
    )
    found: Dict[str, List[Tuple[int, float]]] = {}
    for kind, dataset, level in keys:
        points = [
            (r["epoch"], 100 * r["test"][kind][dataset][level])
            for r in tested
            if r["test"].get(kind, {}).get(dataset, {}).get(level) is not None  # null: undefined
        ]
        if points:
            found[f"{dataset}{LEVEL_MARKS.get(level, ' ' + level)} ({kind[:4]})"] = points
    return found


def _is_record(record: Any) -> bool:
    """Whether ``record`` is an epoch's record as `TrainingHistory` writes it: an object with an
    integer epoch, a number for its training loss and learning rate, a number or null for its
    validation loss, and its tests (if any) as {kind: {dataset: {level: number or null}}}."""

    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    def objects(value: Any, depth: int) -> bool:  # nested dicts of numbers or nulls at the bottom
        if depth == 0:
            return value is None or number(value)
        return isinstance(value, dict) and all(objects(inner, depth - 1) for inner in value.values())

    return (
        isinstance(record, dict)
        and type(record.get("epoch")) is int
        and number(record.get("train_loss"))
        and number(record.get("lr"))
        and (record.get("val_loss") is None or number(record["val_loss"]))
        and objects(record.get("test", {}), 3)
    )


HISTORY = "history.json"


class TrainingHistory:
    """``history.json`` and ``curves.png`` of a run folder; a resumed run keeps the records
    of the epochs it does not train again. ``enabled`` False (a rank other than 0 of a
    distributed run) keeps the records in memory and writes nothing."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.enabled = enabled
        self.json_path, self.png_path = Path(run_dir) / HISTORY, Path(run_dir) / "curves.png"
        self.records: List[HistoryEpoch] = []
        self._warned = False
        if self.json_path.is_file():
            try:
                records = json.loads(self.json_path.read_bytes())
            except ValueError:
                log.warning(">> %s is not valid JSON; starting a new history", self.json_path)
            else:
                if isinstance(records, list) and all(_is_record(r) for r in records):
                    self.records = records
                else:
                    log.warning(">> %s does not hold one record per epoch; starting a new history", self.json_path)

    def restart_at(self, epoch: int) -> None:
        """Drop the records of epochs after ``epoch`` (1-based; the resumed checkpoint's)."""
        self.records = [r for r in self.records if r["epoch"] <= epoch]
        self._write()

    def add(self, record: TestedEpoch) -> None:
        """Insert or replace the record of ``record['epoch']`` and rewrite both files."""
        entry = cast(HistoryEpoch, {k: v for k, v in record.items() if k != "test"})  # its keys as given
        if record.get("test"):
            entry["test"] = summarize_test(record["test"])
        self.records = [r for r in self.records if r["epoch"] != entry["epoch"]] + [entry]
        self.records.sort(key=lambda r: r["epoch"])
        self._write()

    def _write(self) -> None:
        if not self.enabled:
            return
        data = strict_json(self.records)
        atomic_write(self.json_path, lambda out: out.write(data))
        if not self.records:
            self.png_path.unlink(missing_ok=True)  # an earlier run's curves would stand beside this history
        elif not plot_history(self.records, self.png_path) and not self._warned:
            log.warning(">> curves.png not drawn: matplotlib is not installed (pip install matplotlib)")
            self._warned = True
