"""The end-to-end demo on the synthetic landmarks (``make demo``).

1. generate synth-sfm, synth-oxford and synth-paris (if missing);
2. fine-tune one EfficientNet-Lite2 GeM teacher from its ImageNet weights in ``std`` mode
   (the paper's students all learn from one published teacher; trained once, then reused);
3. per seed, fine-tune MobileNetV2 students from the original's ImageNet weights
   (torchvision's IMAGENET1K_V1) against it in ``reg``, ``ts_self`` (Contr+) and ``ts`` mode
   (and, on request, in ``reg`` mode with the losses of later papers: csd, bct, hvs, lce);
4. test the teacher (symmetric), the untrained and the ImageNet-only student (asymmetric:
   teacher database, student queries) and the trained students (symmetric and asymmetric);
   print one table (mean ± std over the seeds) and whether the paper's two findings hold on it.

The ImageNet weights are found offline (``aml.networks.imagenet``: the pip packages of
``requirements-data.txt``). ``--teacher-trunk synthetic`` starts the teacher from a trunk
pretrained on synthetic objects instead, for architectures without offline weights.
"""

import argparse
import dataclasses
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, TypedDict


from aml.cli.arguments import Parser, folder, nonnegative_int, output_file_of, positive_int
from aml.data.download import file_sha256
from aml.data.paths import below_common_folder, data_subdir, resolve_data_root
from aml.data.synthetic import generate_all
from aml.data.testsets import read_test_set
from aml.data.trainsets import load_training_db
from aml.demo.findings import findings_lines, paper_findings
from aml.demo.tables import DATASETS, format_table, write_results
from aml.descriptors import ExtractionConfig
from aml.descriptors.key import images_digest_as_listed
from aml.evaluation.plan import TestSettings
from aml.evaluation.testing import evaluate
from aml.networks import build_network, get_backbone
from aml.networks.checkpoint import checkpoint_state, load_checkpoint, save_checkpoint
from aml.networks.imagenet import find_weights
from aml.networks.loading import load_named_or_file
from aml.reports.provenance import provenance
from aml.training import TrainConfig, run
from aml.training.config import run_name
from aml.training.run_folder import earlier_checkpoint
from aml.utils.atomic import atomic_write, folder_lock
from aml.utils.bounds import SEED
from aml.utils.devices import resolve_device
from aml.training.pretraining import PretrainConfig, ensure_synthetic_trunk
from aml.utils.errors import ConfigError
from aml.utils.seeding import global_seed

log = logging.getLogger(__name__)


class RunOptions(TypedDict, total=False):
    """The main.py flags (by name, `TrainConfig.from_flags`) a demo run sets: the budget's
    and a role's (`TEACHER_OPTIONS`, `STUDENT_OPTIONS`)."""

    image_size: int
    query_size: int
    pool_size: int
    neg_num: int
    workers: int
    quiet: bool
    mode: str
    loss: str
    loss_margin: float
    batch_size: int
    lr: float
    proj_lr_mult: float
    batch_forward: bool


@dataclass(frozen=True)
class DemoBudget:
    """How much the demo trains and tests: image size, epochs, tuples and images per epoch."""

    image_size: int = 96
    teacher_epochs: int = 2
    student_epochs: int = 2
    query_size: int = 360  # tuples per epoch (-qs) of the teacher and the ts/ts_self students
    pool_size: int = 800  # negative pool, and the reg students' images per epoch (-ps)
    workers: int = 0
    quiet: bool = False

    def options(self) -> RunOptions:
        """The training options (main.py's flags, `TrainConfig.from_flags`) every demo run shares."""
        return {
            "image_size": self.image_size,
            "query_size": self.query_size,
            "pool_size": self.pool_size,
            "neg_num": 3,
            "workers": self.workers,
            "quiet": self.quiet,
        }


def _train(
    directory: Path,
    data_root: Path,
    arch: str,
    epochs: int,
    options: RunOptions,
    seed: int,
    teacher: Optional[Path] = None,
    trunk: Optional[Path] = None,
    reuse: bool = False,
) -> Path:
    """One training run (`aml.training.run`; ``options`` are main.py's flags by name, the mode
    among them); the last epoch's checkpoint. With ``reuse``, a run that already holds that
    checkpoint is resumed from it (so nothing is trained again); without, an earlier demo's run
    of the same settings is deleted first and trained again."""
    config = TrainConfig.from_flags(
        directory=str(directory),
        data_root=str(data_root),
        training_dataset="synth-sfm",
        arch=arch,
        epochs=epochs,
        val=False,
        print_freq=1000,
        seed=seed,
        **options,
    )
    config = config.but(teacher=str(teacher)) if teacher is not None else config
    config = config.but(trunk_weights=str(trunk)) if trunk is not None else config
    config = config.but(comment=_settings_comment(epochs, teacher))  # runs of other settings stay
    if reuse:  # only a run of these epochs on these very images is reused
        config = config.but(comment=f"{config.comment}_{_training_images_digest(data_root)}")
        done = Path(directory) / run_name(config) / f"model_epoch{epochs}.pth.tar"
        if done.is_file():  # said as reused, not as a run with nothing left to train (and a flag the demo lacks)
            log.info(">> %s: trained by an earlier demo on these images, reused", done)
            return done
        if earlier_checkpoint(Path(directory) / run_name(config)) is not None:
            config = config.but(resume="latest")  # an interrupted one's latest epoch
    else:  # the demo's own run of these settings is trained again (main.py refuses to replace a run)
        _remove_run(Path(directory) / run_name(config))
    return run(config).run_dir / f"model_epoch{epochs}.pth.tar"


def _remove_run(folder: Path) -> None:
    """Delete a run folder of the demo's, unless a run is training in it (another demo on the
    same data root): that one is refused in one line, not deleted under it."""
    if not folder.is_dir():
        return
    with folder_lock(folder, fix="wait for the other demo to end, or give the demo another --data-root"):
        shutil.rmtree(folder, ignore_errors=True)


def data_sizes(root: Path) -> Dict[str, str]:
    """The demo's data sets as they are on disk: training images per split, queries and
    database images per test set."""
    sizes = {
        "synth-sfm": ", ".join(
            f"{len(load_training_db('synth-sfm', split, root)['images'])} {split}" for split in ("train", "val")
        )
    }
    for name in DATASETS:
        cfg = read_test_set(name, data_subdir(root, "test"))
        sizes[name] = f"{cfg['nq']} queries, {cfg['n']} database images"
    return sizes


def _training_images_digest(root: Path) -> str:
    """8 hex digits of synth-sfm's images as they are now (names below the set's folder, sizes,
    times): a teacher run is reused only while they are the ones it was trained on (generated
    again, they differ; the data root moved, they do not)."""
    images = [image for split in ("train", "val") for image in load_training_db("synth-sfm", split, root)["images"]]
    return images_digest_as_listed(images, below_common_folder(images))[:8]


def _settings_comment(epochs: int, teacher: Optional[Path]) -> str:
    """What a student's run folder name lacks to be the demo's run of these settings alone: its
    epochs and its teacher's weights (the teacher's file is model_epochN of any teacher run)."""
    return f"_e{epochs}" + (f"_{file_sha256(teacher)[:8]}" if teacher is not None else "")


def _test(network: Path, data_root: Path, budget: DemoBudget, teacher: Optional[Path] = None) -> Dict:
    """test.py's evaluation through the package (its lines are logged, not printed)."""
    extraction = ExtractionConfig(workers=budget.workers, device=str(resolve_device("auto")), progress=not budget.quiet)
    settings = TestSettings(
        datasets=tuple(DATASETS), image_size=budget.image_size, extraction=extraction, data_root=data_root
    )
    database = load_named_or_file(teacher) if teacher is not None else None
    return {name: result.record() for name, result in evaluate(load_named_or_file(network), settings, database).items()}


# Per-role training options, both in the paper's setting: ImageNet trunks, frozen BatchNorm,
# Adam (batch_forward: a mini-batch in one forward per image shape, the same result, faster).
# The demo's budget (2 epochs of 360-800 student images at 96 px, against the paper's 100
# of 2,000 at up to 1024 px) forces two choices (docs/demo.md): the students' trunk
# learns at lr 1e-4 (at 1e-3 it collapses to one descriptor) while their random 1x1
# projection to the teacher's space learns 30 times faster (--proj-lr-mult 30; at the trunk's
# rate it does not reach that space in time); contrastive students use margin 0.5.
# The ts and ts_self students see -qs 360 tuples per epoch; the reg students regress the
# teacher's descriptors of the -ps 800 pool images per epoch (with 360 they end well short).
# A student recipe is named by its row in the table and holds its mode and, for the losses of
# later papers (docs/training.md), its loss: they train in mode reg on the same -ps 800 images.
TEACHER_OPTIONS: RunOptions = {"mode": "std", "batch_size": 8, "lr": 5e-4, "batch_forward": True}
_STUDENT: RunOptions = {"batch_size": 16, "lr": 1e-4, "proj_lr_mult": 30.0, "batch_forward": True}
STUDENT_OPTIONS: Dict[str, RunOptions] = {
    "reg": {**_STUDENT, "mode": "reg"},
    "ts_self": {**_STUDENT, "mode": "ts_self", "loss_margin": 0.5},
    "ts": {**_STUDENT, "mode": "ts", "loss_margin": 0.5},
    **{loss: {**_STUDENT, "mode": "reg", "loss": loss} for loss in ("csd", "bct", "hvs", "lce")},
}
DEFAULT_STUDENTS = ("reg", "ts_self", "ts")  # AML's modes: the paper's findings
TEACHER_TRUNKS = ("imagenet", "synthetic")


def _initial_student(runs: Path, arch: str, teacher_dim: int, seed: int, imagenet: bool, data_root: Path) -> Path:
    """A student before any retrieval training: random weights, or the ImageNet trunk with a
    random projection (where every trained student starts)."""
    with global_seed(seed):
        net = build_network(arch, pretrained=imagenet, teacher_dim=teacher_dim, data_root=str(data_root))
    label = "imagenet" if imagenet else "untrained"
    return save_checkpoint(checkpoint_state(net, 0, 0.0), runs / f"{label}-{arch}-{teacher_dim}-seed{seed}.pth.tar")


def train_teacher(root: Path, arch: str, budget: DemoBudget, seed: int, trunk: Optional[Path] = None) -> Path:
    """The demo's teacher: ``std`` mode from ``trunk`` (None: ImageNet); one trained by an
    earlier run with the same settings (its epochs among them) on the same images is reused."""
    return _train(
        root / "demo" / "runs",
        root,
        arch,
        budget.teacher_epochs,
        {**budget.options(), **TEACHER_OPTIONS},
        seed,
        trunk=trunk,
        reuse=True,
    )


def student_rows(
    root: Path, seed: int, teacher: Path, student_arch: str, budget: DemoBudget, student_modes: Sequence[str]
) -> List[Dict]:
    """Train the students of one seed from ImageNet against ``teacher`` and test them, with
    the untrained and the ImageNet-only student; the table rows. ``student_modes`` names
    recipes of `STUDENT_OPTIONS` (a mode, or a loss of a later paper)."""
    runs = root / "demo" / "runs"
    teacher_dim = int(load_checkpoint(teacher)["meta"]["outputdim"])
    untrained = _initial_student(runs, student_arch, teacher_dim, seed, False, root)
    imagenet = _initial_student(runs, student_arch, teacher_dim, seed, True, root)
    students = {
        name: _train(
            runs,
            root,
            student_arch,
            budget.student_epochs,
            {**budget.options(), **STUDENT_OPTIONS[name]},
            seed,
            teacher,
        )
        for name in student_modes
    }

    def row(name: str, network: Path, asymmetric: bool) -> Dict:
        results = _test(network, root, budget, teacher if asymmetric else None)
        return {
            "network": f"student {student_arch} {name}",
            "test": "asymmetric" if asymmetric else "symmetric",
            "results": results,
        }

    rows = [row("untrained", untrained, True), row("ImageNet only", imagenet, True)]
    for mode, path in students.items():
        rows += [row(f"({mode})", path, False), row(f"({mode})", path, True)]
    return rows


def _rows_over_seeds(teacher_row: Dict, per_seed: List[List[Dict]]) -> List[Dict]:
    """The teacher's row, then each student row with its results of every seed."""
    return [teacher_row] + [
        {"network": first["network"], "test": first["test"], "results": [of_seed[i]["results"] for of_seed in per_seed]}
        for i, first in enumerate(per_seed[0])
    ]


def _table_lines(rows: List[Dict], teacher_row: Dict, per_seed: List[List[Dict]], seeds: Sequence[int]) -> List[str]:
    """Each seed's table (with several seeds), then the table of ``rows``."""
    lines = []
    if len(seeds) > 1:
        for seed, rows_of_seed in zip(seeds, per_seed, strict=True):
            lines.append(f"\nseed {seed}\n" + format_table([teacher_row] + rows_of_seed))
        lines.append(f"\nmean ± std over seeds {', '.join(map(str, seeds))} (one teacher, seed {seeds[0]})")
    return lines + ["\n" + format_table(rows)]


def run_demo(
    data_root: Optional[str] = None,
    student_arch: str = "mobilenet_v2",
    teacher_arch: str = "efficientnet_lite2",
    budget: DemoBudget = DemoBudget(),
    student_modes: Sequence[str] = DEFAULT_STUDENTS,
    seeds: Sequence[int] = (0, 1, 2),
    teacher_trunk: str = "imagenet",
    pretraining: PretrainConfig = PretrainConfig(),
    report: Callable[[str], None] = log.info,
) -> List[Dict]:
    """Run the demo; returns the table rows (network, test, results: one test.py result per
    seed; the teacher's row has one, for the one teacher trained with the first seed).

    Students start from their ImageNet weights; the teacher too, or (``teacher_trunk``
    "synthetic") from a trunk pretrained on synthetic objects with ``pretraining`` (once;
    cached in <data_root>/networks/). A teacher trained by an earlier run with the same
    settings is reused. The data's sizes, the tables, the findings and where the results
    went are given to ``report`` (the log; ``python -m aml.demo`` prints them)."""
    if teacher_trunk not in TEACHER_TRUNKS:
        raise ConfigError(f"teacher_trunk must be one of {TEACHER_TRUNKS}, not {teacher_trunk!r}")
    root = resolve_data_root(data_root)
    start = time.time()
    quiet = budget.quiet
    generate_all(root, progress=not quiet)
    data = data_sizes(root)  # an earlier data root's sets are kept as they are, whatever their sizes: said
    report(">> data: " + "; ".join(f"{name} {sizes}" for name, sizes in data.items()))
    seconds = {"data": time.time() - start}
    trunk = (
        ensure_synthetic_trunk(teacher_arch, str(root), pretraining, progress=not quiet)
        if teacher_trunk == "synthetic"
        else None
    )
    teacher = train_teacher(root, teacher_arch, budget, seeds[0], trunk)
    teacher_row = {  # a teacher from another trunk than the students' is named so (no finding compares them)
        "network": f"teacher {teacher_arch} (std)" + (", synthetic trunk" if teacher_trunk == "synthetic" else ""),
        "test": "symmetric",
        "results": [_test(teacher, root, budget)],
    }
    seconds["teacher"] = time.time() - start - seconds["data"]
    per_seed = [student_rows(root, seed, teacher, student_arch, budget, student_modes) for seed in seeds]
    rows = _rows_over_seeds(teacher_row, per_seed)
    for table in _table_lines(rows, teacher_row, per_seed, seeds):
        report(table)
    notes = [f"one teacher (seed {seeds[0]}); the spread is over the students' seeds"] * (len(seeds) > 1)
    notes += ["the teacher starts from a synthetic trunk, the students from ImageNet: no finding compares them"] * (
        teacher_trunk == "synthetic"
    )
    notes += findings_lines(paper_findings(rows, student_arch, teacher_arch))
    report("".join(f"\n{line}" for line in notes))
    seconds["students"] = time.time() - start - seconds["data"] - seconds["teacher"]
    seconds["total"] = time.time() - start
    settings = {
        "data": data,
        "student_arch": student_arch,
        "teacher_arch": teacher_arch,
        "teacher_trunk": teacher_trunk,
        **dataclasses.asdict(budget),
        "teacher_options": TEACHER_OPTIONS,
        "student_options": {m: STUDENT_OPTIONS[m] for m in student_modes},
    }
    made_on = provenance(device=resolve_device("auto"))  # where the demo trains and tests
    record = {"seconds": {k: round(v, 1) for k, v in seconds.items()}, "provenance": made_on, "settings": settings}
    written = write_results(rows, root / "demo", list(seeds), notes, record)
    report(
        f"\n>> demo finished in {time.time() - start:.0f} s; runs in {root / 'demo' / 'runs'}; table in {written} "
        f"and chart in {written.with_suffix('.png')}"
    )
    return rows


def build_parser() -> Parser:
    """The flags of ``python -m aml.demo``."""
    parser = Parser(prog="python -m aml.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-root",
        default=None,
        type=folder,
        help="where the data sets, the networks and demo/ (runs, table, chart) go (default: $AML_DATA_ROOT or ./data)",
    )
    _add_network_arguments(parser)
    _add_training_arguments(parser)
    _add_output_arguments(parser)
    return parser


def _add_network_arguments(parser: argparse.ArgumentParser) -> None:
    """The teacher's and the students' networks, and the students' recipes."""
    group = parser.add_argument_group("networks")
    group.add_argument("--student-arch", default="mobilenet_v2", help="the students' architecture, a main.py -a name")
    group.add_argument(
        "--teacher-arch",
        default="efficientnet_lite2",
        help="the teacher's architecture, a main.py -a name, e.g. timm:convnext_atto or "
        "timm:vit_small_patch14_dinov2 (its weights in <data_root>/networks or $AML_WEIGHTS_PATH, "
        "or --teacher-trunk synthetic)",
    )
    group.add_argument(
        "--teacher-trunk",
        default="imagenet",
        choices=TEACHER_TRUNKS,
        help="the teacher's starting weights: its ImageNet weights (found offline) or a trunk "
        "pretrained once on synthetic objects (default: imagenet)",
    )
    group.add_argument(
        "--student-modes",
        default=",".join(DEFAULT_STUDENTS),
        help=f"comma separated student recipes, among {', '.join(STUDENT_OPTIONS)}: AML's modes, "
        f"and losses of later papers trained in mode reg (default: {','.join(DEFAULT_STUDENTS)})",
    )


def _add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """How long and on what the networks train."""
    group = parser.add_argument_group("training")
    group.add_argument(
        "--image-size", type=positive_int, default=96, help="the longer side of training and test images"
    )
    group.add_argument("--teacher-epochs", type=positive_int, default=2, help="the teacher's epochs")
    group.add_argument("--student-epochs", type=positive_int, default=2, help="each student's epochs")
    group.add_argument(
        "--query-size",
        type=positive_int,
        default=360,
        help="tuples per epoch (main.py -qs) of the teacher and the ts/ts_self students (default: 360)",
    )
    group.add_argument(
        "--pool-size",
        type=positive_int,
        default=800,
        help="negative pool per epoch, and the reg students' images per epoch (main.py -ps; default: 800)",
    )
    group.add_argument(
        "--workers",
        type=nonnegative_int,
        default=0,
        help="loader workers (default 0: on 2 cores, workers only take time from the network)",
    )


def _add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """The seeds the table averages over, and what the demo writes and shows."""
    group = parser.add_argument_group("seeds and output")
    group.add_argument(
        "--seed", type=nonnegative_int, default=0, help="seed of the teacher and of the first students (default: 0)"
    )
    group.add_argument(
        "--seeds",
        type=positive_int,
        default=3,
        help="students trained with seeds --seed, --seed + 1, ...; the table shows mean ± std (default: 3)",
    )
    group.add_argument(
        "--json",
        default=None,
        metavar="FILE",
        type=output_file_of("JSON"),
        help="also write results.json here (the docs read benchmarks/results/demo.json)",
    )
    group.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def main(argv: Optional[List[str]] = None) -> List[Dict]:
    """python -m aml.demo [--data-root DIR] [--student-arch ARCH] ..."""
    parser = build_parser()
    args = parser.parse_args(argv)
    modes = [m for m in args.student_modes.split(",") if m]
    unknown = sorted(set(modes) - set(STUDENT_OPTIONS))
    if unknown or not modes:
        parser.error(f"--student-modes: unknown {unknown}; choose among {sorted(STUDENT_OPTIONS)}")
    last_seed = args.seed + args.seeds - 1  # a seed past training's range failed after the data and the teacher
    if SEED.problem(last_seed):
        parser.error(
            f"--seed {args.seed} --seeds {args.seeds}: the last student's seed, {last_seed}, must be {SEED.what}"
        )
    for flag, arch in (("--teacher-arch", args.teacher_arch), ("--student-arch", args.student_arch)):
        try:  # before the synthetic data and the teacher's training: a student's arch was refused only after them
            get_backbone(arch)
        except ValueError as err:
            parser.error(f"{flag}: {err}")
    starting = [args.student_arch] + [args.teacher_arch] * (args.teacher_trunk == "imagenet")
    for arch in starting:  # found (or downloaded) now: a missing file ended the demo after the data and the teacher
        find_weights(arch, resolve_data_root(args.data_root))
    logging.getLogger("aml").setLevel(logging.WARNING)
    budget = DemoBudget(
        args.image_size,
        args.teacher_epochs,
        args.student_epochs,
        args.query_size,
        args.pool_size,
        args.workers,
        args.quiet,
    )
    rows = run_demo(
        args.data_root,
        args.student_arch,
        args.teacher_arch,
        budget,
        modes,
        seeds=range(args.seed, args.seed + args.seeds),
        teacher_trunk=args.teacher_trunk,
        report=print,
    )
    if args.json:
        written = (resolve_data_root(args.data_root) / "demo" / "results.json").read_bytes()
        atomic_write(Path(args.json), lambda out: out.write(written))
        print(f">> results also in {args.json}")
    return rows
