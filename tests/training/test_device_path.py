"""What makes a training batch slow on a GPU, counted on the CPU: host syncs per batch and
the input shapes the network meets (cuDNN prepares kernels anew for every one)."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from aml.data.trainsets import load_training_db
from aml.descriptors import ExtractionConfig
from aml.losses import LOSSES, LossKind, build_loss
from aml.networks import build_network
from aml.training.modes import MODES
from aml.training.optim import build_optimizer
from aml.training.trainer import Learner, Split, Trainer, TrainSettings
from tests.dispatch import HostWaits

DIM, SIZE = 64, 48


@pytest.fixture(scope="module")
def split(synth_root):
    db = load_training_db("synth-sfm", "train", synth_root)
    teacher = F.normalize(torch.randn(DIM, len(db["images"]), generator=torch.Generator().manual_seed(0)), dim=0)
    return Split(db, list(db["images"]), teacher)


def make_trainer(split, folder, loss="contrastive", mode="ts", device="cpu", **settings):
    torch.manual_seed(0)
    net = build_network("squeezenet1_1", pretrained=False, teacher_dim=DIM).to(device)  # as the runner places it
    optimizer = build_optimizer(net, "adam", 1e-3, 0.9, 1e-6)
    options = dict(image_size=SIZE, neg_num=2, query_size=8, pool_size=16, batch_size=4, epochs=1, val=False,
                   print_freq=100)
    return Trainer(Learner(net, build_loss(loss), optimizer, MODES[mode]), split, None, folder,
                   TrainSettings(**dict(options, **settings)), ExtractionConfig(workers=0, device=device))


def first_batch(trainer, split):
    loader = trainer._loader(split, trainer.epoch_tuples(split, 0), 0, shuffle=True)
    return next(iter(loader))


@pytest.mark.parametrize("batch_forward", [False, True], ids=["tuple-by-tuple", "batch-forward"])
def test_a_training_batch_reads_no_scalar_from_the_device(split, tmp_path, batch_forward):
    trainer = make_trainer(split, tmp_path, batch_forward=batch_forward)
    batch = first_batch(trainer, split)
    with HostWaits() as reads:
        losses = trainer.batch_losses(batch, split, backward=True)
    assert len(losses) == 4 and all(loss >= 0 for loss in losses)
    assert reads.count == 0  # the loss values come back in one copy per batch


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_no_loss_makes_the_host_wait_for_the_device_in_a_training_batch(split, tmp_path, loss):
    """rkd's mean over the positive distances (``d[d > 0]``) waited twice a batch on CUDA to
    learn how many there were; each loss is tried in the first mode it works with. (The split's
    teacher context, computed once per run, is computed before.)"""
    mode = next(name for name, m in MODES.items() if LOSSES[loss].accepts(m))
    trainer = make_trainer(split, tmp_path, loss=loss, mode=mode)
    batch = first_batch(trainer, split)
    split.teacher_context()
    with HostWaits() as waits:
        losses = trainer.batch_losses(batch, split, backward=True)
    assert len(losses) == (1 if LOSSES[loss].kind is LossKind.RELATIONAL else 4) and all(np.isfinite(losses))
    # on the CPU alone, the triplet loss reads its check of one positive back (CUDA asserts it on
    # the device: tests/layers/test_functional.py)
    on_the_cpu_only = {"_local_scalar_dense"} if loss == "triplet" else set()
    assert [name for name in waits.names if name not in on_the_cpu_only] == []


def test_fixed_batches_give_the_same_losses_and_gradients_with_power_of_two_forwards(split, tmp_path):
    runs = []
    for fixed in (False, True):
        trainer = make_trainer(split, tmp_path / str(fixed), batch_forward=True)
        trainer.fixed_batches = fixed  # the CUDA default, on the CPU
        shapes, formats = set(), set()
        def seen(m, args):
            shapes.add(tuple(args[0].shape))
            formats.add(args[0].is_contiguous(memory_format=torch.channels_last) and not args[0].is_contiguous())
        trainer.learner.net.features[0].register_forward_pre_hook(seen)
        trainer.learner.net.train()
        losses = trainer.batch_losses(first_batch(trainer, split), split, backward=True)
        runs.append((losses, [p.grad.clone() for p in trainer.learner.net.parameters() if p.grad is not None], shapes))
        assert formats == {True}  # padded batches too reach the network in its channels_last (no conversion)
    (loose_losses, loose_grads, loose), (fixed_losses, fixed_grads, fixed) = runs
    assert loose_losses == pytest.approx(fixed_losses, rel=1e-5, abs=1e-6)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(loose_grads, fixed_grads))
    def power_of_two(size):
        return size & (size - 1) == 0
    assert not all(power_of_two(shape[0]) for shape in loose)  # the batch meets a group of 3 images
    assert all(power_of_two(shape[0]) for shape in fixed), fixed
    assert {shape[1:] for shape in fixed} == {shape[1:] for shape in loose} and len(fixed) < len(loose)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA training path needs CUDA")
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("loss", ["contrastive", "triplet"])
def test_a_cuda_training_step_gives_the_cpus_losses(split, tmp_path, loss, autocast):
    """The CUDA path of a training step: pinned tuple images copied asynchronously, forwards
    padded to powers of two in channels_last, bfloat16 autocast, the triplet loss's check on the
    device and the fused optimizer's step. Its losses are the CPU's (TF32 convolutions and
    bfloat16 round otherwise) and its weights stay finite."""
    runs = {}
    for device in ("cpu", "cuda"):
        own = Split(split.db, split.images, split.teacher.clone())  # the trainer moves the teacher to its device
        trainer = make_trainer(own, tmp_path / device, loss=loss, device=device, batch_forward=True, autocast=autocast)
        assert trainer.fixed_batches == (device == "cuda")
        losses = trainer.batch_losses(first_batch(trainer, own), own, backward=True)
        trainer.learner.optimizer.step()
        assert all(torch.isfinite(p).all() for p in trainer.learner.net.parameters())
        runs[device] = losses
    assert len(runs["cuda"]) == 4 and all(np.isfinite(runs["cuda"]))
    assert runs["cuda"] == pytest.approx(runs["cpu"], rel=0.1 if autocast else 0.01, abs=1e-3)


def test_fixed_batches_are_for_cuda_with_frozen_batchnorm(split, tmp_path):
    assert not make_trainer(split, tmp_path).fixed_batches  # the CPU: no kernels to prepare
    assert not make_trainer(split, tmp_path, train_batchnorm=True).fixed_batches


def test_an_epoch_with_fixed_batches_meets_at_most_seven_batch_sizes_per_image_shape(split, tmp_path):
    """Over a whole epoch (mining and training), as on CUDA: every forward's batch is a power
    of two, so cuDNN meets at most 7 batch sizes (up to 64) per image shape."""
    counts = []
    for fixed in (False, True):
        trainer = make_trainer(split, tmp_path / str(fixed), batch_forward=True, query_size=48, batch_size=8)
        trainer.fixed_batches = fixed
        trainer.extraction = trainer.extraction.but(fixed_batches=fixed)
        shapes = set()
        trainer.learner.net.features[0].register_forward_pre_hook(lambda m, args: shapes.add(tuple(args[0].shape)))
        trainer.train_epoch(0)
        counts.append(shapes)
    loose, fixed = counts
    spatial = {shape[2:] for shape in fixed}
    assert any(shape[0] & (shape[0] - 1) for shape in loose)  # batches of 3, 5, ... images
    assert all(shape[0] & (shape[0] - 1) == 0 for shape in fixed), sorted(fixed)
    assert len(fixed) <= 7 * len(spatial) and spatial == {shape[2:] for shape in loose}


def test_under_autocast_only_the_forward_runs_in_bfloat16_and_the_loss_in_float32(split, tmp_path):
    """CUDA's autocast runs acos in float32 and matrix products in bfloat16, so a margin loss
    under it mixed dtypes in a scatter (the CPU's autocast has no acos rule): the criterion
    runs outside autocast, on float32 rows, on every device."""
    trainer = make_trainer(split, tmp_path, batch_forward=True, autocast=True)
    seen = []
    criterion = trainer.learner.criterion.forward

    def recording(batch):
        seen.append((torch.is_autocast_enabled("cpu"), batch.anchors.dtype, batch.members.dtype))
        return criterion(batch)

    trainer.learner.criterion.forward = recording
    batch = first_batch(trainer, split)  # its tuples are mined by an extraction, not under autocast on the CPU
    forwards = []
    trainer.learner.net.features[0].register_forward_pre_hook(lambda m, args: forwards.append(torch.is_autocast_enabled("cpu")))
    losses = trainer.batch_losses(batch, split, backward=True)
    assert len(losses) == 4 and forwards and all(forwards)
    assert seen == [(False, torch.float32, torch.float32)]


def test_the_loaders_pinning_copies_every_image_of_a_tuple(monkeypatch):
    """What the loader's pinning thread does with a batch of tuples, on the CPU: every image of
    each tuple is pinned (here: recorded and copied), the tuple kept."""
    from torch.utils.data._utils.pin_memory import pin_memory

    from aml.training.tuples import TupleItem

    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *args, **kwargs: pinned.append(self) or self.clone())
    images = [torch.zeros(3, 8, 8, dtype=torch.uint8), torch.ones(3, 8, 8, dtype=torch.uint8)]
    marker = object()
    [copy] = pin_memory([TupleItem(marker, images)])
    assert [id(image) for image in pinned] == [id(image) for image in images] and copy.tuple is marker
    assert all(torch.equal(a, b) and a is not b for a, b in zip(copy.images, images, strict=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="page-locked memory needs CUDA")
def test_tuple_images_arrive_pinned_for_cuda():
    """The loader's thread pins a tuple's images, so the training loop copies them without pinning."""
    from torch.utils.data import DataLoader

    from aml.training.tuples import TupleItem, collate_list

    items = [TupleItem(None, [torch.zeros(3, 8, 8), torch.ones(3, 8, 8)])]
    pinned = next(iter(DataLoader(items, batch_size=1, collate_fn=collate_list, pin_memory=True)))
    assert all(image.is_pinned() for image in pinned[0].images)


@pytest.mark.kernels
def test_tuple_images_travel_as_uint8_and_meet_the_network_as_the_transform_gives_them(split, tmp_path):
    """A quarter of the bytes through the loader, the pinned memory and the copy to the GPU;
    normalised on the compute device to the values of ToTensor and Normalize in the worker."""
    from aml.data.images import load_and_resize
    from aml.training.tuples import from_pixels

    trainer = make_trainer(split, tmp_path)
    batch = first_batch(trainer, split)
    pixels = [image for item in batch for image in item.images]
    assert pixels and all(image.dtype == torch.uint8 for image in pixels)
    item = batch[0]
    students = [m for m, teacher in zip(item.tuple.members, item.tuple.from_teacher, strict=True) if not teacher]
    floats = torch.stack([trainer.transform(load_and_resize(split.images[m], SIZE)) for m in students])
    inputs = from_pixels(lambda x: x, trainer.pixels)(torch.stack(item.images))  # what the network receives
    assert torch.equal(inputs, floats)


def test_the_finiteness_check_before_a_checkpoint_reads_one_scalar_for_all_weights():
    """save() read one boolean per weight tensor (hundreds per checkpoint, each a wait on CUDA)."""
    from aml.training.trainer import non_finite_weights

    state = build_network("squeezenet1_1", pretrained=False, teacher_dim=DIM).state_dict()
    assert len(state) > 50
    with HostWaits() as reads:
        assert non_finite_weights(state) == []
    assert reads.count == 1
    state["features.3.expand1x1.bias"][2] = float("nan")
    state["pool.p"].fill_(float("-inf"))
    assert non_finite_weights(state) == ["features.3.expand1x1.bias", "pool.p"]
    assert non_finite_weights({"count": torch.tensor(3)}) == []


def test_a_relational_validation_loss_is_per_tuple_as_the_originals(split, tmp_path, monkeypatch):
    """The original records a relational batch's loss / nq with weight nq; aml logged the batch's
    value, batch-size times larger (model_best unchanged, the logged val_loss not the original's)."""
    torch.manual_seed(0)
    net = build_network("squeezenet1_1", pretrained=False, teacher_dim=DIM)
    settings = TrainSettings(image_size=SIZE, neg_num=0, query_size=8, pool_size=16, batch_size=4, epochs=1,
                             print_freq=100)
    trainer = Trainer(Learner(net, build_loss("rkd"), build_optimizer(net, "adam", 1e-3, 0.9, 1e-6), MODES["rand"]), split,
                      split, tmp_path, settings, ExtractionConfig(workers=0, device="cpu"))
    batches = []
    real = Trainer.batch_losses

    def recorded(self, *args, **kwargs):
        batches.append(real(self, *args, **kwargs))
        return batches[-1]

    monkeypatch.setattr(Trainer, "batch_losses", recorded)
    value = trainer.validate(0)
    assert all(len(values) == 1 for values in batches) and len(batches) > 1
    assert value == pytest.approx(sum(values[0] for values in batches) / len(batches) / 4)


LATER_PAPERS = ("bct", "hvs", "lce", "csd")


def test_the_later_papers_losses_and_only_they_step_with_the_batch_mean():
    assert {name for name in LOSSES if build_loss(name).batch_mean} == set(LATER_PAPERS)


@pytest.mark.parametrize("loss", LATER_PAPERS)
def test_a_batch_mean_loss_steps_with_the_mean_of_the_batch(split, tmp_path, loss):
    """BCT, HVS, LCE and CSD average their per-image losses over the batch, as their papers'
    code does; aml summed them, a batch-size times larger step with SGD."""
    grads = []
    for mean in (True, False):
        torch.manual_seed(0)
        net = build_network("squeezenet1_1", pretrained=False, teacher_dim=DIM)
        settings = TrainSettings(image_size=SIZE, neg_num=0, query_size=8, pool_size=16, batch_size=4, epochs=1,
                                 print_freq=100)
        criterion = build_loss(loss)
        assert criterion.batch_mean
        criterion.batch_mean = mean  # the same loss, summed: the steps differ by the batch size
        trainer = Trainer(Learner(net, criterion, build_optimizer(net, "sgd", 1e-3, 0.9, 1e-6), MODES["reg"]), split, None,
                          tmp_path / str(mean), settings, ExtractionConfig(workers=0, device="cpu"))
        losses = trainer.batch_losses(first_batch(trainer, split), split, backward=True)
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None]))
    assert len(losses) == 4
    torch.testing.assert_close(grads[0] * 4, grads[1], rtol=1e-4, atol=1e-7)


def test_a_split_of_one_landmark_is_refused_where_the_mode_mines_negatives(split, tmp_path):
    """Negatives come from other landmarks: such a split trained and validated on tuples with
    none, without a word (the val split of any own set of 3 landmarks)."""
    from aml.utils.errors import ConfigError

    lone = Split(dict(split.db, cluster=[7] * len(split.db["cluster"])), split.images, split.teacher)
    trainer = make_trainer(lone, tmp_path)
    with pytest.raises(ConfigError, match=r"the train split holds images of 1 landmark: --mode ts takes its "
                                          r"negatives from other landmarks"):
        trainer.check_batches()
    trainer.val_split, trainer.train_split = lone, split
    trainer.settings = trainer.settings.but(val=True)
    with pytest.raises(ConfigError, match=r"the val split holds .* or train without validation \(--no-val\)"):
        trainer.check_batches()
    trainer.learner = dataclasses.replace(trainer.learner, mode=MODES["reg"])  # trains without negatives; validated on ts tuples all the same
    with pytest.raises(ConfigError, match=r"the val split holds images of 1 landmark: --mode ts"):
        trainer.check_batches()
    trainer.train_split, trainer.settings = lone, trainer.settings.but(val=False)
    trainer.check_batches()  # reg without validation needs no negatives


def test_more_negatives_than_other_landmarks_are_warned_of(split, tmp_path, caplog):
    """A tuple takes one negative per other landmark: -nn 100 on a set of 6 landmarks trained
    on 5 negatives a tuple under a run folder named nnum100, without a word."""
    landmarks = len(set(split.db["cluster"]))
    with caplog.at_level("WARNING", logger="aml.training.trainer"):
        make_trainer(split, tmp_path / "some", neg_num=landmarks - 1).check_batches()
        assert not caplog.records
        make_trainer(split, tmp_path / "more", neg_num=landmarks).check_batches()
    assert caplog.messages == [f">> --neg-num {landmarks}: the train split holds {landmarks} landmarks, so a tuple "
                               f"gets {landmarks - 1} negatives at most (one per landmark other than its query's)"]


@pytest.mark.parametrize("mode", ["rand_tpl", "rand_tpl_a"])
def test_a_triplet_mode_without_two_pool_images_beside_its_anchors_is_refused(split, tmp_path, mode):
    """--pool-size 1 (or a split whose query pairs leave fewer than 2 other images) ended the
    first epoch in a bare ValueError of the mining ("teacher triplets need a pool ...")."""
    from aml.utils.errors import ConfigError

    trainer = make_trainer(split, tmp_path, pool_size=1, batch_size=2)
    trainer.learner = dataclasses.replace(trainer.learner, mode=MODES[mode])
    with pytest.raises(ConfigError, match=rf"the train split leaves 1 images beside its anchors: --mode {mode} "
                                          r"draws .* give --pool-size 2 or more"):
        trainer.check_batches()
    trainer.settings = trainer.settings.but(pool_size=2)
    trainer.check_batches()
    assert len(trainer.epoch_tuples(split, 0)) == 8
