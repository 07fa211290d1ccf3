"""Every (mode, loss, --sym) that the registries allow trains: generated from LOSSES x MODES,
never from a hand list, so a new mode or loss is tested the day it is added."""

import math

import pytest
import torch

from aml.cli import train as train_cli
from aml.losses import LOSSES
from aml.networks import build_network
from aml.networks.checkpoint import checkpoint_state, load_checkpoint, load_network, save_checkpoint
from aml.training.modes import MODES, check_loss_mode


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


def test_the_matrix_covers_every_mode_and_loss():
    assert {mode for _, mode, _ in COMBINATIONS} == set(MODES)
    assert {loss for loss, _, _ in COMBINATIONS} == set(LOSSES)
    assert any(sym for _, _, sym in COMBINATIONS)


@pytest.fixture(scope="module")
def random_teacher(tmp_path_factory):
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pth.tar"
    return save_checkpoint(checkpoint_state(build_network("squeezenet1_1", pretrained=False), 0, 0.0), path)


@pytest.mark.parametrize("loss, mode, sym", COMBINATIONS, ids=[f"{m}-{l}{'-sym' * s}" for l, m, s in COMBINATIONS])
def test_every_allowed_combination_trains_and_resumes(synth_root, tmp_path, random_teacher, loss, mode, sym):
    argv = ["--directory", str(tmp_path), "--data-root", str(synth_root), "-d", "synth-sfm", "-a", "squeezenet1_1",
            "--not-pretrained", "-m", mode, "-l", loss, "--teacher", str(random_teacher), "--image-size", "32",
            "-nn", "2", "-qs", "5", "-ps", "10", "-b", "5", "-j", "0", "--device", "cpu", "--lr", "1e-4",
            "--print-freq", "100"] + ["--sym"] * sym
    first = train_cli.main(argv + ["--epochs", "1"])
    record = first["history"][0]
    assert math.isfinite(record["train_loss"]) and math.isfinite(record["val_loss"]), record
    run = first["run_dir"]
    for name in ("model_epoch1.pth.tar", "model_best.pth.tar"):
        net = load_network(run / name)
        assert net.meta["outputdim"] == 512 and net(torch.rand(1, 3, 32, 32)).shape == (512, 1)
    second = train_cli.main(argv + ["--epochs", "2", "--resume", "model_epoch1.pth.tar"])
    assert [r["epoch"] for r in second["history"]] == [2] and math.isfinite(second["history"][0]["train_loss"])
    state = load_checkpoint(run / "model_epoch2.pth.tar")
    assert state["epoch"] == 2 and state["meta"]["seed"] == 0
