"""The training loop: per-epoch tuple building (mining), gradient accumulation, frozen
BatchNorm, validation, atomic checkpoints, logs, curves and exact resume.

Faults: a non-finite loss stops the run (`TrainingDiverged`) before it reaches the
weights, and a non-finite network is never written; ``model_best`` is written before
``model_epochN``, so a crash between the two never leaves a stale best behind a newer
epoch checkpoint."""

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, cast

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from aml.data.formats import TrainingDb
from aml.data.images import PixelNormalizer, image_size, image_transform, load_and_resize, resized_shape
from aml.descriptors import DEFAULT_EXTRACTION, ExtractionConfig, effective_workers, extract_vectors
from aml.descriptors.extraction import with_fixed_batches
from aml.losses import Loss, LossKind, TeacherContext, TupleBatch
from aml.networks.checkpoint import RunRecord, checkpoint_state, non_finite_weights, save_checkpoint
from aml.networks.retrieval_net import ImageRetrievalNet
from aml.reports.curves import TestedEpoch, TestRecords, TrainingHistory
from aml.training.batchnorm import calibrate_if_vanishing, freeze_batchnorm
from aml.training.config import TrainSettings
from aml.training.modes import (
    Draw,
    EpochSizes,
    Mode,
    Negatives,
    TrainingTuple,
    build_epoch_tuples,
    epoch_size_flag,
    epoch_tuple_count,
    triplet_pool_count,
    validation_mode,
)
from aml.training.optim import set_epoch_lr
from aml.training.parallel import Parallel
from aml.training.resume import resume_run
from aml.training.run_folder import RunLog, latest_checkpoint
from aml.training.tuples import (
    TupleDataset,
    TupleItem,
    collate_list,
    encode_batch,
    from_pixels,
    shape_grouped_batches,
)
from aml.utils.atomic import remove_orphan_temporaries
from aml.utils.distributed import World, barrier, from_main, warn_once
from aml.utils.progress import progress_bar
from aml.utils.seeding import generator as seeded_generator
from aml.utils.errors import ConfigError, TrainingDiverged

log = logging.getLogger(__name__)


class _NonFiniteLoss(ArithmeticError):
    def __init__(self, value: float):
        super().__init__(value)
        self.value = value


@dataclass
class Split:
    """One split of the training set: its db, image paths and teacher descriptors."""

    db: TrainingDb
    images: List[str]
    teacher: Optional[torch.Tensor] = None
    sizes: Optional[List[Tuple[int, int]]] = field(default=None, repr=False)
    context: Optional[TeacherContext] = field(default=None, repr=False)

    def image_sizes(self) -> List[Tuple[int, int]]:
        """(width, height) of every image, read from the file headers once."""
        if self.sizes is None:
            log.info(">> Reading the sizes of %d images (shape-grouped batches)", len(self.images))
            self.sizes = [image_size(path) for path in self.images]
        return self.sizes

    def teacher_context(self) -> TeacherContext:
        """The teacher's descriptors with the images' clusters and class prototypes, built once
        (for the losses that ``needs_context``)."""
        if self.context is None:
            if self.teacher is None:
                raise ConfigError("the teacher's view of the split needs the teacher's descriptors (--teacher)")
            self.context = TeacherContext.of(self.teacher.t(), self.db["cluster"])
        return self.context


@dataclass(frozen=True)
class Learner:
    """What a run trains: the network, the loss it learns by, the optimizer that steps it,
    and the training mode that draws its tuples (one the loss accepts)."""

    net: ImageRetrievalNet
    criterion: Loss
    optimizer: torch.optim.Optimizer
    mode: Mode
    margin: Optional[float] = None  # the --loss-margin the run folder is named by; None: not recorded


def _check_finite(losses: List[float]) -> None:
    bad = [value for value in losses if not np.isfinite(value)]
    if bad:
        raise _NonFiniteLoss(bad[0])


class Trainer:
    """Trains a `Learner` (its network with its loss, in its mode); checkpoints go to ``run_dir``.

    With a distributed ``world`` (torchrun) each rank trains its slice of every global
    mini-batch under DistributedDataParallel (`aml.training.parallel`); rank 0 alone
    writes logs and checkpoints. The trainer owns what it is given: the network goes to
    channels_last, and the splits' teacher descriptors to the compute device."""

    def __init__(
        self,
        learner: Learner,
        train: Split,
        val: Optional[Split],
        run_dir: Path,
        settings: TrainSettings,
        extraction: ExtractionConfig = DEFAULT_EXTRACTION,
        evaluate: Optional[Callable[[ImageRetrievalNet, int], TestRecords]] = None,
        world: World = World(),
    ):
        net = learner.net
        self.learner = learner
        self.val_mode = validation_mode(learner.mode)
        self.train_split, self.val_split, self.run_dir, self.settings = train, val, Path(run_dir), settings
        # mining's extraction; its device (default: the network's), workers and progress are the loop's too
        self.device = extraction.device_for(net)
        self.extraction = extraction.but(device=self.device)
        self.world = world
        for split in (train, val):  # the teacher's descriptors stay on the device for the whole run
            if split is not None and split.teacher is not None:
                split.teacher = split.teacher.to(self.device)
        net.to(memory_format=torch.channels_last)  # faster convolutions on the CPU and GPU
        self.transform = image_transform(net.meta["mean"], net.meta["std"])
        # the loader hands on uint8 pixels, normalised here: a quarter of the bytes to share, pin and copy
        self.pixels = PixelNormalizer(net.meta["mean"], net.meta["std"], self.device)
        self.evaluate = evaluate
        self.parallel = Parallel(net, world, self.device, settings.batch_size, settings.train_batchnorm)
        # on CUDA, forwards padded to a few batch sizes (cuDNN prepares kernels per input shape);
        # with batch statistics the padding would change them
        self.fixed_batches = self.device.type == "cuda" and not settings.train_batchnorm
        if world.is_main:
            for orphan in remove_orphan_temporaries(self.run_dir):
                log.info(">> removed %s, left by an interrupted write", orphan)
        self.log = RunLog(self.run_dir, enabled=world.is_main)
        self.curves = TrainingHistory(self.run_dir, enabled=world.is_main)
        self.min_loss = float("inf")
        self.start_epoch = 0
        self.history: List[TestedEpoch] = []

    # -- tuples ---------------------------------------------------------------------------
    def _encoder(self, split: Split) -> Callable[[Sequence[int]], torch.Tensor]:
        def encode(indices: Sequence[int]) -> torch.Tensor:
            return extract_vectors(
                self.learner.net,
                [split.images[i] for i in indices],
                self.settings.image_size,
                self.transform,
                config=self.extraction,
            )

        return encode

    def epoch_tuples(self, split: Split, epoch: int, everything: bool = False) -> List[TrainingTuple]:
        """Tuples of ``epoch`` from the seed's tuple stream; ``everything`` = validation: all
        pairs and images, in the tuples of the validation mode (``Mode.validate_as``)."""
        s = self.settings
        sizes = self._sizes(split, everything)
        mode = self.val_mode if everything else self.learner.mode
        generator = seeded_generator(s.seed, "val-tuples" if everything else "tuples", epoch)
        tuples, distance = build_epoch_tuples(
            mode, split.db, sizes, generator, self._encoder(split), split.teacher, s.sym, str(self.device)
        )
        if distance:
            log.info(">>>> Average negative l2-distance: %.2f", distance)
        # rank 0's tuples for all: ranks that mined apart (a tie broken otherwise on another GPU) would train apart
        return from_main(tuples, self.world)

    def _sizes(self, split: Split, everything: bool) -> EpochSizes:
        s = self.settings
        if everything:
            return EpochSizes(len(split.db["qidxs"]), len(split.images), s.neg_num)
        return EpochSizes(s.query_size, s.pool_size, s.neg_num)

    def check_batches(self) -> None:
        """Refuse, before any mining, a split whose epoch draws fewer tuples than a batch: a
        training epoch would train nothing, a validation would measure nothing (NaN), and no
        model_best would ever be written.

        A split of one landmark (cluster) is refused where the mode mines negatives: they come
        from other landmarks, and its tuples would have none; so is a triplet mode's pool of
        fewer than 2 images beside the anchors. A ``neg_num`` above the other landmarks' number
        gets a warning: a tuple takes one negative per landmark.

        Raises:
            ConfigError: naming the split, its tuples or landmarks and the fix.
        """
        s = self.settings
        validated = self.val_split if s.val else None
        for name, split, mode, everything, outcome in (
            ("train", self.train_split, self.learner.mode, False, "no batch would train"),
            ("val", validated, self.val_mode, True, "validation would measure nothing and no model_best be written"),
        ):
            if split is None:
                continue
            no_val = "; or train without validation (--no-val)" if everything else ""
            landmarks = len(set(split.db["cluster"]))
            if mode.negatives is not Negatives.NONE and s.neg_num and landmarks < 2:
                raise ConfigError(
                    f"the {name} split holds images of {landmarks} landmark: --mode {mode.name} takes its "
                    f"negatives from other landmarks than the query's and would find none; give the set 2 or "
                    f"more landmarks in each split (make_trainset gives both two from 4 landmarks){no_val}"
                )
            if mode.negatives is not Negatives.NONE and s.neg_num > landmarks - 1:
                warn_once(
                    log,
                    ">> --neg-num %d: the %s split holds %d landmarks, so a tuple gets %d negatives at most (one "
                    "per landmark other than its query's)",
                    s.neg_num,
                    name,
                    landmarks,
                    landmarks - 1,
                )
            sizes = self._sizes(split, everything)
            pool = triplet_pool_count(split.db, sizes)
            if mode.draw is Draw.TRIPLETS and pool < 2:
                raise ConfigError(
                    f"the {name} split leaves {pool} images beside its anchors: --mode {mode.name} draws each "
                    f"anchor's positive and negative among them, 2 or more; give --pool-size 2 or more, or a "
                    f"smaller --query-size{no_val}"
                )
            count = epoch_tuple_count(mode, split.db, sizes)
            if count < s.batch_size:
                raise ConfigError(
                    f"the {name} split draws {count} tuples an epoch, fewer than --batch-size {s.batch_size}: "
                    f"{outcome}; give --batch-size {count} or less{no_val}"
                )
            if not everything:
                self._check_steps(count // s.batch_size, epoch_size_flag(mode, split.db, sizes))
            elif count % s.batch_size:
                warn_once(
                    log,
                    ">> validation scores %d of the val split's %d tuples each epoch (whole batches of --batch-size "
                    "%d, as the original), and which are left out changes with each epoch's draw; a --batch-size "
                    "that divides %d scores them all",
                    count - count % s.batch_size,
                    count,
                    s.batch_size,
                    count,
                )

    def _check_steps(self, batches: int, larger: Optional[str]) -> None:
        """Refuse an ``update_every`` above the batches of an epoch (the gradients, zeroed when an
        epoch starts, would never be applied: checkpoints of untouched weights), naming the
        flag that would draw more tuples (``larger``) where one would; name the batches of each
        epoch whose gradients are dropped (as the original drops them)."""
        every = self.settings.update_every
        if every > batches:
            more = f", or a larger {larger}" if larger else ""
            raise ConfigError(
                f"--update-every {every}: an epoch holds {batches} batches, so the optimizer would never step "
                f"(the accumulated gradients are dropped when the next epoch starts); give --update-every "
                f"{batches} or less, a smaller --batch-size{more}"
            )
        if batches % every:
            warn_once(
                log,
                ">> --update-every %d: an epoch holds %d batches, so the gradients of its last %d are dropped "
                "(as the original drops them); their losses still count in the epoch's training loss",
                every,
                batches,
                batches % every,
            )

    def _batches(
        self, split: Split, tuples: List[TrainingTuple], generator: torch.Generator, shuffle: bool
    ) -> List[List[int]]:
        """The epoch's global mini-batches (tuple indices; a trailing partial batch dropped),
        shuffled by the seed's shuffle stream (independent of the tuple draw). With
        ``train_batchnorm`` a training batch holds queries of one shape where possible (one
        forward, whole-batch statistics)."""
        s = self.settings
        if shuffle and s.train_batchnorm:
            sizes = split.image_sizes()
            keys = [resized_shape(sizes[t.members[0]], s.image_size) for t in tuples]
            return shape_grouped_batches(keys, s.batch_size, generator)
        # a DataLoader, not a bare sampler: its iterator draws a seed from the generator first (the same order)
        indices = cast(Dataset, range(len(tuples)))  # a range is a map-style dataset of its numbers
        order: DataLoader = DataLoader(
            indices, batch_size=s.batch_size, shuffle=shuffle, drop_last=True, generator=generator, collate_fn=list
        )
        return list(order)

    def _loader(self, split: Split, tuples: List[TrainingTuple], epoch: int, shuffle: bool) -> DataLoader:
        """This rank's part of every global mini-batch (all of it in one process)."""
        s = self.settings
        dataset = TupleDataset(tuples, split.images, s.image_size)
        generator = seeded_generator(s.seed, "shuffle", epoch)
        batches = self._batches(split, tuples, generator, shuffle)
        batches = self.parallel.my_part(batches)
        return DataLoader(
            dataset,
            batch_sampler=batches,
            collate_fn=collate_list,
            num_workers=effective_workers(self.extraction.workers, self.device),
            generator=generator,
            pin_memory=self.device.type == "cuda",  # in the loader's thread: TupleItem.pin_memory
        )

    # -- losses ---------------------------------------------------------------------------
    def _encode(self, encode, chunk: List[TupleItem], split: Split) -> TupleBatch:
        """The chunk's tuples as one batch (with the split's `TeacherContext` for a loss that
        ``needs_context``); for a relational loss under torchrun, the whole global batch
        (every rank's rows gathered, with gradients: the loss relates them all)."""
        shapes = self.parallel.shapes([image for item in chunk for image in item.images])
        context = split.teacher_context() if self.learner.criterion.needs_context else None
        batch = encode_batch(
            encode, chunk, self.device, split.teacher, shapes, self.learner.criterion.needs_target, context
        )
        return self.parallel.whole_batch(batch) if self.learner.criterion.kind is LossKind.RELATIONAL else batch

    def _autocast(self):
        """bfloat16 autocast of the forward passes with ``autocast`` (gradients stay fp32)."""
        if not self.settings.autocast:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def batch_losses(self, batch: List[TupleItem], split: Split, backward: bool, sync: bool = True) -> List[float]:
        """The loss values of a batch of ``split``'s tuples: one per tuple (tuple losses) or one
        per batch (relational losses). With frozen BatchNorm and a tuple loss, one tuple is encoded
        and back-propagated at a time (the original's memory profile) unless ``batch_forward``;
        otherwise all student images of the batch go through together, one forward per image
        shape (with ``train_batchnorm`` their batch statistics are those of the mini-batch;
        with frozen BatchNorm the result equals tuple by tuple, faster, with more memory).

        Distributed, ``batch`` is this rank's slice and the losses returned are the global
        batch's; tuple losses are scaled by the number of ranks before backward, because
        DistributedDataParallel averages gradients where one process sums them (a relational
        loss is already whole on every rank: its gathered rows send gradients back). A loss
        that ``batch_mean`` (the later papers') steps with the mean over the global batch.
        ``sync`` False: the optimizer does not step after this batch (no gradient reduction)."""
        s = self.settings
        relational = self.learner.criterion.kind is LossKind.RELATIONAL
        chunks = [batch] if s.train_batchnorm or s.batch_forward or relational else [[item] for item in batch]
        encode = from_pixels(self.parallel.encode if backward else self.learner.net.descriptors, self.pixels)
        if self.fixed_batches:
            encode = with_fixed_batches(encode)
        scale: float = 1 if relational else self.parallel.loss_scale
        if self.learner.criterion.batch_mean:  # this rank's mean; DistributedDataParallel averages the ranks'
            scale = 1 / len(batch)
        values: List[torch.Tensor] = []
        for k, chunk in enumerate(chunks):
            with self.parallel.no_sync(backward and sync and k + 1 == len(chunks)):
                with self._autocast():
                    tuples = self._encode(encode, chunk, split)
                # the loss in float32 on every device: CUDA's autocast runs some of its ops in
                # float32 and others in bfloat16 (acos and a scatter of the margin losses clash)
                chunk_values = self.learner.criterion(tuples).float().reshape(-1)
                total = chunk_values.sum()
                if backward:
                    (total * scale if scale != 1 else total).backward()
            values.append(chunk_values.detach())
        # the batch's one wait for the device; a non-finite loss stops the run before the optimizer steps
        losses = self.parallel.global_losses(torch.cat(values), relational)
        _check_finite(losses)
        return losses

    def _divergence_message(self, epoch: int, batch: int, batches: int, value: float) -> str:
        last = latest_checkpoint(self.run_dir)
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written"
        lr = self.learner.optimizer.param_groups[0]["initial_lr"]
        return (
            f"training stopped: loss is {value} at epoch {epoch + 1}, batch {batch + 1}/{batches}; likely cause: "
            f"the learning rate is too high (--lr {lr:g}), or an image or a descriptor holds non-finite values; "
            f"nothing non-finite was saved and {kept}"
        )

    def train_epoch(self, epoch: int) -> float:
        """One epoch: set the lr, build tuples with the current weights, step every
        ``update_every`` batches (a trailing partial accumulation is dropped)."""
        s = self.settings
        set_epoch_lr(self.learner.optimizer, epoch)
        log.info(">> Creating tuples for an epoch of %s-%s...", "train", self.learner.mode.name)
        loader = self._loader(self.train_split, self.epoch_tuples(self.train_split, epoch), epoch, shuffle=True)
        self.learner.net.train()
        if not s.train_batchnorm:
            freeze_batchnorm(self.learner.net)
        self.learner.optimizer.zero_grad()
        losses: List[float] = []
        start = time.time()
        bar = progress_bar(
            loader,
            desc=f"epoch {epoch + 1}/{s.epochs}",
            unit="batch",
            enabled=self.extraction.progress and self.world.is_main,
            leave=False,
        )
        for i, batch in enumerate(bar):
            try:
                losses += self.batch_losses(batch, self.train_split, backward=True, sync=(i + 1) % s.update_every == 0)
            except _NonFiniteLoss as err:
                message = self._divergence_message(epoch, i, len(loader), err.value)
                self.log.line(message, echo=False)
                raise TrainingDiverged(message) from None
            bar.set_postfix(loss=f"{np.mean(losses):.4f}", refresh=False)
            if (i + 1) % s.update_every == 0:
                self.learner.optimizer.step()
                self.learner.optimizer.zero_grad()
            if (i + 1) % s.print_freq == 0 or i == 0 or i + 1 == len(loader):
                self.log.line(
                    f">> Train: [{epoch + 1}][{i + 1}/{len(loader)}]\tTime {time.time() - start:.3f}\t"
                    f"Loss {losses[-1]:.4f} ({np.mean(losses):.4f})"
                )
        assert losses, "check_batches refuses a split of no full batch"
        return float(np.mean(losses))

    @torch.no_grad()
    def validate(self, epoch: int) -> float:
        """Mean per-tuple loss on the val split (its pairs in whole batches, full pool, in the
        tuples of the validation mode, as the original), no gradient."""
        split = self.val_split
        if split is None:
            raise ValueError("validation needs the val split")
        loader = self._loader(split, self.epoch_tuples(split, epoch, everything=True), epoch, shuffle=False)
        self.learner.net.eval()
        # a relational loss is one value per batch: the original records it per tuple (/ nq, weight nq)
        tuples = self.settings.batch_size if self.learner.criterion.kind is LossKind.RELATIONAL else 1
        losses: List[float] = []
        bar = progress_bar(
            loader,
            desc=f"validation {epoch + 1}",
            unit="batch",
            enabled=self.extraction.progress and self.world.is_main,
            leave=False,
        )
        for i, batch in enumerate(bar):
            try:
                losses += [value / tuples for value in self.batch_losses(batch, split, backward=False)]
            except _NonFiniteLoss as err:  # finite weights (checked when saved), a non-finite descriptor
                message = (
                    f"validation stopped: its loss is {err.args[0]} at epoch {epoch + 1}, batch {i + 1}/{len(loader)}: "
                    "a val image or the network gives non-finite descriptors (with --amp, whose forwards run in "
                    "bfloat16: try --no-amp); the epoch's checkpoints are not written"
                )
                self.log.line(message, echo=False)
                raise TrainingDiverged(message) from None
        value = float(np.mean(losses)) if losses else float("nan")
        log.info(">> Val: [%d]\tLoss %.4f", epoch + 1, value)
        return value

    def calibrate_if_vanishing(self) -> bool:
        """BatchNorm statistics from training images where a random trunk's activations vanish
        (`aml.training.batchnorm.calibrate_if_vanishing`)."""
        split = self.train_split

        def load(path: str) -> torch.Tensor:
            return self.transform(load_and_resize(path, self.settings.image_size))

        return calibrate_if_vanishing(
            self.learner.net, split.images, load, seeded_generator(self.settings.seed, "calibration"), self.device
        )

    # -- checkpoints ----------------------------------------------------------------------
    def save(self, epoch: int, is_best: bool) -> None:
        """model_best on a new best, then model_epoch<N> every save_freq epochs and after the
        last one (atomic writes). Best first: a resumed run restarts from the last model_epochN and retrains
        (deterministically on the CPU) every epoch after it, so a best written by an epoch whose
        own checkpoint was lost is written again; on a GPU the retrained epoch may round
        differently, and the earlier best, a complete checkpoint, stays."""
        bad = non_finite_weights(self.learner.net.state_dict())
        if bad:
            raise TrainingDiverged(
                f"training stopped: after epoch {epoch + 1} the weights {bad[:3]} are not finite; "
                "nothing was saved for this epoch; lower --lr"
            )
        if self.world.is_main:
            state = checkpoint_state(self.learner.net, epoch + 1, self.min_loss, self.learner.optimizer, self.record)
            if is_best:
                save_checkpoint(state, self.run_dir / "model_best.pth.tar")
            last = epoch + 1 == self.settings.epochs  # trained and logged: never lost for --save-freq
            if (epoch + 1) % self.settings.save_freq == 0 or last:
                save_checkpoint(state, self.run_dir / f"model_epoch{epoch + 1}.pth.tar")
        barrier(self.world)

    @property
    def min_loss_of(self) -> str:
        """The loss model_best is chosen by: validation's, or training's with ``--no-val``."""
        return "validation" if self.settings.val else "training"

    @property
    def record(self) -> RunRecord:
        """What the run's checkpoints record of it: the loss model_best is chosen by
        (validation's, or training's with ``--no-val``), the learner's margin and how mining
        encodes images."""
        return RunRecord(self.min_loss_of, self.learner.margin, self.extraction.pixel_path())

    def resume(self, name: str) -> bool:
        """Continue from ``run_dir/name``, or the latest model_epochN there (`resume_run`);
        False if none exists."""
        found = resume_run(self.run_dir, name, self.learner.net, self.learner.optimizer, self.record)
        if found is None:
            return False
        self.start_epoch, self.min_loss = found
        return True

    def _test_resumed_epoch(self) -> None:
        """Test the resumed checkpoint's epoch when --test-freq asks for it and its record has
        no test: the run was stopped while it tested that epoch, which it saved before."""
        s, done = self.settings, self.start_epoch
        if self.evaluate is None or not s.test_freq or done == 0 or done % s.test_freq:
            return
        # rank 0's history decides for all: every rank tests together, and a folder may be seen late
        record = from_main(next((r for r in self.curves.records if r["epoch"] == done), None), self.world)
        if record is None or "test" in record:
            return
        log.info(">> epoch %d was saved without the test --test-freq asks for: testing it now", done)
        untested = {key: value for key, value in record.items() if key != "test"}
        self.curves.add(cast(TestedEpoch, dict(untested, test=self.evaluate(self.learner.net, done - 1))))

    def fit(self) -> List[TestedEpoch]:
        """Train epochs start_epoch .. epochs-1; returns one record per epoch (its losses, lr
        and ``seconds``: the wall time of its mining and training, without validation)."""
        s = self.settings
        if self.start_epoch >= s.epochs:
            warn_once(
                log,
                ">> nothing to train: the checkpoint resumed has done %d epochs, --epochs is %d; raise --epochs "
                "to train on",
                self.start_epoch,
                s.epochs,
            )
        self.check_batches()
        # epochs about to be trained again (after a crash, or a rerun in the same folder) lose their old lines
        self.log.restart_at(self.start_epoch)
        self.curves.restart_at(self.start_epoch)
        self._test_resumed_epoch()
        self.log.line(f">> Seed {s.seed}; {self.learner.mode.name} validated on {self.val_mode.name} tuples")
        for epoch in range(self.start_epoch, s.epochs):
            started = time.perf_counter()
            train_loss = self.train_epoch(epoch)
            seconds = time.perf_counter() - started  # mining and training, without validation
            val_loss = None
            if s.val and self.val_split is not None and (epoch + 1) % s.val_freq == 0:
                val_loss = self.validate(epoch)
            score = val_loss if val_loss is not None else (train_loss if not s.val else None)
            is_best = score is not None and score < self.min_loss
            if is_best and score is not None:
                self.min_loss = score
            # logs first: an epoch logged but not saved is trained again and its lines replaced
            self.log.losses(epoch, train_loss, val_loss)
            record: TestedEpoch = {
                "epoch": epoch + 1,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "lr": self.learner.optimizer.param_groups[0]["lr"],
                "seconds": seconds,
            }
            self.curves.add(record)
            self.save(epoch, is_best)
            if self.evaluate is not None and s.test_freq and (epoch + 1) % s.test_freq == 0:
                record["test"] = self.evaluate(self.learner.net, epoch)
                self.curves.add(record)
            self.history.append(record)
        return self.history
