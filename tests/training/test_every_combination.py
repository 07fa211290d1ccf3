"""Every (mode, loss, --sym) that the registries allow trains: generated from LOSSES x MODES,
never from a hand list, so a new mode or loss is tested the day it is added.

The whole product takes one training step and one validation in-process; main.py itself
runs one epoch per (mode, --sym) and resumes once per kind of loss."""

import math

import pytest
import torch

from aml.descriptors import ExtractionConfig
from aml.cli import train as train_cli
from aml.data.trainsets import load_training_db
from aml.losses import LOSSES, build_loss
from aml.networks import build_network
from aml.networks.checkpoint import checkpoint_state, load_checkpoint, load_network, save_checkpoint
from aml.training.modes import MODES, check_loss_mode
from aml.training.optim import build_optimizer
from aml.training.teacher import Teacher, teacher_split_features
from aml.training.trainer import Learner, Split, Trainer, TrainSettings

# Trains networks or starts processes for tens of seconds: started early (conftest).
pytestmark = pytest.mark.long


def allowed_combinations():
    for loss in LOSSES:
        for name, mode in MODES.items():
            try:
                check_loss_mode(loss, name)
            except ValueError:
                continue
            for sym in ((False, True) if mode.allows_sym else (False,)):
                yield loss, name, sym


COMBINATIONS = list(allowed_combinations())
IDS = [f"{m}-{l}{'-sym' * s}" for l, m, s in COMBINATIONS]
# main.py runs: the first allowed loss of every (mode, --sym); resumed: the first of each loss kind
CLI_RUNS = list({(mode, sym): (loss, mode, sym) for loss, mode, sym in reversed(COMBINATIONS)}.values())
RESUMED = list({LOSSES[loss].kind: (loss, mode, sym) for loss, mode, sym in reversed(CLI_RUNS)}.values())
SIZE, DIM = 32, 512


def test_the_matrix_covers_every_mode_and_loss():
    assert {mode for _, mode, _ in COMBINATIONS} == set(MODES)
    assert {loss for loss, _, _ in COMBINATIONS} == set(LOSSES)
    assert any(sym for _, _, sym in COMBINATIONS)
    assert {(m, s) for _, m, s in CLI_RUNS} == {(m, s) for _, m, s in COMBINATIONS}
    assert {LOSSES[loss].kind for loss, _, _ in RESUMED} == {spec.kind for spec in LOSSES.values()}


@pytest.fixture(scope="module")
def random_teacher(tmp_path_factory):
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pth.tar"
    return save_checkpoint(checkpoint_state(build_network("squeezenet1_1", pretrained=False), 0, 0.0), path)


@pytest.fixture(scope="module")
def splits(synth_root, random_teacher):
    """The train and val splits with the random teacher's descriptors (extracted once)."""
    teacher = Teacher(str(random_teacher), str(synth_root))
    result = {}
    for name in ("train", "val"):
        db = load_training_db("synth-sfm", name, synth_root)
        features = teacher_split_features(teacher, "synth-sfm", name, db["images"], SIZE,
                                          config=ExtractionConfig(workers=0))
        result[name] = Split(db, list(db["images"]), features)
    return result


def takes_a_step_and_validates(net, loss, mode, sym, splits, directory):
    optimizer = build_optimizer(net, "adam", 1e-3, 0.9, 1e-6)
    settings = TrainSettings(image_size=SIZE, neg_num=2, query_size=5, pool_size=10, batch_size=5, epochs=1,
                             print_freq=100, sym=sym)
    trainer = Trainer(Learner(net, build_loss(loss), optimizer, MODES[mode]), splits["train"], splits["val"],
                      directory, settings, ExtractionConfig(workers=0, device="cpu"))
    before = [p.detach().clone() for p in net.parameters()]
    train_loss = trainer.train_epoch(0)  # 5 tuples: one batch, one step
    moved = sum(not torch.equal(a, p) for a, p in zip(before, net.parameters()))
    assert math.isfinite(train_loss) and moved > 0, (train_loss, moved)
    assert math.isfinite(trainer.validate(0))


@pytest.mark.parametrize("loss, mode, sym", COMBINATIONS, ids=IDS)
def test_every_allowed_combination_takes_a_step_and_validates(splits, tmp_path, loss, mode, sym):
    torch.manual_seed(0)
    takes_a_step_and_validates(build_network("squeezenet1_1", pretrained=False, teacher_dim=DIM), loss, mode, sym,
                               splits, tmp_path)


@pytest.mark.parametrize("mode", list(MODES))
def test_a_timm_vit_student_takes_a_step_and_validates_in_every_mode(splits, tmp_path, mode):
    """A timm ViT (patch tokens, 1x1 projection to the teacher's 512-d) trains as the table's trunks do."""
    pytest.importorskip("timm")
    loss = next(loss for loss, name, _ in COMBINATIONS if name == mode)
    torch.manual_seed(0)
    net = build_network("timm:test_vit", pretrained=False, teacher_dim=DIM)
    takes_a_step_and_validates(net, loss, mode, False, splits, tmp_path)


def cli_argv(directory, root, teacher, loss, mode, sym):
    return ["--directory", str(directory), "--data-root", str(root), "-d", "synth-sfm", "-a", "squeezenet1_1",
            "--not-pretrained", "-m", mode, "-l", loss, "--teacher", str(teacher), "--image-size", str(SIZE),
            "-nn", "2", "-qs", "5", "-ps", "10", "-b", "5", "-j", "0", "--device", "cpu", "--lr", "1e-4",
            "--print-freq", "100"] + ["--sym"] * sym


@pytest.mark.parametrize("loss, mode, sym", CLI_RUNS, ids=[f"{m}{'-sym' * s}" for _, m, s in CLI_RUNS])
def test_main_py_trains_an_epoch_in_every_mode(synth_root, tmp_path, random_teacher, loss, mode, sym):
    argv = cli_argv(tmp_path, synth_root, random_teacher, loss, mode, sym)
    first = train_cli.main(argv + ["--epochs", "1"])
    record = first.history[0]
    assert math.isfinite(record["train_loss"]) and math.isfinite(record["val_loss"]), record
    run = first.run_dir
    for name in ("model_epoch1.pth.tar", "model_best.pth.tar"):
        net = load_network(run / name)
        assert net.meta["outputdim"] == DIM and net(torch.rand(1, 3, SIZE, SIZE)).shape == (DIM, 1)
    if (loss, mode, sym) not in RESUMED:
        return
    second = train_cli.main(argv + ["--epochs", "2", "--resume", "model_epoch1.pth.tar"])
    assert [r["epoch"] for r in second.history] == [2] and math.isfinite(second.history[0]["train_loss"])
    state = load_checkpoint(run / "model_epoch2.pth.tar")
    assert state["epoch"] == 2 and state["meta"]["seed"] == 0
