"""The end-to-end demo on the synthetic landmarks (``make demo``).

1. generate synth-sfm, synth-oxford and synth-paris (if missing);
2. train a ResNet-18 GeM teacher from scratch in ``std`` mode;
3. train MobileNetV2 students from scratch against it in ``reg``, ``ts_self`` (Contr+) and
   ``ts`` mode (the teacher's descriptors of the training set are extracted and cached
   automatically);
4. test the teacher (symmetric), an untrained student and the trained students (symmetric
   and asymmetric: teacher database, student queries) and print one table; with
   ``--seeds N`` all of it N times (seeds --seed, --seed + 1, ...), then mean ± std.
"""

import logging
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from aml.cli import train as train_cli
from aml.cli.arguments import Parser, folder, nonnegative_int, positive_int, resolve_device
from aml.data.paths import resolve_data_root
from aml.data.synthetic import generate_all
from aml.networks import build_network
from aml.evaluation.testing import TestSettings, evaluate
from aml.evaluation.whitening_store import Encoder
from aml.networks.checkpoint import checkpoint_state, load_checkpoint, load_network, save_checkpoint
from aml.reports.charts import bar_chart
from aml.utils.atomic import atomic_write

log = logging.getLogger(__name__)

DATASETS = ("synth-oxford", "synth-paris")


def _train(directory: Path, data_root: Path, arch: str, mode: str, epochs: int, options: Sequence[str],
           seed: int, teacher: Optional[Path] = None) -> Path:
    argv = ["--directory", str(directory), "--data-root", str(data_root), "-d", "synth-sfm", "-a", arch,
            "--not-pretrained", "-m", mode, "--epochs", str(epochs), "--no-val", "--print-freq", "1000",
            "--seed", str(seed), *options]
    if teacher is not None:
        argv += ["--teacher", str(teacher)]
    return train_cli.main(argv)["run_dir"] / f"model_epoch{epochs}.pth.tar"


def _test(network: Path, data_root: Path, image_size: int, workers: int, teacher: Optional[Path] = None,
          quiet: bool = False) -> Dict:
    """test.py's evaluation through the package (its lines are logged, not printed)."""
    settings = TestSettings(datasets=DATASETS, image_size=image_size, workers=workers,
                            device=str(resolve_device("auto")), data_root=str(data_root), progress=not quiet)
    student = Encoder(load_network(network), network.name.split(".pth")[0], network)
    database = Encoder(load_network(teacher), teacher.name.split(".pth")[0], teacher) if teacher is not None else None
    return evaluate(student, settings, database)


def _cell(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"


def format_table(rows: List[Dict]) -> str:
    """One line per (network, test): mAP Medium / Hard on each synthetic test set. A row's
    ``results`` is one test.py result, or a list of them (one per seed): then the cells
    show mean ± standard deviation over the seeds."""
    width = 15
    runs = [row["results"] if isinstance(row["results"], list) else [row["results"]] for row in rows]
    if any(len(r) > 1 for r in runs):
        width = 16
    header = f"{'network':34s} {'test':11s}" + "".join(f" {d + ' M':>{width}s} {d + ' H':>{width}s}" for d in DATASETS)
    lines = [header, "-" * len(header)]
    for row, results in zip(rows, runs):
        cells = "".join(f" {_cell([100 * r[d]['plain'][level]['map'] for r in results]):>{width}s}"
                        for d in DATASETS for level in ("medium", "hard"))
        lines.append(f"{row['network']:34s} {row['test']:11s}{cells}")
    return "\n".join(lines)


def _series(rows: List[Dict]) -> Dict[str, tuple]:
    """{'<dataset> M'/'H': (means, standard deviations over seeds)} per row, in percent."""
    series = {}
    for d in DATASETS:
        for level in ("medium", "hard"):
            values = [[100 * r[d]["plain"][level]["map"] for r in _runs(row)] for row in rows]
            series[f"{d} {level[0].upper()}"] = ([float(np.mean(v)) for v in values],
                                                  [float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for v in values])
    return series


def _runs(row: Dict) -> List[Dict]:
    return row["results"] if isinstance(row["results"], list) else [row["results"]]


def markdown_table(rows: List[Dict]) -> str:
    """The table of :func:`format_table` as Markdown (mAP in %, mean ± std over seeds)."""
    header = "| network | test | " + " | ".join(f"{d} {lv}" for d in DATASETS for lv in ("M", "H")) + " |"
    lines = [header, "|" + "---|" * (2 + 2 * len(DATASETS))]
    for row in rows:
        cells = [_cell([100 * r[d]["plain"][level]["map"] for r in _runs(row)])
                 for d in DATASETS for level in ("medium", "hard")]
        lines.append(f"| {row['network']} | {row['test']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(rows: List[Dict], folder: Path, seeds: Sequence[int]) -> Path:
    """``results.md`` (the table) and ``results.png`` (a bar chart, when matplotlib is
    installed) in ``folder``; returns the Markdown path."""
    folder.mkdir(parents=True, exist_ok=True)
    spread = f"mean ± std over seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else f"seed {seeds[0]}"
    text = (f"# aml demo results\n\nmAP (%) on the synthetic test sets, Medium (M) and Hard (H); {spread}.\n\n"
            + markdown_table(rows) + "\n")
    atomic_write(folder / "results.md", lambda out: out.write(text.encode()))
    groups = [f"{row['network'].replace('student ', '').replace(' (', chr(10) + '(')}\n{row['test']}" for row in rows]
    if not bar_chart(groups, _series(rows), folder / "results.png", title=f"aml demo ({spread})"):
        log.warning(">> results.png not drawn: matplotlib is not installed (pip install matplotlib)")
    return folder / "results.md"


# Per-role main.py options. Every network is trained from scratch, so BatchNorm learns batch
# statistics (--train-batchnorm): a random MobileNetV2 with frozen BatchNorm does not train.
# At lr 3e-3 Adam kills a fifth of the students' projection channels in the first steps, so
# the projection learns at a tenth of it (--proj-lr-mult 0.1). The contrastive margin is
# lowered to the small teacher's geometry: its training positives lie at a median distance
# of about 0.38 and its hardest negatives at about 0.25, so with the default 0.7 a student
# that maps everything to one point has a lower loss than one that copies the teacher.
TEACHER_OPTIONS = ["-b", "8", "--lr", "1e-3"]
_STUDENT = ["-b", "16", "--lr", "3e-3", "--proj-lr-mult", "0.1"]
STUDENT_OPTIONS: Dict[str, List[str]] = {"reg": _STUDENT, "ts_self": _STUDENT + ["-lm", "0.3"],
                                         "ts": _STUDENT + ["-lm", "0.3"]}


def run_seed(root: Path, seed: int, student_arch: str, teacher_arch: str, image_size: int, teacher_epochs: int,
             student_epochs: int, query_size: int, pool_size: int, workers: int,
             student_modes: Sequence[str], quiet: bool = False) -> List[Dict]:
    """Train the teacher and the students with one seed and test them; the table rows."""
    runs = root / "demo" / "runs"
    common = ["--image-size", str(image_size), "-qs", str(query_size), "-ps", str(pool_size), "-nn", "3",
              "-j", str(workers), "--train-batchnorm"] + ["-q"] * quiet
    teacher = _train(runs, root, teacher_arch, "std", teacher_epochs, common + TEACHER_OPTIONS, seed)
    teacher_dim = int(load_checkpoint(teacher)["meta"]["outputdim"])
    torch.manual_seed(seed)
    untrained = save_checkpoint(checkpoint_state(build_network(student_arch, pretrained=False, teacher_dim=teacher_dim),
                                                 0, 0.0), runs / f"untrained-{student_arch}-{teacher_dim}-seed{seed}.pth.tar")
    students = {mode: _train(runs, root, student_arch, mode, student_epochs, common + STUDENT_OPTIONS[mode], seed,
                             teacher) for mode in student_modes}
    rows = [{"network": f"teacher {teacher_arch} (std)", "test": "symmetric",
             "results": _test(teacher, root, image_size, workers, quiet=quiet)},
            {"network": f"student {student_arch} untrained", "test": "asymmetric",
             "results": _test(untrained, root, image_size, workers, teacher, quiet=quiet)}]
    for mode, path in students.items():
        rows.append({"network": f"student {student_arch} ({mode})", "test": "symmetric",
                     "results": _test(path, root, image_size, workers, quiet=quiet)})
        rows.append({"network": f"student {student_arch} ({mode})", "test": "asymmetric",
                     "results": _test(path, root, image_size, workers, teacher, quiet=quiet)})
    return rows


def run_demo(data_root: Optional[str] = None, student_arch: str = "mobilenet_v2", teacher_arch: str = "resnet18",
             image_size: int = 96, teacher_epochs: int = 2, student_epochs: int = 12, query_size: int = 360,
             pool_size: int = 800, workers: int = 2, student_modes: Sequence[str] = tuple(STUDENT_OPTIONS),
             seeds: Sequence[int] = (0,), quiet: bool = False) -> List[Dict]:
    """Run the demo for each seed; returns the table rows (network, test, results: one
    test.py result per seed)."""
    root = resolve_data_root(data_root)
    start = time.time()
    generate_all(root, progress=not quiet)
    per_seed = [run_seed(root, seed, student_arch, teacher_arch, image_size, teacher_epochs, student_epochs,
                         query_size, pool_size, workers, student_modes, quiet) for seed in seeds]
    rows = [{"network": first["network"], "test": first["test"], "results": [run[i]["results"] for run in per_seed]}
            for i, first in enumerate(per_seed[0])]
    if len(seeds) > 1:
        for seed, run in zip(seeds, per_seed):
            print(f"\nseed {seed}\n" + format_table(run))
        print(f"\nmean ± std over seeds {', '.join(map(str, seeds))}")
    print("\n" + format_table(rows))
    written = write_results(rows, root / "demo", list(seeds))
    print(f"\n>> demo finished in {time.time() - start:.0f} s; runs in {root / 'demo' / 'runs'}; table in {written} "
          f"and chart in {written.with_suffix('.png')}")
    return rows


def main(argv: Optional[List[str]] = None) -> List[Dict]:
    """python -m aml.demo [--data-root DIR] [--student-arch ARCH] ..."""
    parser = Parser(prog="python -m aml.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default=None, type=folder)
    parser.add_argument("--student-arch", default="mobilenet_v2")
    parser.add_argument("--teacher-arch", default="resnet18")
    parser.add_argument("--image-size", type=positive_int, default=96)
    parser.add_argument("--teacher-epochs", type=positive_int, default=2)
    parser.add_argument("--student-epochs", type=positive_int, default=12)
    parser.add_argument("--workers", type=nonnegative_int, default=2)
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    parser.add_argument("--student-modes", default=",".join(STUDENT_OPTIONS),
                        help=f"comma separated, among {', '.join(STUDENT_OPTIONS)} (default: all)")
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the first run (default: 0)")
    parser.add_argument("--seeds", type=positive_int, default=1,
                        help="runs with seeds --seed, --seed + 1, ...; the table shows mean ± std (default: 1)")
    args = parser.parse_args(argv)
    modes = [m for m in args.student_modes.split(",") if m]
    unknown = sorted(set(modes) - set(STUDENT_OPTIONS))
    if unknown or not modes:
        parser.error(f"--student-modes: unknown {unknown}; choose among {sorted(STUDENT_OPTIONS)}")
    logging.getLogger("aml").setLevel(logging.WARNING)
    return run_demo(args.data_root, args.student_arch, args.teacher_arch, args.image_size, args.teacher_epochs,
                    args.student_epochs, workers=args.workers, student_modes=modes, quiet=args.quiet,
                    seeds=range(args.seed, args.seed + args.seeds))


if __name__ == "__main__":
    main()
