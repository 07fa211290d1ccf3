#!/usr/bin/env python
"""Seconds per training epoch of a student on the synthetic training set, on the CPU: the
mining (student descriptors of the queries), the forward and backward passes and the loss.

    python benchmarks/train_epoch.py                          # ts, contrastive, 3 epochs
    python benchmarks/train_epoch.py --mode ts --loss multi --batch-forward
    python benchmarks/train_epoch.py --json benchmarks/results/train_epoch.json

The teacher's descriptors are random unit vectors (``--feat-path``), so no teacher is trained
or downloaded: the epoch's time does not depend on what the descriptors hold. The first epoch
also reads the images' sizes and warms the kernels, so the epochs after it are reported.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from aml.data.synthetic import SyntheticTrainConfig, generate_train_set
from aml.data.trainsets import load_training_db
from aml.training import trainer as trainer_module

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import add_json_argument, write_record  # noqa: E402  (benchmarks/ is not a package)

DATASET = "synth-sfm"


def random_features(root: Path, split: str, dim: int, folder: Path) -> Path:
    """A D x N file of random unit columns for ``split``."""
    columns = len(load_training_db(DATASET, split, str(root))["cids"])
    x = np.random.default_rng(0).standard_normal((dim, columns)).astype(np.float32)
    path = folder / f"{split}.npy"
    np.save(path, x / np.linalg.norm(x, axis=0, keepdims=True))
    return path


def timed_run(argv, epochs: int) -> list:
    """Seconds of each epoch of ``main.py argv`` (Trainer.train_epoch, timed from outside)."""
    from aml.cli import train as train_cli

    seconds = []
    original = trainer_module.Trainer.train_epoch

    def timed(self, epoch):
        start = time.perf_counter()
        try:
            return original(self, epoch)
        finally:
            seconds.append(time.perf_counter() - start)

    trainer_module.Trainer.train_epoch = timed
    try:
        train_cli.main(argv + ["--epochs", str(epochs)])
    finally:
        trainer_module.Trainer.train_epoch = original
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--mode", default="ts")
    parser.add_argument("--loss", default="contrastive")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3, help="epochs run; all but the first are reported")
    parser.add_argument("--batch-forward", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    add_json_argument(parser, "train_epoch")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be 2 or more: the first epoch (image sizes read, kernels warmed) is not reported")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        generate_train_set(root, DATASET, SyntheticTrainConfig(train_landmarks=16, val_landmarks=4, views=8,
                                                               pairs_per_landmark=8, image_size=args.image_size))
        argv = ["--directory", str(Path(tmp) / "runs"), "--data-root", str(root), "-d", DATASET, "--no-val",
                "-a", args.arch, "--not-pretrained", "-m", args.mode, "-l", args.loss, "--image-size",
                str(args.image_size), "-qs", "64", "-ps", "128", "-nn", "5", "-b", "8", "--lr", "1e-4", "-j", "0",
                "--quiet", "--feat-path", str(random_features(root, "train", 512, Path(tmp)))]
        argv += ["--batch-forward"] * args.batch_forward
        seconds = timed_run(argv, args.epochs)[1:]
    result = {"seconds_per_epoch": seconds, "mean": statistics.mean(seconds), "min": min(seconds)}
    print(f"{args.arch} {args.mode}/{args.loss} at {args.image_size} px, 64 tuples of 7 images, batch 8"
          f"{', batch forward' if args.batch_forward else ''}: {result['mean']:.2f} s per epoch "
          f"(min {result['min']:.2f}, {len(seconds)} epochs; torch {torch.__version__})")
    write_record(args.json, "train_epoch", {k: v for k, v in vars(args).items() if k != "json"}, result, device="cpu")


if __name__ == "__main__":
    main()
