#!/usr/bin/env python
"""Which tokens of a ViT make the global descriptor: GeM over the patch tokens, or the class
token (GeM of a 1x1 map is the token clamped at 0; MAC keeps it as it is), on the synthetic
test sets.

    python benchmarks/vit_readout.py --data-root DATA [--arch timm:vit_small_patch14_dinov2] \\
        [--pretrained] [--image-size 96] [--seeds 0,1,2] [--epochs 2] [--json FILE]   # default: benchmarks/results/vit_readout.json

Each readout is tested off the shelf and after training as the demo trains its teacher
(``std`` mode on synth-sfm, the demo's budget and options, ``--epochs`` epochs, the first
seed), starting from random weights (one network per seed off the shelf) or, with
``--pretrained``, from the pretrained weights (found offline, `aml.networks.imagenet`). Every
network is tested symmetrically on synth-oxford and synth-paris (generated in the data root
when missing). It prints the mAP table and writes it, with the machine and versions, as JSON.
"""

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import torch

from aml.data.synthetic import generate_all
from aml.data.testsets import REPORTED_LEVELS
from aml.demo.pipeline import TEACHER_OPTIONS, DemoBudget
from aml.demo.tables import DATASETS
from aml.descriptors import ExtractionConfig
from aml.evaluation.plan import TestSettings
from aml.evaluation.testing import evaluate
from aml.networks import LoadedNetwork, build_network, load_named_or_file
from aml.training import TrainConfig, run
from aml.training.config import run_name

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import add_json_argument, write_record  # noqa: E402  (benchmarks/ is not a package)

#: (readout, pooling) measured: GeM over the patch tokens, the class token through GeM and through MAC
VARIANTS = (("patch", "gem"), ("cls", "gem"), ("cls", "mac"))


def mean_average_precisions(network: LoadedNetwork, settings: TestSettings) -> Dict[str, Dict[str, float]]:
    """mAP (%) Medium and Hard per test set."""
    results = evaluate(network, settings)
    return {d: {level: 100 * results[d].plain.map(level) for level in REPORTED_LEVELS} for d in DATASETS}


def trained(args: argparse.Namespace, arch: str, pooling: str, seed: int) -> LoadedNetwork:
    """``arch`` trained in std mode on synth-sfm, as the demo trains its teacher."""
    options = dict(DemoBudget(image_size=args.image_size, quiet=True).options(), **TEACHER_OPTIONS)
    if args.tuples is not None:
        options.update(query_size=args.tuples, pool_size=2 * args.tuples)
    config = TrainConfig.from_flags(str(Path(args.data_root) / "vit_readout" / "runs"), data_root=args.data_root,
                                    training_dataset="synth-sfm", arch=arch, pool=pooling, pretrained=args.pretrained,
                                    epochs=args.epochs, val=False, print_freq=1000, seed=seed, device=args.device,
                                    **options)
    shutil.rmtree(Path(config.directory) / run_name(config), ignore_errors=True)  # this script's own run, again
    return load_named_or_file(run(config).run_dir / f"model_epoch{args.epochs}.pth.tar")


def measure(args: argparse.Namespace) -> List[Dict[str, Any]]:
    """One row per (readout, pooling, weights): mAP Medium and Hard per data set."""
    extraction = ExtractionConfig(workers=0, device=args.device, progress=False)
    settings = TestSettings(datasets=tuple(DATASETS), image_size=args.image_size, extraction=extraction,
                            data_root=args.data_root)
    seeds = [int(s) for s in args.seeds.split(",")][:1 if args.pretrained else None]
    start = "pretrained" if args.pretrained else "random"
    rows = []
    for readout, pooling in VARIANTS:
        arch = f"{args.arch}+{readout}"
        per_seed = []
        for seed in seeds:
            torch.manual_seed(seed)
            net = build_network(arch, pooling, pretrained=args.pretrained, data_root=args.data_root).eval()
            per_seed.append(mean_average_precisions(LoadedNetwork.in_memory(net, f"{arch}-{start}{seed}"), settings))
        rows.append({"readout": readout, "pooling": pooling,
                     "weights": "pretrained" if args.pretrained else f"random (seeds {args.seeds})",
                     "map": {d: {level: [round(r[d][level], 2) for r in per_seed] for level in REPORTED_LEVELS}
                             for d in DATASETS}})
        result = mean_average_precisions(trained(args, arch, pooling, seeds[0]), settings)
        rows.append({"readout": readout, "pooling": pooling,
                     "weights": f"trained from {start}, std mode, {args.epochs} epochs (seed {seeds[0]})",
                     "map": {d: {level: [round(result[d][level], 2)] for level in REPORTED_LEVELS} for d in DATASETS}})
        print(f">> {arch} {pooling}: done", flush=True)
    return rows


def main(argv=None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", required=True, help="where the synthetic sets are (generated when missing)")
    parser.add_argument("--arch", default="timm:vit_small_patch14_dinov2", help="a timm ViT, without a readout")
    parser.add_argument("--pretrained", action="store_true",
                        help="start from the pretrained weights (found offline) instead of random ones")
    parser.add_argument("--image-size", type=int, default=96, help="the demo's (default: 96)")
    parser.add_argument("--seeds", default="0,1,2", help="seeds of the random networks (default: 0,1,2)")
    parser.add_argument("--epochs", type=int, default=2, help="training epochs, the demo's teacher's (default: 2)")
    parser.add_argument("--tuples", type=int, default=None,
                        help="training tuples per epoch (-qs; -ps twice as many; default: the demo's)")
    parser.add_argument("--device", default="cpu")
    add_json_argument(parser, "vit_readout")
    args = parser.parse_args(argv)
    start = time.time()
    generate_all(args.data_root)
    rows = measure(args)
    print(f"{'readout':8s} {'pooling':8s} {'weights':52s} " + " ".join(f"{d + ' ' + lv[0].upper():>15s}"
                                                                     for d in DATASETS for lv in REPORTED_LEVELS))
    for row in rows:
        print(f"{row['readout']:8s} {row['pooling']:8s} {row['weights']:52s} "
              + " ".join(f"{statistics.mean(row['map'][d][lv]):15.2f}" for d in DATASETS for lv in REPORTED_LEVELS))
    settings = {k: v for k, v in vars(args).items() if k not in ("json", "data_root")}
    record = {"rows": rows, "seconds": round(time.time() - start, 1)}
    write_record(args.json, "vit_readout", settings, record)
    return record


if __name__ == "__main__":
    main()
