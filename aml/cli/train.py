"""main.py: train a retrieval network (teacher-free or against a teacher) in any mode."""

import argparse
import contextlib
import dataclasses
import logging
import random
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from aml.cli.arguments import (Parser, add_extraction_arguments, add_runtime_arguments, folder, nonnegative_float,
                               nonnegative_int, positive_float, positive_int, resolve_device, setup_logging,
                               unit_interval)
from aml.data.distractors import prepare_distractors, split_test_name
from aml.data.testsets import get_test_set, prepare_test_set
from aml.data.trainsets import get_train_set, load_training_db, training_set_names, whitening_set_names
from aml.descriptors import ExtractionConfig
from aml.evaluation.testing import TestSettings, evaluate, result_lines
from aml.evaluation.whitening_store import Encoder
from aml.layers.pooling import POOLINGS
from aml.losses import LOSSES, build_loss
from aml.networks.backbones import BACKBONES, get_backbone
from aml.networks.checkpoint import load_checkpoint, load_trunk_weights
from aml.networks.loading import checkpoint_name
from aml.networks.pretrained import TEACHER_DIMS
from aml.networks.retrieval_net import build_network
from aml.training.modes import MODES, Negatives, check_loss_mode, get_mode
from aml.training.optim import OPTIMIZERS, build_optimizer
from aml.training.pretraining import TRUNK_SOURCES
from aml.training.teacher import Teacher, teacher_split_features
from aml.training.trainer import Split, Trainer, TrainSettings, batch_split_problem
from aml.utils.atomic import folder_lock
from aml.utils.distributed import World, init_from_environment, main_first, process_device

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """Every flag of the original main.py (names, aliases, defaults), plus --data-root,
    --device, --test-freq, --train-batchnorm, --proj-lr-mult and --seed."""
    p = Parser(description="Train a retrieval network (asymmetric metric learning).")
    p.add_argument("--directory", metavar="EXPORT_DIR", required=True, type=folder, help="where the run folder is created")
    p.add_argument("--training-dataset", "-d", default="retrieval-SfM-120k",
                   help=f"{' | '.join(training_set_names())}, or a folder <data_root>/train/NAME made by "
                        "python -m aml.cli.make_trainset (default: retrieval-SfM-120k)")
    p.add_argument("--no-val", dest="val", action="store_false", help="do not run validation")
    p.add_argument("--test-datasets", "-td", default="roxford5k,rparis6k",
                   help="comma separated test sets for --test-freq evaluation (default: roxford5k,rparis6k)")
    p.add_argument("--test-whiten", default="",
                   help=f"whitening set for test evaluation: {' | '.join(whitening_set_names())} or a custom set")
    p.add_argument("--val-freq", default=1, type=positive_int, help="validate every N epochs (default: 1)")
    p.add_argument("--save-freq", default=1, type=positive_int, help="write model_epochN every N epochs (default: 1)")
    p.add_argument("--arch", "-a", default="resnet101", choices=sorted(BACKBONES))
    p.add_argument("--pool", "-p", default="gem", choices=sorted(POOLINGS))
    p.add_argument("--local-whitening", "-lw", action="store_true", help="learnable linear layer before pooling")
    p.add_argument("--regional", "-r", action="store_true", help="regional (R-MAC grid) pooling")
    p.add_argument("--whitening", "-w", action="store_true", help="learnable whitening after pooling")
    p.add_argument("--not-pretrained", dest="pretrained", action="store_false", help="random initialisation")
    p.add_argument("--trunk-weights", default=None, metavar="synthetic|FILE",
                   help="start the trunk from these weights instead of ImageNet's: 'synthetic' pretrains it once on "
                        "synthetic objects (the offline stand-in for ImageNet, cached in <data_root>/networks/), FILE "
                        "is a trunk state dict")
    p.add_argument("--loss", "-l", default="contrastive", choices=sorted(LOSSES))
    p.add_argument("--mode", "-m", default="std", choices=list(MODES))
    p.add_argument("--loss-margin", "-lm", default=0.7, type=nonnegative_float, help="margin of contrastive/triplet (default: 0.7)")
    p.add_argument("--image-size", default=1024, type=positive_int, help="longer side of training images (default: 1024)")
    p.add_argument("--neg-num", "-nn", default=5, type=nonnegative_int, help="negatives per tuple (default: 5)")
    p.add_argument("--query-size", "-qs", default=2000, type=positive_int, help="tuples per epoch (default: 2000)")
    p.add_argument("--pool-size", "-ps", default=20000, type=positive_int, help="negative pool per epoch (default: 20000)")
    p.add_argument("--gpu-id", "-g", default="0", help="GPU id used with --device auto (default: 0)")
    p.add_argument("--workers", "-j", default=8, type=nonnegative_int, help="data loading workers (default: 8)")
    p.add_argument("--epochs", default=100, type=positive_int)
    p.add_argument("--batch-size", "-b", default=5, type=positive_int, help="tuples per mini-batch (default: 5)")
    p.add_argument("--update-every", "-u", default=1, type=positive_int, help="optimizer step every N batches (default: 1)")
    p.add_argument("--optimizer", "-o", default="adam", choices=sorted(OPTIMIZERS))
    p.add_argument("--lr", "--learning-rate", default=1e-6, type=positive_float)
    p.add_argument("--momentum", default=0.9, type=unit_interval)
    p.add_argument("--weight-decay", "--wd", default=1e-6, type=nonnegative_float)
    p.add_argument("--print-freq", default=10, type=positive_int)
    p.add_argument("--resume", default="", metavar="FILENAME",
                   help="checkpoint name in the run folder; if missing, the latest model_epochN there")
    p.add_argument("--comment", "-c", default="", help="appended to the run folder name")
    p.add_argument("--temp", default=0.1, type=positive_float, help="temperature of the cross-entropy losses")
    p.add_argument("--nexamples", default=1000, type=nonnegative_int, help="kept for compatibility (unused)")
    p.add_argument("--teacher", "-t", default="vgg16",
                   help="vgg16 | resnet101 (published teachers) or a checkpoint path (default: vgg16)")
    p.add_argument("--sym", action="store_true", help="positives/negatives also go through the student")
    p.add_argument("--feat-path", default=None, help=".npy teacher descriptors (D x N) of the train split")
    p.add_argument("--feat-val-path", default=None, help=".npy teacher descriptors (D x N) of the val split")
    p.add_argument("--pos-num", "-pn", default=3, type=nonnegative_int, help="kept for compatibility (unused)")
    p.add_argument("--train-batchnorm", action="store_true",
                   help="BatchNorm uses batch statistics, all images of a mini-batch encoded together "
                        "(for trunks trained from scratch); default: frozen, as the original")
    p.add_argument("--batch-forward", action="store_true",
                   help="with frozen BatchNorm, encode all images of a mini-batch together (one forward per image "
                        "shape) instead of tuple by tuple: the same result, faster, more memory (default: off, as "
                        "the original)")
    p.add_argument("--proj-lr-mult", default=1.0, type=positive_float,
                   help="learning-rate multiplier of the student's 1x1 projection; 0.1 keeps its ReLU channels "
                        "alive when training from scratch at a high lr (default: 1, as the original)")
    p.add_argument("--test-freq", default=0, type=nonnegative_int, help="evaluate on --test-datasets every N epochs (0: never)")
    p.add_argument("--seed", default=0, type=nonnegative_int,
                   help="seed of the network's initialisation and of every random draw (tuples, shuffling); "
                        "the weights depend only on the flags, the data and this (default: 0)")
    add_extraction_arguments(p, training=True)
    add_runtime_arguments(p)
    return p


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse impossible combinations at parse time, with the reason."""
    for name, kind in ((args.training_dataset, "training"), (args.test_whiten, "whitening")):
        if name:
            try:
                entry = get_train_set(name, args.data_root)
            except ValueError as err:
                parser.error(str(err))
            if not getattr(entry, kind):
                parser.error(f"{name} is not a {kind} set; choose from {', '.join(training_set_names())}")
    try:
        check_loss_mode(args.loss, args.mode)
    except ValueError as err:
        parser.error(str(err))
    mode = get_mode(args.mode)
    if args.sym and not mode.allows_sym:
        parser.error(f"--sym has no meaning with --mode {args.mode}: its members are not a query/positive/negative "
                     "tuple of different images")
    if args.neg_num == 0 and mode.negatives is not Negatives.NONE:
        parser.error(f"--neg-num 0: --mode {args.mode} trains on tuples with {mode.negatives.value} negatives; with "
                     f"none, --loss {args.loss} sees positives only and cannot learn to separate images (use 1 or more)")
    for name in filter(None, args.test_datasets.split(",")):
        try:
            get_test_set(split_test_name(name)[0], args.data_root)
        except ValueError as err:
            parser.error(str(err).replace("dataset", "test dataset", 1))
    if args.trunk_weights is not None:
        if not args.pretrained:
            parser.error("--trunk-weights and --not-pretrained exclude each other: the first sets the trunk's "
                         "initial weights, the second asks for random ones")
        if args.trunk_weights not in TRUNK_SOURCES and not Path(args.trunk_weights).is_file():
            parser.error(f"--trunk-weights: {args.trunk_weights!r} is neither one of {sorted(TRUNK_SOURCES)} nor a "
                         "file")
    if args.loss == "dark" and args.batch_size < 5:
        parser.error("--loss dark needs --batch-size of at least 5 (4 neighbours per image)")
    if args.train_batchnorm and args.batch_size < 2:
        parser.error("--train-batchnorm needs --batch-size of at least 2 (BatchNorm uses the statistics of the "
                     "mini-batch); use 8 or more")


def run_name(args: argparse.Namespace) -> str:
    """The run folder name, built from the arguments as the original did (plus '_sym',
    '_trainbn', '_projlr<mult>' and '_seed<N>' when they differ from the defaults)."""
    name = f"{args.training_dataset}_{args.arch}_{args.pool}"
    name += "_lwhiten" * args.local_whitening + "_r" * args.regional + "_whiten" * args.whitening
    name += "_notpretrained" * (not args.pretrained)
    if args.trunk_weights:
        name += "_trunk" + (args.trunk_weights if args.trunk_weights in TRUNK_SOURCES
                            else Path(args.trunk_weights).name.split(".")[0])
    if args.test_whiten:
        name += f"_test_whiten_on_{args.test_whiten}"
    name += (f"_{args.loss}_m{args.loss_margin:.2f}_{args.optimizer}_lr{args.lr:.1e}_wd{args.weight_decay:.1e}"
             f"_nnum{args.neg_num}_qsize{args.query_size}_psize{args.pool_size}_bsize{args.batch_size}"
             f"_uevery{args.update_every}_imsize{args.image_size}_temp{args.temp}_{args.mode}")
    name += "_sym" * args.sym + "_trainbn" * args.train_batchnorm
    if args.proj_lr_mult != 1.0:
        name += f"_projlr{args.proj_lr_mult:g}"
    if args.seed != 0:
        name += f"_seed{args.seed}"
    teacher = checkpoint_name(args.teacher) if Path(args.teacher).exists() else args.teacher
    return name + f"_teach_{teacher}" + args.comment


def teacher_dimension(teacher: str) -> Optional[int]:
    """512 / 2048 for the published teachers, meta['outputdim'] of a checkpoint path."""
    if teacher in TEACHER_DIMS:
        return TEACHER_DIMS[teacher]
    if Path(teacher).is_file():
        return int(load_checkpoint(teacher)["meta"]["outputdim"])
    return None


def trunk_weights_file(args: argparse.Namespace, device: str) -> Optional[Path]:
    """The file ``--trunk-weights`` names (a named source is made first, once), or None."""
    if args.trunk_weights is None:
        return None
    if args.trunk_weights in TRUNK_SOURCES:
        return TRUNK_SOURCES[args.trunk_weights](args.arch, args.data_root, device=device, progress=not args.quiet)
    return Path(args.trunk_weights)


def _prepare(args: argparse.Namespace, teacher: Teacher, device: str) -> None:
    """Everything that may download or generate files: the training db, the trunk weights,
    the teacher, the test sets (run by rank 0 first under torchrun)."""
    for split in ("train", "val") if args.val else ("train",):
        load_training_db(args.training_dataset, split, args.data_root)
    trunk_weights_file(args, device)
    if get_mode(args.mode).needs_teacher and not (args.feat_path and (args.feat_val_path or not args.val)):
        teacher.loaded
    for name in filter(None, args.test_datasets.split(",") if args.test_freq else []):
        dataset, suffix = split_test_name(name)
        prepare_test_set(dataset, args.data_root)
        if suffix is not None:
            prepare_distractors(suffix, args.data_root)


def _extraction(args, device: str) -> ExtractionConfig:
    """How mining and the teacher's features extract, from -j, --amp/--no-amp, --amp-dtype,
    --decode, --compile and --quiet."""
    return ExtractionConfig(workers=args.workers, device=device, amp=False if args.amp is False else None,
                            amp_dtype=args.amp_dtype, decode=args.decode, compile=args.compile, progress=not args.quiet)


def _split(args, teacher: Teacher, split: str, feat_path: Optional[str], device: str) -> Split:
    db = load_training_db(args.training_dataset, split, args.data_root)
    features = None
    if get_mode(args.mode).needs_teacher:
        features = teacher_split_features(teacher, args.training_dataset, split, len(db["cids"]), args.image_size,
                                          feat_path, _extraction(args, device))
    return Split(db, list(db["images"]), features)


def _test_callback(args, teacher_spec: Teacher, device: str, run_dir: Path):
    if not args.test_freq:
        return None
    teacher = None
    if get_mode(args.mode).needs_teacher:
        net, name = teacher_spec.loaded
        teacher = Encoder(net, name, teacher_spec.path, named=teacher_spec.path is None)
    extraction = _extraction(args, device)
    settings = TestSettings(datasets=[d for d in args.test_datasets.split(",") if d], image_size=args.image_size,
                            whitening=args.test_whiten or None, workers=args.workers, device=device,
                            data_root=args.data_root, cache=True, progress=not args.quiet, amp=extraction.amp,
                            amp_dtype=extraction.amp_dtype, decode=extraction.decode, compile=extraction.compile)

    def show(dataset: str, entry: Dict[str, Any]) -> None:
        for line in result_lines(dataset, entry):
            log.info(line)

    def run(net, epoch: int) -> Dict[str, Any]:
        student = Encoder(net, f"{run_dir.name}_epoch{epoch + 1}")  # in memory: no whitening file per epoch
        # the student's own database changes every epoch: caching it would only fill the disk
        results = {"symmetric": evaluate(student, dataclasses.replace(settings, cache=False), on_result=show)}
        if teacher is not None:
            results["asymmetric"] = evaluate(student, settings, teacher, on_result=show)
        net.train()
        return results

    return run


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """Run main.py with ``argv``; returns {'run_dir', 'history'}."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    requested = resolve_device(args.device, args.gpu_id)
    world = init_from_environment(requested, args.dist_timeout)
    if batch_split_problem(args.batch_size, world):
        parser.error(batch_split_problem(args.batch_size, world))
    setup_logging(verbose=world.is_main)
    device = str(process_device(requested, world))
    run_dir = Path(args.directory) / run_name(args)
    run_dir.mkdir(parents=True, exist_ok=True)
    with folder_lock(run_dir) if world.is_main else contextlib.nullcontext():
        return _train(args, world, device, run_dir)


def _train(args: argparse.Namespace, world: World, device: str, run_dir: Path) -> Dict[str, Any]:
    """Build the data, network, optimizer and trainer of ``args`` and train (main.py's body)."""
    mode = get_mode(args.mode)
    teacher = Teacher(args.teacher, args.data_root)
    main_first(world, lambda: _prepare(args, teacher, device))
    train = _split(args, teacher, "train", args.feat_path, device)
    val = _split(args, teacher, "val", args.feat_val_path, device) if args.val else None
    dim = train.teacher.shape[0] if train.teacher is not None else teacher_dimension(args.teacher)
    project = get_backbone(args.arch).student or mode.needs_teacher
    trunk = trunk_weights_file(args, device)
    # seeded right before the network is built: what ran before (a teacher loaded to extract
    # its descriptors, or not when they were cached; a trunk pretrained once) never changes
    # the initial weights
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    random.seed(args.seed)
    net = build_network(args.arch, args.pool, args.local_whitening, args.regional, args.whitening,
                        pretrained=args.pretrained and trunk is None,
                        teacher=args.teacher if args.teacher in TEACHER_DIMS else None,
                        teacher_dim=dim if project else None, data_root=args.data_root)
    if trunk is not None:
        load_trunk_weights(net, trunk)
    net.meta["teacher"] = args.teacher
    net.meta["seed"] = args.seed
    net.meta["mode"], net.meta["loss"] = args.mode, args.loss  # checked on --resume
    net.to(device)
    if args.proj_lr_mult != 1.0 and net.projection() is None:
        log.warning(">> --proj-lr-mult %g has no effect: %s has no 1x1 projection", args.proj_lr_mult, args.arch)
    optimizer = build_optimizer(net, args.optimizer, args.lr, args.momentum, args.weight_decay, args.proj_lr_mult)
    settings = TrainSettings(image_size=args.image_size, neg_num=args.neg_num, query_size=args.query_size,
                             pool_size=args.pool_size, batch_size=args.batch_size, update_every=args.update_every,
                             epochs=args.epochs, print_freq=args.print_freq, workers=args.workers, val=args.val,
                             val_freq=args.val_freq, save_freq=args.save_freq, sym=args.sym, device=device,
                             test_freq=args.test_freq, train_batchnorm=args.train_batchnorm,
                             batch_forward=args.batch_forward, seed=args.seed, amp=bool(args.amp),
                             extraction=_extraction(args, device),
                             progress=not args.quiet)
    trainer = Trainer(net, LOSSES[args.loss], build_loss(args.loss, args.loss_margin, args.temp).to(device), optimizer,
                      mode, train, val, run_dir, settings, _test_callback(args, teacher, device, run_dir), world)
    resumed = trainer.resume(args.resume) if args.resume else False
    if not args.pretrained and not resumed and trainer.calibrate_if_vanishing():
        net.meta["batchnorm_calibrated"] = True
    log.info(">> Training %s in mode %s with %s loss; run folder %s%s", args.arch, args.mode, args.loss, run_dir,
             f"; {world.size} processes, {args.batch_size // world.size} tuples each per batch"
             if world.distributed else "")
    history = trainer.fit()
    return {"run_dir": run_dir, "history": history, "net": net}
