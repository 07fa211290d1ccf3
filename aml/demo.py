"""The end-to-end demo on the synthetic landmarks (``make demo``).

1. generate synth-sfm, synth-oxford and synth-paris (if missing);
2. train a ResNet-18 GeM teacher from scratch in ``std`` mode;
3. train MobileNetV2 students from scratch against it in ``reg``, ``ts_self`` (Contr+) and
   ``ts`` mode (the teacher's descriptors of the training set are extracted and cached
   automatically);
4. test the teacher (symmetric), an untrained student and the trained students (symmetric
   and asymmetric: teacher database, student queries) and print one table.
"""

import argparse
import logging
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from aml.cli import test as test_cli
from aml.cli import train as train_cli
from aml.data.paths import resolve_data_root
from aml.data.synthetic import generate_all
from aml.networks import build_network
from aml.networks.checkpoint import checkpoint_state, save_checkpoint

DATASETS = ("synth-oxford", "synth-paris")


def _train(directory: Path, data_root: Path, arch: str, mode: str, epochs: int, options: Sequence[str],
           teacher: Optional[Path] = None) -> Path:
    argv = ["--directory", str(directory), "--data-root", str(data_root), "-d", "synth-sfm", "-a", arch,
            "--not-pretrained", "-m", mode, "--epochs", str(epochs), "--no-val", "--print-freq", "1000", *options]
    if teacher is not None:
        argv += ["--teacher", str(teacher)]
    return train_cli.main(argv)["run_dir"] / f"model_epoch{epochs}.pth.tar"


def _test(network: Path, data_root: Path, image_size: int, workers: int, teacher: Optional[Path] = None) -> Dict:
    argv = ["-npath", str(network), "-d", ",".join(DATASETS), "-imsize", str(image_size), "-j", str(workers),
            "--data-root", str(data_root)]
    if teacher is not None:
        argv += ["--asym", "--teacher", str(teacher)]
    return test_cli.main(argv)


def format_table(rows: List[Dict]) -> str:
    """One line per (network, test): mAP Medium / Hard on each synthetic test set."""
    header = f"{'network':34s} {'test':11s}" + "".join(f" {d + ' M':>15s} {d + ' H':>15s}" for d in DATASETS)
    lines = [header, "-" * len(header)]
    for row in rows:
        cells = "".join(f" {100 * row['results'][d]['plain']['medium']['map']:15.2f}"
                        f" {100 * row['results'][d]['plain']['hard']['map']:15.2f}" for d in DATASETS)
        lines.append(f"{row['network']:34s} {row['test']:11s}{cells}")
    return "\n".join(lines)


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


def run_demo(data_root: Optional[str] = None, student_arch: str = "mobilenet_v2", teacher_arch: str = "resnet18",
             image_size: int = 96, teacher_epochs: int = 2, student_epochs: int = 12, query_size: int = 360,
             pool_size: int = 800, workers: int = 2, student_modes: Sequence[str] = tuple(STUDENT_OPTIONS)) -> List[Dict]:
    """Run the demo; returns the table rows (network, test, results)."""
    root = resolve_data_root(data_root)
    start = time.time()
    generate_all(root)
    runs = root / "demo" / "runs"
    common = ["--image-size", str(image_size), "-qs", str(query_size), "-ps", str(pool_size), "-nn", "3",
              "-j", str(workers), "--train-batchnorm"]
    teacher = _train(runs, root, teacher_arch, "std", teacher_epochs, common + TEACHER_OPTIONS)
    torch.manual_seed(1)
    untrained = save_checkpoint(checkpoint_state(build_network(student_arch, pretrained=False, teacher_dim=512), 0, 0.0),
                                runs / f"untrained-{student_arch}.pth.tar")
    students = {mode: _train(runs, root, student_arch, mode, student_epochs, common + STUDENT_OPTIONS[mode], teacher)
                for mode in student_modes}
    rows = [{"network": f"teacher {teacher_arch} (std)", "test": "symmetric",
             "results": _test(teacher, root, image_size, workers)},
            {"network": f"student {student_arch} untrained", "test": "asymmetric",
             "results": _test(untrained, root, image_size, workers, teacher)}]
    for mode, path in students.items():
        rows.append({"network": f"student {student_arch} ({mode})", "test": "symmetric",
                     "results": _test(path, root, image_size, workers)})
        rows.append({"network": f"student {student_arch} ({mode})", "test": "asymmetric",
                     "results": _test(path, root, image_size, workers, teacher)})
    print("\n" + format_table(rows))
    print(f"\n>> demo finished in {time.time() - start:.0f} s; runs in {runs}")
    return rows


def main(argv: Optional[List[str]] = None) -> List[Dict]:
    """python -m aml.demo [--data-root DIR] [--student-arch ARCH] ..."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--student-arch", default="mobilenet_v2")
    parser.add_argument("--teacher-arch", default="resnet18")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--teacher-epochs", type=int, default=2)
    parser.add_argument("--student-epochs", type=int, default=12)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--student-modes", default=",".join(STUDENT_OPTIONS),
                        help=f"comma separated, among {', '.join(STUDENT_OPTIONS)} (default: all)")
    args = parser.parse_args(argv)
    modes = [m for m in args.student_modes.split(",") if m]
    unknown = sorted(set(modes) - set(STUDENT_OPTIONS))
    if unknown or not modes:
        parser.error(f"--student-modes: unknown {unknown}; choose among {sorted(STUDENT_OPTIONS)}")
    logging.getLogger("aml").setLevel(logging.WARNING)
    return run_demo(args.data_root, args.student_arch, args.teacher_arch, args.image_size, args.teacher_epochs,
                    args.student_epochs, workers=args.workers, student_modes=modes)


if __name__ == "__main__":
    main()
