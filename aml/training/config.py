"""Every option of a training run as one typed object, `TrainConfig`, composed of parts: what
to train (dataset, network, loss, teacher, optimizer: its own fields), how the loop runs
(`TrainSettings`, the trainer's part) and how images are encoded for mining, teacher
descriptors and tests (`aml.descriptors.ExtractionConfig`). A field is named as its
``main.py`` flag (``--neg-num`` is ``loop.neg_num``; `TrainConfig.from_flags` takes the
flags by name) and has its default (the original's); an unknown field is a TypeError, and
`TrainConfig.check` raises a ConfigError that says why a combination cannot train, before
anything is loaded. Numeric fields declare their range (`aml.utils.bounds.bounded`), which the
flags and `problems` both check."""

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from aml.data.distractors import split_test_name
from aml.data.testsets import get_test_set
from aml.data.trainsets import get_train_set, training_set_names
from aml.descriptors import ExtractionConfig
from aml.layers.pooling import POOLINGS
from aml.losses import LOSSES, check_temperature
from aml.networks.backbones import get_backbone
from aml.networks.loading import NetworkSpec, teacher_problem
from aml.networks.pretrained import DEFAULT_TEACHER
from aml.training.modes import MODES, Negatives, check_loss_mode, get_mode, validation_mode
from aml.training.optim import OPTIMIZERS
from aml.training.pretraining import TRUNK_SOURCES
from aml.utils.bounds import (
    NONNEGATIVE_FLOAT,
    NONNEGATIVE_INT,
    POSITIVE_FLOAT,
    POSITIVE_INT,
    SEED,
    UNIT_INTERVAL,
    bounded,
    out_of_bounds,
)
from aml.utils.changeable import Changeable
from aml.utils.distributed import DEFAULT_TIMEOUT_S
from aml.utils.errors import ConfigError, lookup


@dataclass(frozen=True)
class TrainSettings(Changeable):
    """How the training loop runs: tuples per epoch, batches, epochs, validation, checkpoints.

    The trainer's part of a `TrainConfig` (its fields are main.py's flags of the same names).

    Attributes:
        image_size: the longer side of training images.
        neg_num: negatives per tuple.
        query_size: tuples (queries) per epoch (the modes that draw images draw
            ``pool_size`` images instead).
        pool_size: the images an epoch draws negatives from (mined or random; a triplet's
            positive too); an epoch's images in the modes that draw images
            (`aml.training.modes.Draw`).
        batch_size: tuples per step, over all processes.
        update_every: an optimizer step every N batches.
        epochs: the epochs to train.
        print_freq: log the loss every N batches.
        val: run validation.
        val_freq: validate every N epochs.
        save_freq: write ``model_epochN`` every N epochs.
        sym: positives and negatives also go through the student.
        test_freq: evaluate on the config's ``test_datasets`` every N epochs (0: never).
        train_batchnorm: BatchNorm uses batch statistics, all images of a mini-batch encoded
            together (for trunks trained from scratch); False: frozen, as the original.
        batch_forward: with frozen BatchNorm, encode all images of a mini-batch together (one
            forward per image shape) instead of tuple by tuple: the same result, more memory.
        seed: the seed of the network's initialisation and of every random draw (tuples,
            shuffling; `aml.utils.seeding`).
        autocast: bfloat16 autocast of the training (and validation) forward passes
            (``--amp``); the losses and the gradients stay fp32.

    Examples:
        >>> from aml.training import TrainSettings
        >>> TrainSettings(epochs=2).but(batch_size=8).batch_size
        8
    """

    image_size: int = bounded(1024, POSITIVE_INT)
    neg_num: int = bounded(5, NONNEGATIVE_INT)
    query_size: int = bounded(2000, POSITIVE_INT)
    pool_size: int = bounded(20000, POSITIVE_INT)
    batch_size: int = bounded(5, POSITIVE_INT)  # tuples per step, over all processes
    update_every: int = bounded(1, POSITIVE_INT)
    epochs: int = bounded(100, POSITIVE_INT)
    print_freq: int = bounded(10, POSITIVE_INT)
    val: bool = True
    val_freq: int = bounded(1, POSITIVE_INT)
    save_freq: int = bounded(1, POSITIVE_INT)
    sym: bool = False
    test_freq: int = bounded(0, NONNEGATIVE_INT)
    train_batchnorm: bool = False  # batch statistics, the mini-batch encoded together (else frozen)
    batch_forward: bool = False  # frozen BatchNorm: the mini-batch encoded together too (else tuple by tuple)
    seed: int = bounded(0, SEED)  # every random draw comes from streams derived from it
    autocast: bool = False  # bfloat16 autocast of the training (and validation) forward passes

    def notices(self) -> List[str]:
        """The checkpoints these settings leave out, though they can train (logged before training).

        A ``--save-freq`` above ``--epochs`` writes no ``model_epochN`` before the last epoch's;
        a ``--val-freq`` above it, with validation, no ``model_best``.

        Returns:
            One sentence per checkpoint left out; empty when every one is written.

        Examples:
            >>> from aml.training import TrainSettings
            >>> TrainSettings(epochs=3, save_freq=5).notices()[0].split(":")[0]
            '--save-freq 5 is above --epochs 3'
        """
        found = []
        if self.save_freq > self.epochs:
            found.append(
                f"--save-freq {self.save_freq} is above --epochs {self.epochs}: no model_epochN is written "
                "before the last epoch's, so an interrupted run resumes from model_best"
            )
        if self.val and self.val_freq > self.epochs:
            found.append(
                f"--val-freq {self.val_freq} is above --epochs {self.epochs}: no epoch is validated, so no "
                "model_best is written (--no-val chooses it by the training loss)"
            )
        return found


#: how a training run extracts (mining, teacher descriptors, tests) unless told otherwise: main.py's defaults
TRAIN_EXTRACTION = ExtractionConfig(workers=8, progress=True)


@dataclass(frozen=True)
class TrainConfig(Changeable):
    """Every option of a training run, with main.py's defaults (the original's).

    What to train is the config's own fields; how the loop runs is ``loop`` (`TrainSettings`)
    and how images are encoded is ``extraction``. Frozen; an unknown field is a TypeError, and
    `check` (or `problems`) says why a combination cannot train, before anything is loaded.
    `from_flags` builds one from main.py's flags by name.

    Attributes:
        directory: where the run folder is created.
        training_dataset: a training set's name, or a folder ``<data_root>/train/NAME`` made
            by ``python -m aml.cli.make_trainset``.
        test_datasets: the test sets evaluated every ``loop.test_freq`` epochs (a string is
            split at commas).
        test_whiten: the whitening set for test evaluation ("": none).
        test_image_size: the longer side of test images (1024, as test.py and cirtorch's
            in-training test; not the training ``--image-size``).
        arch: the architecture, a name of `aml.networks.BACKBONES` or ``timm:<model>``.
        pool: the pooling, a name of `aml.layers.pooling.POOLINGS`.
        local_whitening: a learnable linear layer before pooling.
        regional: regional (R-MAC grid) pooling.
        whitening: a learnable whitening after pooling.
        pretrained: start from ImageNet's weights; False: random initialisation.
        trunk_weights: ``"synthetic"`` or a trunk state-dict file, instead of ImageNet's weights.
        loss: the loss, a name of `aml.losses.LOSSES`.
        mode: the training mode, a name of `aml.training.modes.MODES`.
        loss_margin: the margin of the contrastive and triplet losses.
        temp: the temperature of the cross-entropy losses.
        teacher: ``"vgg16"`` or ``"resnet101"`` (the published teachers), a published name or
            a checkpoint path (`aml.networks.loading.NetworkSpec`).
        feat_path: the teacher's D x N descriptors of the train split (a ``.npy`` feature file
            or a descriptor store folder), read instead of loading the teacher.
        feat_val_path: the same for the val split.
        optimizer: a name of `aml.training.optim.OPTIMIZERS`.
        lr: the learning rate.
        momentum: the optimizer's momentum.
        weight_decay: the weight decay.
        proj_lr_mult: the learning-rate multiplier of the student's 1x1 projection.
        resume: a checkpoint name in the run folder to resume from; if missing, the latest
            ``model_epochN`` there ("": start afresh).
        comment: appended to the run folder's name.
        loop: how the training loop runs (`TrainSettings`).
        extraction: how images are encoded for mining, teacher descriptors and tests (its
            device is the run's; ``progress`` also draws the training bars).
        data_root: the data root for data sets, weights and features.
        device: ``"auto"`` (CUDA when present, else the CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        gpu_id: the GPU used with ``device="auto"``.
        dist_timeout: under torchrun, how long (seconds) a process waits for the others
            before it stops with an error.

    Examples:
        >>> from aml.training import TrainConfig, TrainSettings
        >>> from aml.training.config import problems
        >>> config = TrainConfig(directory="runs", arch="mobilenet_v2", mode="ts", teacher="vgg16")
        >>> problems(config)
        []
        >>> problems(config.but(loss="dark", loop=TrainSettings(batch_size=4)))[-1]
        '--loss dark needs --batch-size of at least 5 (4 neighbours per image)'
        >>> TrainConfig.from_flags(directory="runs", neg_num=3, workers=0).loop.neg_num
        3
        >>> TrainConfig(directory="runs", negnum=3)  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        ...
        TypeError: TrainConfig.__init__() got an unexpected keyword argument 'negnum'
    """

    directory: str  # where the run folder is created
    training_dataset: str = "retrieval-SfM-120k"
    test_datasets: Tuple[str, ...] = ("roxford5k", "rparis6k")  # evaluated every loop.test_freq epochs
    test_whiten: str = ""
    test_image_size: int = bounded(1024, POSITIVE_INT)
    arch: str = "resnet101"
    pool: str = "gem"
    local_whitening: bool = False
    regional: bool = False
    whitening: bool = False
    pretrained: bool = True
    trunk_weights: Optional[str] = None  # 'synthetic' or a trunk state-dict file, instead of ImageNet's
    loss: str = "contrastive"
    mode: str = "std"
    loss_margin: float = bounded(0.7, NONNEGATIVE_FLOAT)
    temp: float = bounded(0.1, POSITIVE_FLOAT)
    teacher: str = DEFAULT_TEACHER  # vgg16 | resnet101 | a published name | a checkpoint path
    feat_path: Optional[str] = None
    feat_val_path: Optional[str] = None
    optimizer: str = "adam"
    lr: float = bounded(1e-6, POSITIVE_FLOAT)
    momentum: float = bounded(0.9, UNIT_INTERVAL)
    weight_decay: float = bounded(1e-6, NONNEGATIVE_FLOAT)
    proj_lr_mult: float = bounded(1.0, POSITIVE_FLOAT)
    resume: str = ""
    comment: str = ""
    loop: TrainSettings = TrainSettings()
    extraction: ExtractionConfig = TRAIN_EXTRACTION
    data_root: Optional[str] = None
    device: str = "auto"
    gpu_id: str = "0"
    dist_timeout: float = bounded(DEFAULT_TIMEOUT_S, POSITIVE_FLOAT)

    def __post_init__(self):
        self.check_parts(loop=TrainSettings, extraction=ExtractionConfig)
        if isinstance(self.test_datasets, str):  # "a,b" as the flag takes it
            object.__setattr__(self, "test_datasets", tuple(d for d in self.test_datasets.split(",") if d))
        else:
            object.__setattr__(self, "test_datasets", tuple(self.test_datasets))

    @classmethod
    def from_flags(cls, directory: str, **flags: Any) -> "TrainConfig":
        """The config of main.py's flags, each given by its name (``--neg-num`` is ``neg_num``).

        The loop's flags go to ``loop``; ``--workers``, ``--amp-dtype``, ``--decode``,
        ``--compile`` and ``--quiet`` to ``extraction``; ``--amp`` to both (the training
        forward passes' bfloat16 autocast, and extraction's autocast, which ``--no-amp`` turns off);
        the others are the config's own fields.

        Args:
            directory: where the run folder is created.
            **flags: main.py's flags by name, each with its value.

        Returns:
            The config.

        Raises:
            TypeError: for a name that is no flag.
        """
        loop_fields = {f.name for f in dataclasses.fields(TrainSettings)} - {"autocast"}
        loop = {name: flags.pop(name) for name in list(flags) if name in loop_fields}
        amp = flags.pop("amp", None)
        extraction = TRAIN_EXTRACTION.but(
            workers=flags.pop("workers", TRAIN_EXTRACTION.workers),
            amp=False if amp is False else None,
            amp_dtype=flags.pop("amp_dtype", TRAIN_EXTRACTION.amp_dtype),
            decode=flags.pop("decode", TRAIN_EXTRACTION.decode),
            compile=flags.pop("compile", TRAIN_EXTRACTION.compile),
            progress=not flags.pop("quiet", False),
        )
        return cls(directory, loop=TrainSettings(autocast=bool(amp), **loop), extraction=extraction, **flags)

    def notices(self) -> List[str]:
        """What these settings leave out, though they can train (logged before training).

        The loop's checkpoints (`TrainSettings.notices`), and test flags that test nothing
        without ``--test-freq`` (accepted, as the original's, whose ``--test-whiten`` names the
        run folder).

        Returns:
            One sentence per thing left out; empty when there is none.

        Examples:
            >>> from aml.training import TrainConfig
            >>> TrainConfig.from_flags("runs", test_datasets="synth-oxford").notices()[0].split(":")[0]
            '-td/--test-datasets synth-oxford is given without --test-freq'
        """
        found = self.loop.notices()
        if self.loop.test_freq:
            return found
        defaults = TrainConfig(self.directory)
        given = [
            f"{flag} {shown}"
            for flag, shown, default in (
                ("-td/--test-datasets", ",".join(self.test_datasets), ",".join(defaults.test_datasets)),
                ("--test-image-size", str(self.test_image_size), str(defaults.test_image_size)),
                ("--test-whiten", self.test_whiten, defaults.test_whiten),
            )
            if shown != default
        ]
        if given:
            found.append(
                f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} given without --test-freq: nothing is "
                "tested during training; add --test-freq N to test every N epochs"
            )
        return found

    def check(self) -> None:
        """Raise ConfigError, with the reason, for a combination that cannot train.

        Raises:
            ConfigError: with the first of `problems`.
        """
        problem = next(iter(problems(self)), None)
        if problem:
            raise ConfigError(problem)


#: the names main.py's flags choose among: field -> its registry (the flags' choices and `problems` read it)
_WHAT = {"pool": "pooling", "loss": "loss", "mode": "training mode", "optimizer": "optimizer"}
CHOICES: Dict[str, Mapping[str, Any]] = {"pool": POOLINGS, "loss": LOSSES, "mode": MODES, "optimizer": OPTIMIZERS}


def problems(config: TrainConfig) -> List[str]:
    """Why a config cannot train, checked before anything is loaded.

    The names (architecture, pooling, loss, mode, optimizer) come first: an unknown one is the
    only reason given. Then the numbers against the ranges their fields declare (the ranges
    main.py's flags check), then the combinations.

    Args:
        config: the run's options.

    Returns:
        The reasons, one sentence each; empty when it can train.

    Examples:
        >>> from aml.training import TrainConfig
        >>> from aml.training.config import problems
        >>> problems(TrainConfig(directory="runs"))
        []
        >>> [reason.split(" (")[0] for reason in problems(TrainConfig.from_flags("runs", loss="dark", batch_size=4))]
        ... # doctest: +NORMALIZE_WHITESPACE
        ['--loss dark cannot be used with --mode std: it compares batches of student and teacher descriptors',
         '--loss dark needs --batch-size of at least 5']
        >>> problems(TrainConfig(directory="runs", optimizer="adamw"))
        ["--optimizer: unknown optimizer 'adamw'; choose one of adam, sgd"]
        >>> problems(TrainConfig.from_flags("runs", neg_num=-1))
        ['--neg-num -1: must be an integer >= 0, got -1']
    """
    unknown = _unknown_names(config)
    if unknown:
        return unknown
    found: List[str] = out_of_bounds(config) + out_of_bounds(config.loop) + out_of_bounds(config.extraction)
    try:
        check_temperature(config.temp, LOSSES[config.loss].uses_temperature)
    except ConfigError as err:
        found.append(str(err))
    for name, kind in ((config.training_dataset, "training"), (config.test_whiten, "whitening")):
        if name:
            try:
                entry = get_train_set(name, config.data_root)
            except ValueError as err:
                return found + [str(err)]
            if not getattr(entry, kind):
                found.append(f"{name} is not a {kind} set; choose from {', '.join(training_set_names())}")
    return (
        found
        + _teacher_problems(config)
        + _mode_problems(config)
        + _flag_problems(config)
        + _test_set_problems(config)
        + _trunk_problems(config)
        + _batch_problems(config)
    )


def _unknown_names(config: TrainConfig) -> List[str]:
    """The architecture, pooling, loss, mode and optimizer names that no table holds."""
    unknown = []
    try:  # a name of the backbone table or of a family (timm:<model>)
        get_backbone(config.arch)
    except (ConfigError, ImportError) as err:
        unknown.append(f"--arch: {err}")
    for field, table in CHOICES.items():
        try:
            lookup(table, getattr(config, field), _WHAT[field])
        except ConfigError as err:
            unknown.append(f"--{field}: {err}")
    return unknown


def _flag_problems(config: TrainConfig) -> List[str]:
    """Flags this run would ignore, or that would take it elsewhere: the teacher's feature files
    in a mode without a teacher, a --comment with a path separator (it ends the run folder's name)."""
    found = []
    given = [
        flag for flag, value in (("--feat-path", config.feat_path), ("--feat-val-path", config.feat_val_path)) if value
    ]
    if given and not get_mode(config.mode).needs_teacher:
        found.append(
            f"{' and '.join(given)}: --mode {config.mode} trains without a teacher and would not read the teacher's "
            "descriptors; leave them out, or choose a teacher mode (ts, reg, ...)"
        )
    if config.feat_val_path and not config.loop.val:
        found.append(
            "--feat-val-path with --no-val: the val split is not validated, so the file would not be read; leave "
            "one of them out"
        )
    if config.loop.val_freq != 1 and not config.loop.val:
        found.append(
            f"--val-freq {config.loop.val_freq} with --no-val: no epoch is validated, so it would change nothing; "
            "leave one of them out"
        )
    defaults = TrainConfig.__dataclass_fields__
    if config.momentum != defaults["momentum"].default and config.optimizer != "sgd":
        found.append(
            f"--momentum {config.momentum}: it is SGD's, and --optimizer {config.optimizer} has none; leave it out"
        )
    if config.gpu_id != defaults["gpu_id"].default and config.device != "auto":
        found.append(
            f"--gpu-id {config.gpu_id}: it picks the GPU of --device auto; --device {config.device} names its own "
            "(cuda:N)"
        )
    if any(sep in config.comment for sep in {"/", os.sep, "\0"}):
        found.append(
            f"--comment {config.comment!r}: it ends the run folder's name and cannot hold a path separator; the run "
            "folder's place is --directory"
        )
    return found


def _teacher_problems(config: TrainConfig) -> List[str]:
    """A --teacher that is neither a published name nor a file (a typo trained a 512-d student,
    the default's, without a word)."""
    problem = teacher_problem(config.teacher)
    return [problem] if problem else []


def _mode_problems(config: TrainConfig) -> List[str]:
    """The loss, --sym and --neg-num that the mode cannot train with."""
    found = []
    try:
        check_loss_mode(config.loss, config.mode)
    except ValueError as err:
        found.append(str(err))
    mode, loop = get_mode(config.mode), config.loop
    if loop.sym and not mode.allows_sym:
        why = (
            "its members are not a query/positive/negative tuple of different images"
            if mode.asymmetric
            else "every member of its tuples goes through the student already"
        )
        found.append(f"--sym has no meaning with --mode {config.mode}: {why}")
    if loop.neg_num == 0 and mode.negatives is not Negatives.NONE and LOSSES[config.loss].uses_negatives:
        found.append(
            f"--neg-num 0: --mode {config.mode} trains on tuples with {mode.negatives.value} negatives; with "
            f"none, --loss {config.loss} sees positives only and cannot learn to separate images (use 1 or "
            "more)"
        )
    checked = validation_mode(mode)
    validated_on_negatives = checked.negatives is not Negatives.NONE and LOSSES[config.loss].uses_negatives
    if loop.neg_num == 0 and loop.val and mode.negatives is Negatives.NONE and validated_on_negatives:
        found.append(
            f"--neg-num 0: --mode {config.mode} is validated on --mode {checked.name}'s tuples, with "
            f"{checked.negatives.value} negatives; with none, the validation loss measures positives only (a "
            "triplet or cross-entropy loss is 0 for every epoch) and model_best stays the first epoch; use 1 "
            "or more, or --no-val"
        )
    return found


def _test_set_problems(config: TrainConfig) -> List[str]:
    """The --test-datasets that are not test sets."""
    found = []
    for name in config.test_datasets:
        try:
            get_test_set(split_test_name(name)[0], config.data_root)
        except ValueError as err:
            found.append(str(err).replace("dataset", "test dataset", 1))
    return found


def _trunk_problems(config: TrainConfig) -> List[str]:
    """A --trunk-weights that is no source or file, or that --not-pretrained contradicts."""
    if config.trunk_weights is None:
        return []
    if not config.pretrained:
        return [
            "--trunk-weights and --not-pretrained exclude each other: the first sets the trunk's "
            "initial weights, the second asks for random ones"
        ]
    if config.trunk_weights not in TRUNK_SOURCES and not Path(config.trunk_weights).is_file():
        return [f"--trunk-weights: {config.trunk_weights!r} is neither one of {sorted(TRUNK_SOURCES)} nor a file"]
    return []


def _batch_problems(config: TrainConfig) -> List[str]:
    """Mini-batches too small for the loss or for BatchNorm's statistics."""
    found = []
    fewest, why = LOSSES[config.loss].min_batch
    if config.loop.batch_size < fewest:
        found.append(f"--loss {config.loss} needs --batch-size of at least {fewest} ({why})")
    if config.loop.train_batchnorm and config.loop.batch_size < 2:
        found.append(
            "--train-batchnorm needs --batch-size of at least 2 (BatchNorm uses the statistics of the "
            "mini-batch); use 8 or more"
        )
    return found


def run_name(config: TrainConfig) -> str:
    """The run folder name, built from the options as the original did (plus '_sym',
    '_trainbn', '_projlr<mult>' and '_seed<N>' when they differ from the defaults)."""
    c, loop = config, config.loop
    name = f"{c.training_dataset}_{c.arch}_{c.pool}"
    name += "_lwhiten" * c.local_whitening + "_r" * c.regional + "_whiten" * c.whitening
    name += "_notpretrained" * (not c.pretrained)
    if c.trunk_weights:
        name += "_trunk" + (
            c.trunk_weights if c.trunk_weights in TRUNK_SOURCES else Path(c.trunk_weights).name.split(".")[0]
        )
    if c.test_whiten:
        name += f"_test_whiten_on_{c.test_whiten}"
    name += (
        f"_{c.loss}_m{c.loss_margin:.2f}_{c.optimizer}_lr{c.lr:.1e}_wd{c.weight_decay:.1e}"
        f"_nnum{loop.neg_num}_qsize{loop.query_size}_psize{loop.pool_size}_bsize{loop.batch_size}"
        f"_uevery{loop.update_every}_imsize{loop.image_size}_temp{c.temp}_{c.mode}"
    )
    name += "_sym" * loop.sym + "_trainbn" * loop.train_batchnorm
    if c.proj_lr_mult != 1.0:
        name += f"_projlr{c.proj_lr_mult:g}"
    if loop.seed != 0:
        name += f"_seed{loop.seed}"
    return name + f"_teach_{NetworkSpec.parse(c.teacher).label}" + c.comment
