"""Training as a library call: a `aml.training.config.TrainConfig` in, a trained run
folder out. ``main.py`` parses its flags into a config and calls `run`; so do the demo
and the tests.

    from aml.training import TrainConfig, run
    result = run(TrainConfig(directory="runs", arch="mobilenet_v2", mode="ts", teacher="vgg16"))
    result.run_dir / "model_best.pth.tar"
"""

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional


from aml.data.distractors import prepare_distractors, split_test_name
from aml.data.testsets import prepare_test_set
from aml.data.formats import TrainingDb
from aml.data.trainsets import load_training_db, pairs_across_clusters, prepare_train_set
from aml.data.paths import DataRoot
from aml.descriptors import feature_provenance
from aml.evaluation.results import DatasetResult
from aml.evaluation.plan import TestSettings
from aml.evaluation.testing import evaluate
from aml.losses import LOSSES, build_loss
from aml.networks.backbones import get_backbone
from aml.networks.checkpoint import load_trunk_weights
from aml.networks.loading import LoadedNetwork
from aml.networks.retrieval_net import ImageRetrievalNet, build_network, keeps_own_width
from aml.reports.curves import TestedEpoch, TestRecords
from aml.training.config import TrainConfig, run_name
from aml.training.modes import Negatives, get_mode
from aml.training.optim import build_optimizer
from aml.training.pretraining import TRUNK_SOURCES
from aml.training.run_folder import earlier_checkpoint
from aml.training.teacher import Teacher, teacher_split_features
from aml.training.parallel import batch_split_problem, sync_batchnorm_problem
from aml.training.trainer import Learner, Split, Trainer
from aml.utils.atomic import folder_lock
from aml.utils.devices import device_label, resolve_device
from aml.utils.distributed import (
    World,
    barrier,
    from_main,
    init_from_environment,
    main_first,
    process_device,
    warn_once,
)
from aml.utils.errors import ConfigError, SettingsError
from aml.utils.seeding import global_seed

log = logging.getLogger(__name__)


def _warn_of_pairs_across_clusters(name: str, split: str, db: TrainingDb) -> None:
    """Name a split whose query/positive pairs join two clusters: mining may take such a pair's
    positive as its own negative (as the original's)."""
    across = pairs_across_clusters(db)
    if across:
        warn_once(
            log,
            ">> %s (%s): %d of its %d query/positive pairs join two clusters (first: images %d and %d); a "
            "pair's positive may be mined as its own negative, as in the original: make the set again with "
            "each pair inside one landmark (python -m aml.cli.make_trainset)",
            name,
            split,
            len(across),
            len(db["qidxs"]),
            db["qidxs"][across[0]],
            db["pidxs"][across[0]],
        )


@dataclass
class TrainResult:
    """What a run leaves: its folder, one record per epoch trained, and the trained network.

    Attributes:
        run_dir: the run folder (``model_epochN.pth.tar``, ``model_best.pth.tar``,
            ``log.txt``, curves).
        history: one record per epoch trained: epoch, train and val loss, lr, and the test
            results of the epochs tested.
        net: the trained network.

    Examples:
        >>> from aml.training import TrainConfig, run
        >>> result = run(TrainConfig(directory="runs", arch="mobilenet_v2", mode="ts"))  # doctest: +SKIP
        >>> result.run_dir / "model_best.pth.tar"  # doctest: +SKIP
        PosixPath('runs/retrieval-SfM-120k_mobilenet_v2_gem_contrastive_.../model_best.pth.tar')
        >>> result.history[-1]["val_loss"]  # doctest: +SKIP
    """

    run_dir: Path
    history: List[TestedEpoch]
    net: ImageRetrievalNet


def run(config: TrainConfig) -> TrainResult:
    """Train as a config says; under torchrun, as one process of the job.

    Args:
        config: the run's options (checked first).

    Returns:
        The run folder (``model_epochN.pth.tar``, ``model_best.pth.tar``, ``log.txt``, curves),
        the per-epoch records (losses, lr, test results) and the network.

    Raises:
        ValueError: why the options cannot train (`aml.training.config.problems`), or
            why the batch does not split over the torchrun processes.

    Examples:
        >>> from aml.training import TrainConfig, run
        >>> config = TrainConfig.from_flags("runs", training_dataset="synth-sfm", arch="resnet18", image_size=96,
        ...                                 query_size=64, pool_size=128, epochs=1)
        >>> result = run(config)  # doctest: +SKIP
        >>> sorted(path.name for path in result.run_dir.glob("*.pth.tar"))  # doctest: +SKIP
        ['model_best.pth.tar', 'model_epoch1.pth.tar']
    """
    config.check()
    for notice in config.notices():
        warn_once(log, ">> %s", notice)
    requested = resolve_device(config.device, config.gpu_id)
    world = init_from_environment(requested, config.dist_timeout)
    problem = batch_split_problem(config.loop.batch_size, world) or sync_batchnorm_problem(
        config.loop, world, requested
    )
    if problem:  # alike on every process: said by process 0 (run_cli)
        raise SettingsError(problem)
    device = str(process_device(requested, world))
    run_dir = Path(config.directory) / run_name(config)
    fresh = not run_dir.exists()
    barrier(world)  # every process looked before any makes it: process 0 knows whether this run made it
    run_dir.mkdir(parents=True, exist_ok=True)
    made = world.is_main and fresh
    try:
        with folder_lock(run_dir) if world.is_main else contextlib.nullcontext():
            earlier = from_main(None if config.resume else earlier_checkpoint(run_dir), world)
            if earlier is not None:  # a new run would replace its checkpoints, model_best first
                raise ConfigError(
                    f"{run_dir} holds the checkpoints of an earlier run ({earlier.name}): continue it with "
                    "--resume latest, or start a new one elsewhere (another --directory or --comment)"
                )
            return _Run(config, world, device, run_dir).train()
    except BaseException:
        if made:
            _remove_if_unused(run_dir)
        raise


def _remove_if_unused(run_dir: Path) -> None:
    """Remove the run folder this run made when the run ended before it wrote anything in it
    (refused at start, stopped while preparing): only its lock is there."""
    try:
        if {path.name for path in run_dir.iterdir()} <= {".lock"}:
            (run_dir / ".lock").unlink(missing_ok=True)
            run_dir.rmdir()
    except OSError:  # another process wrote there meanwhile: the folder stays, the run's error is the one to see
        pass


class _Run:
    """The pieces of one run, built from its config: data, teacher, network, trainer."""

    def __init__(self, config: TrainConfig, world: World, device: str, run_dir: Path):
        self.config, self.world, self.device, self.run_dir = config, world, device, run_dir
        self.loop = config.loop
        self.data_root = DataRoot.resolve(config.data_root)
        self.mode = get_mode(config.mode)
        given = [path for path in (config.feat_path, config.feat_val_path) if path]
        self.teacher = Teacher(config.teacher, self.data_root, given)
        self.extraction = config.extraction.but(device=device)  # this process's device

    def trunk_weights_file(self) -> Optional[Path]:
        """The file ``trunk_weights`` names (a named source is made first, once), or None."""
        c = self.config
        if c.trunk_weights is None:
            return None
        if c.trunk_weights in TRUNK_SOURCES:
            return TRUNK_SOURCES[c.trunk_weights](
                c.arch, self.data_root, device=self.device, progress=self.extraction.progress
            )
        return Path(c.trunk_weights)

    def prepare(self) -> None:
        """Everything that may download or generate files: the training db, the trunk weights,
        the teacher, the test sets (run by rank 0 first under torchrun)."""
        c = self.config
        prepare_train_set(c.training_dataset, self.data_root, "training", progress=c.extraction.progress)
        self.trunk_weights_file()
        if self.reads_teacher:
            _ = self.teacher.loaded  # downloaded or read once, here, before the other ranks
        for name in c.test_datasets if self.loop.test_freq else ():
            dataset, suffix = split_test_name(name)
            prepare_test_set(dataset, self.data_root)
            if suffix is not None:
                prepare_distractors(suffix, self.data_root)

    @property
    def reads_teacher(self) -> bool:
        """Whether the run reads the teacher's weights: to encode the training images (unless
        --feat-path files hold every split's descriptors) or to test the student against it."""
        c = self.config
        from_files = bool(c.feat_path) and (bool(c.feat_val_path) or not self.loop.val)
        return self.mode.needs_teacher and (not from_files or bool(self.loop.test_freq))

    def split(self, split: str, feat_path: Optional[str]) -> Split:
        c = self.config
        db = load_training_db(c.training_dataset, split, self.data_root)
        if self.mode.negatives is not Negatives.NONE and self.loop.neg_num and LOSSES[c.loss].uses_negatives:
            _warn_of_pairs_across_clusters(c.training_dataset, split, db)
        features = None
        if self.mode.needs_teacher:
            features = teacher_split_features(
                self.teacher, c.training_dataset, split, db["images"], self.loop.image_size, feat_path, self.extraction
            )
        return Split(db, list(db["images"]), features)

    def network(self, teacher_dim: Optional[int]) -> ImageRetrievalNet:
        """The network to train (``teacher_dim``: the dimension it projects to, None: its own),
        seeded right before it is built: what ran before (a teacher
        loaded to extract its descriptors, or not when they were cached; a trunk pretrained
        once) never changes the initial weights."""
        c, seed = self.config, self.loop.seed
        trunk = self.trunk_weights_file()
        with global_seed(seed):  # the caller's generators stay as they were
            net = build_network(
                c.arch,
                c.pool,
                c.local_whitening,
                c.regional,
                c.whitening,
                pretrained=c.pretrained and trunk is None,
                teacher_dim=teacher_dim,
                data_root=self.data_root,
            )
        if trunk is not None:
            load_trunk_weights(net, trunk)
        net.meta["seed"] = seed
        if self.mode.needs_teacher:  # a std run has no teacher (--teacher sets its dimension only)
            net.meta["teacher"] = self.teacher.spec.given  # a published name as listed (VGG16: vgg16)
            # the student's teacher by its weights: a store is checked against them wherever it is queried
            net.meta["teacher_fingerprint"] = self._teacher_fingerprint()
        net.meta["mode"], net.meta["loss"] = c.mode, c.loss  # checked on --resume
        net.meta["autocast"] = "bfloat16" if self.loop.autocast else "off"  # named on --resume when it changes
        if c.proj_lr_mult != 1.0 and net.projection() is None:
            warn_once(log, ">> --proj-lr-mult %g has no effect: %s has no 1x1 projection", c.proj_lr_mult, c.arch)
        return net.to(self.device)

    def _teacher_fingerprint(self) -> Optional[str]:
        """The teacher's weights' fingerprint: the loaded teacher's, or, in a run that reads
        its descriptors from --feat-path files alone, the one the train file records."""
        if self.reads_teacher:
            return self.teacher.loaded.fingerprint
        if self.mode.needs_teacher and self.config.feat_path:
            return feature_provenance(Path(self.config.feat_path)).fingerprint
        return None

    def test_callback(self) -> Optional[Callable[[ImageRetrievalNet, int], TestRecords]]:
        """Evaluation every ``test_freq`` epochs (None: never)."""
        c = self.config
        if not self.loop.test_freq:
            return None
        teacher = self.teacher.loaded if self.mode.needs_teacher else None
        settings = TestSettings(
            datasets=c.test_datasets,
            image_size=c.test_image_size,
            whitening=c.test_whiten or None,
            extraction=self.extraction,
            data_root=self.data_root,
        )

        def show(result: DatasetResult) -> None:
            for line in result.lines() if self.world.is_main else ():  # every rank has the result
                log.info(line)

        def evaluate_epoch(net, epoch: int) -> TestRecords:
            """The epoch's test results as the history records them (test.py's results file entries)."""
            # in memory: no whitening file per epoch
            student = LoadedNetwork.in_memory(net, f"{self.run_dir.name}_epoch{epoch + 1}")
            heading = f">> Test [{epoch + 1}]"
            if self.world.is_main:  # which block is which: the same lines as test.py's follow
                log.info("%s symmetric: the student encodes the queries and the database", heading)
            # the student's own database changes every epoch: caching it would only fill the disk
            tests = {"symmetric": evaluate(student, settings.but(cache=False), on_result=show)}
            if teacher is not None:
                if self.world.is_main:
                    log.info("%s asymmetric: the student's queries in the teacher's database", heading)
                tests["asymmetric"] = evaluate(student, settings, teacher, on_result=show)
            return {
                kind: {name: result.record() for name, result in results.items()} for kind, results in tests.items()
            }

        return evaluate_epoch

    def _dimension_without_features(self) -> Optional[int]:
        """A std run's dimension: --teacher's, as init_network and the original's README have it
        (it "makes the last layer of the student match that of the teacher", also in a symmetric
        training), unless the trunk keeps its width there (`keeps_own_width`: the default VGG16
        for a trunk that is not a student); None: the trunk's width."""
        spec, arch = self.teacher.spec, self.config.arch
        if keeps_own_width(arch, spec.given):
            return None
        dim = spec.dimension()
        if dim is not None and not get_backbone(arch).student and dim != get_backbone(arch).dim:
            log.info(
                ">> %s's %d channels projected to --teacher %s's %d dimensions",
                arch,
                get_backbone(arch).dim,
                spec.given,
                dim,
            )
        return dim

    def train(self) -> TrainResult:
        """Build the data, network, optimizer and trainer, and train."""
        c, world = self.config, self.world
        # first: a run that fell back to the CPU is seen before the downloads and the teacher's encoding
        log.info(
            ">> Training %s in mode %s with %s loss on %s; run folder %s%s",
            c.arch,
            c.mode,
            c.loss,
            device_label(self.device),
            self.run_dir,
            f"; {world.size} processes, {self.loop.batch_size // world.size} tuples each per batch"
            if world.distributed
            else "",
        )
        main_first(world, self.prepare)
        train = self.split("train", c.feat_path)
        val = self.split("val", c.feat_val_path) if self.loop.val else None
        dim = train.teacher.shape[0] if train.teacher is not None else self._dimension_without_features()
        # rank 0 first where it may download (ImageNet weights, published layers): the others then find them
        net = main_first(world, lambda: self.network(dim)) if c.pretrained else self.network(dim)
        optimizer = build_optimizer(net, c.optimizer, c.lr, c.momentum, c.weight_decay, c.proj_lr_mult)
        trainer = Trainer(
            Learner(
                net, build_loss(c.loss, c.loss_margin, c.temp).to(self.device), optimizer, self.mode, c.loss_margin
            ),
            train,
            val,
            self.run_dir,
            self.loop,
            self.extraction,
            self.test_callback(),
            world,
        )
        resumed = trainer.resume(c.resume) if c.resume else False
        if not c.pretrained and not resumed and trainer.calibrate_if_vanishing():
            net.meta["batchnorm_calibrated"] = True
        return TrainResult(self.run_dir, trainer.fit(), net)
