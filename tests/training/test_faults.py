"""Training runs that go wrong: divergence, crashes between checkpoint writes, leftovers of
a killed run, resuming a foreign checkpoint, and the per-epoch history and curves."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import aml.training.trainer as trainer_module
from aml.cli import train as train_cli
from aml.networks import build_network
from aml.networks.checkpoint import CheckpointError, checkpoint_state, load_checkpoint, save_checkpoint
from aml.training.trainer import TrainingDiverged
from aml.utils.errors import ConfigError

# Trains networks or starts processes for tens of seconds: started early (conftest).
pytestmark = pytest.mark.long

REPO = Path(__file__).resolve().parents[2]
TINY = ["-d", "synth-sfm", "--not-pretrained", "--image-size", "48", "-nn", "2", "-qs", "10", "-ps", "30", "-b", "5",
        "-j", "0", "--device", "cpu", "--lr", "1e-4", "--print-freq", "100", "-a", "squeezenet1_1", "-q"]


def train(root, directory, *extra):
    return train_cli.main(["--directory", str(directory), "--data-root", str(root)] + TINY + list(extra))


def checkpoints(run_dir):
    return sorted(p.name for p in run_dir.glob("*.pth.tar"))


def test_diverging_run_exits_with_one_line_and_writes_nothing(synth_root, tmp_path):
    argv = [sys.executable, str(REPO / "main.py"), "--directory", str(tmp_path), "--data-root", str(synth_root),
            *TINY, "--epochs", "3", "--lr", "1e3"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    line = done.stderr.strip()
    assert line.startswith("error: training stopped: loss is nan at epoch 1, batch ") and "--lr 1000" in line
    assert "no checkpoint was written" in line and len(line.splitlines()) == 1
    assert not list(tmp_path.rglob("*.pth.tar"))
    assert "training stopped" in next(tmp_path.rglob("log.txt")).read_text()


def test_divergence_keeps_the_last_good_checkpoints(synth_root, tmp_path, monkeypatch):
    real_step, steps = torch.optim.Adam.step, []

    def step(self, *args, **kwargs):  # 2 batches per epoch: the 3rd step is epoch 2's first
        out = real_step(self, *args, **kwargs)
        steps.append(1)
        if len(steps) == 3:
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("nan"))
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    with pytest.raises(TrainingDiverged, match=r"loss is nan at epoch 2, batch 2/2.*last good checkpoint is "
                                               r".*model_epoch1.pth.tar") as info:
        train(synth_root, tmp_path, "--epochs", "3", "--no-val")
    run_dir = next(tmp_path.iterdir())
    assert checkpoints(run_dir) == ["model_best.pth.tar", "model_epoch1.pth.tar"]
    for name in checkpoints(run_dir):
        state = load_checkpoint(run_dir / name)
        assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["state_dict"].values())
    assert str(info.value) in (run_dir / "log.txt").read_text()


def test_non_finite_weights_are_never_saved(synth_root, tmp_path, monkeypatch):
    real_step = torch.optim.Adam.step

    def poisoning_step(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        with torch.no_grad():
            self.param_groups[-1]["params"][0].fill_(float("inf"))  # weights blow up after the last batch
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", poisoning_step)
    monkeypatch.setattr(trainer_module, "_check_finite", lambda loss: None)  # let the loss through: test save()
    with pytest.raises(TrainingDiverged, match="after epoch 1 the weights .* are not finite; nothing was saved"):
        train(synth_root, tmp_path, "--epochs", "1")
    assert not list(tmp_path.rglob("*.pth.tar"))


def test_nan_feature_file_is_refused_on_load(synth_root, tmp_path):
    from aml.data.trainsets import load_training_db

    columns = len(load_training_db("synth-sfm", "train", synth_root)["cids"])
    vecs = np.ones((512, columns), dtype=np.float32)
    vecs[3, 7] = np.nan
    np.save(tmp_path / "feats.npy", vecs)
    with pytest.raises(ValueError, match=r"feats.npy holds NaN or infinite values in 1 of .* column 7"):
        train(synth_root, tmp_path, "-m", "ts", "--teacher", "vgg16", "--feat-path", str(tmp_path / "feats.npy"),
              "--no-val")


@pytest.fixture(scope="module")
def straight_run(synth_root, tmp_path_factory):
    """An uninterrupted 2-epoch run and the order of its checkpoint writes."""
    writes = []
    real = trainer_module.save_checkpoint

    def recording(state, path):
        writes.append(Path(path).name)
        return real(state, path)

    trainer_module.save_checkpoint = recording
    try:
        run = train(synth_root, tmp_path_factory.mktemp("straight"), "--epochs", "2", "--no-val")
    finally:
        trainer_module.save_checkpoint = real
    return run, writes


def test_crash_between_checkpoint_writes_never_leaves_a_stale_best(synth_root, tmp_path, monkeypatch, straight_run):
    run, writes = straight_run
    assert writes.count("model_best.pth.tar") >= 1 and len(writes) >= 3
    real = trainer_module.save_checkpoint
    for crash_after in range(len(writes)):
        directory = tmp_path / f"crash{crash_after}"
        calls = []

        def crashing(state, path):
            out = real(state, path)
            calls.append(path)
            if len(calls) == crash_after + 1:
                raise KeyboardInterrupt  # the process dies right after this write
            return out

        monkeypatch.setattr(trainer_module, "save_checkpoint", crashing)
        with pytest.raises(KeyboardInterrupt):
            train(synth_root, directory, "--epochs", "2", "--no-val")
        monkeypatch.setattr(trainer_module, "save_checkpoint", real)
        resumed = train(synth_root, directory, "--epochs", "2", "--no-val", "--resume", "latest")
        best = load_checkpoint(resumed.run_dir / "model_best.pth.tar")
        expected = load_checkpoint(run.run_dir / "model_best.pth.tar")
        assert best["epoch"] == expected["epoch"], f"crash after write {crash_after + 1} ({writes[crash_after]})"
        for key, value in expected["state_dict"].items():
            assert torch.equal(value, best["state_dict"][key]), key
        assert (resumed.run_dir / "loss_log.txt").read_text() == (run.run_dir / "loss_log.txt").read_text()
        history = json.loads((resumed.run_dir / "history.json").read_text())
        assert [r["epoch"] for r in history] == [1, 2]


def test_a_second_run_on_a_folder_in_use_is_refused_and_touches_nothing(synth_root, tmp_path):
    from aml.utils.atomic import FolderInUse, folder_lock

    run_dir = train(synth_root, tmp_path, "--epochs", "1", "--no-val").run_dir
    in_flight = run_dir / ".model_epoch2.pth.tar.x1y2z3.tmp"  # the live run's checkpoint being written
    with folder_lock(run_dir):
        in_flight.write_bytes(b"being written")
        before = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()}
        with pytest.raises(FolderInUse, match=f"another run is using {run_dir} \\(pid {os.getpid()}\\)"):
            train(synth_root, tmp_path, "--epochs", "2", "--no-val", "--resume", "latest")
        assert {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()} == before
    train(synth_root, tmp_path, "--epochs", "2", "--no-val", "--resume", "latest")  # free again: it runs
    assert not in_flight.exists() and (run_dir / "model_epoch2.pth.tar").is_file()


def test_resume_cleans_leftovers_of_a_killed_run(synth_root, tmp_path):
    first = train(synth_root, tmp_path, "--epochs", "1")
    run_dir = first.run_dir
    orphan = run_dir / ".model_epoch2.pth.tar.k3j2x1.tmp"  # what atomic_write leaves when killed mid-write
    orphan.write_bytes(b"half a checkpoint")
    train(synth_root, tmp_path, "--epochs", "2", "--resume", "model_epoch1.pth.tar")
    assert not orphan.exists()
    lines = (run_dir / "loss_log.txt").read_text().splitlines()
    assert lines[0] == "epoch, train_loss, val_loss" and lines.count(lines[0]) == 1
    assert [line.split(",")[0] for line in lines[1:]] == ["0", "1"]


def test_a_resume_that_would_overwrite_checkpoints_is_refused_and_touches_nothing(synth_root, tmp_path, straight_run,
                                                                                   capsys):
    """--resume model_epoch1 in a folder that holds epoch 2, or another run's checkpoint into a
    folder of checkpoints, trained on and replaced the folder's later checkpoints."""
    run, _ = straight_run
    directory = run.run_dir.parent
    def written():  # the files and when they were written (the lock is taken by every run)
        return {p.name: p.stat().st_mtime_ns for p in run.run_dir.iterdir() if p.name != ".lock"}

    before = written()
    with pytest.raises(ConfigError, match=r"model_epoch1.pth.tar \(epoch 1\): .* holds checkpoints of later epochs "
                                          r"\(model_epoch2.pth.tar\) that training on from it would overwrite"):
        train(synth_root, directory, "--epochs", "2", "--no-val", "--resume", "model_epoch1.pth.tar")
    other = train(synth_root, tmp_path / "other", "--epochs", "1", "--no-val").run_dir / "model_epoch1.pth.tar"
    with pytest.raises(ConfigError, match=r"lies outside .*, which holds checkpoints \(model_best.pth.tar\) that "
                                          r"training on from it would overwrite or mix with"):
        train(synth_root, directory, "--epochs", "2", "--no-val", "--resume", str(other))
    assert written() == before
    capsys.readouterr()
    train(synth_root, directory, "--epochs", "1", "--no-val", "--resume", "latest")  # trains nothing, and says so
    assert ">> nothing to train: the checkpoint resumed has done 2 epochs, --epochs is 1" in capsys.readouterr().out
    assert {k: v for k, v in written().items() if k.endswith(".pth.tar")} == {
        k: v for k, v in before.items() if k.endswith(".pth.tar")}
    branch = train(synth_root, tmp_path / "branch", "--epochs", "2", "--no-val", "--resume",
                   str(run.run_dir / "model_epoch1.pth.tar"))  # a branch in a folder of its own trains
    assert checkpoints(branch.run_dir) == ["model_best.pth.tar", "model_epoch2.pth.tar"]
    # a branch's model_best is of its own epochs: it was chosen against the checkpoint's best
    # loss, another run's (another -lm, -d or --image-size: another scale), and never written
    state = load_checkpoint(run.run_dir / "model_epoch1.pth.tar")
    save_checkpoint({**state, "min_loss": 1e-9}, tmp_path / "low.pth.tar")
    branch = train(synth_root, tmp_path / "low", "--epochs", "2", "--no-val", "--resume", str(tmp_path / "low.pth.tar"))
    assert checkpoints(branch.run_dir) == ["model_best.pth.tar", "model_epoch2.pth.tar"]


def test_a_damaged_checkpoint_of_the_run_folder_names_the_one_to_resume_from(synth_root, tmp_path, straight_run):
    """A truncated latest checkpoint was named with "download or copy it again", which a run's own
    checkpoint cannot be: its previous one is the way on."""
    import shutil

    run, _ = straight_run
    copy = tmp_path / run.run_dir.name
    shutil.copytree(run.run_dir, copy)
    latest = copy / "model_epoch2.pth.tar"
    latest.write_bytes(latest.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"model_epoch2.pth.tar: it is truncated, corrupt .* Or move it out of "
                                              r"the run folder and resume from the run's previous checkpoint: "
                                              r"--resume model_epoch1.pth.tar$"):
        train(synth_root, tmp_path, "--epochs", "2", "--no-val", "--resume", "latest")
    (copy / "model_epoch1.pth.tar").unlink()  # none before it: the file's own fix alone
    with pytest.raises(CheckpointError, match=r"Copy or make it again \(a file aml downloaded is fetched anew once deleted\).$"):
        train(synth_root, tmp_path, "--epochs", "2", "--no-val", "--resume", "latest")


def test_resuming_another_architecture_names_the_file(synth_root, tmp_path):
    """... and the refused run leaves nothing behind (its empty run folder and loss_log.txt marked a
    run that never trained)."""
    foreign = tmp_path / "mobilenet.pth.tar"
    save_checkpoint(checkpoint_state(build_network("mobilenet_v2", pretrained=False, teacher_dim=512), 3, 0.1), foreign)
    with pytest.raises(CheckpointError, match=r"cannot resume from .*mobilenet.pth.tar: it holds a mobilenet_v2 "
                                              r"network, this run trains squeezenet1_1"):
        train(synth_root, tmp_path / "runs", "--epochs", "1", "--resume", str(foreign))
    assert list((tmp_path / "runs").iterdir()) == []  # nor the run folder it made


def test_history_and_curves_are_written_every_epoch(synth_root, tmp_path):
    run = train(synth_root, tmp_path, "--epochs", "2", "--test-freq", "2", "-td", "synth-oxford", "--test-image-size",
                "40")
    history = json.loads((run.run_dir / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]
    assert all(np.isfinite(r["train_loss"]) and np.isfinite(r["val_loss"]) for r in history)
    assert history[1]["lr"] == pytest.approx(1e-4 * np.exp(-0.02))
    assert "test" not in history[0]
    medium = history[1]["test"]["symmetric"]["synth-oxford"]["medium"]
    assert medium == pytest.approx(run.history[1]["test"]["symmetric"]["synth-oxford"]["plain"]["medium"]["map"])
    # tested at --test-image-size, as test.py tests the epoch's checkpoint (it was the training --image-size)
    from aml.cli import test as test_cli

    tested = test_cli.main(["-npath", str(run.run_dir / "model_epoch2.pth.tar"), "-d", "synth-oxford", "-imsize", "40",
                            "-j", "0", "--device", "cpu", "--data-root", str(synth_root), "--no-cache"])
    assert medium == pytest.approx(tested["synth-oxford"]["plain"]["medium"]["map"], abs=1e-9)
    from PIL import Image

    with Image.open(run.run_dir / "curves.png") as png:
        assert png.size[0] > 1000  # three panels: loss, lr, mAP


def test_curves_without_matplotlib_give_one_notice(tmp_path, monkeypatch, caplog):
    from aml.reports import curves

    monkeypatch.setattr(curves, "_matplotlib_figure", lambda: None)
    history = curves.TrainingHistory(tmp_path)
    with caplog.at_level("WARNING", logger="aml"):
        for epoch in (1, 2):
            history.add({"epoch": epoch, "train_loss": 1.0 / epoch, "val_loss": None, "lr": 1e-3})
    notices = [r.message for r in caplog.records if "matplotlib" in r.message]
    assert len(notices) == 1 and "pip install matplotlib" in notices[0]
    assert not (tmp_path / "curves.png").exists() and len(json.loads((tmp_path / "history.json").read_text())) == 2


def test_kill_9_mid_run_then_resume_is_bit_identical(synth_root, tmp_path, straight_run):
    import os
    import signal
    import time

    run, _ = straight_run
    argv = [sys.executable, str(REPO / "main.py"), "--directory", str(tmp_path), "--data-root", str(synth_root),
            *TINY, "--epochs", "2", "--no-val"]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not list(tmp_path.rglob("model_epoch1.pth.tar")) and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # somewhere inside epoch 2
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done = subprocess.run(argv + ["--resume", "latest"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    run_dir = next(tmp_path.iterdir())
    assert not list(run_dir.glob(".*.tmp"))
    for name in ("model_epoch1.pth.tar", "model_epoch2.pth.tar", "model_best.pth.tar"):
        mine, theirs = load_checkpoint(run_dir / name), load_checkpoint(run.run_dir / name)
        assert mine["epoch"] == theirs["epoch"], name
        for key, value in theirs["state_dict"].items():
            assert torch.equal(value, mine["state_dict"][key]), (name, key)
    assert (run_dir / "loss_log.txt").read_text() == (run.run_dir / "loss_log.txt").read_text()


def test_sigterm_ends_main_py_with_one_line_and_leaves_no_temporary_file(synth_root, tmp_path):
    import signal
    import time

    # 50 epochs: the run is still training when the signal comes, so a run that ignored it ends
    # with 0 (or runs past the timeout), never with 143
    argv = [sys.executable, str(REPO / "main.py"), "--directory", str(tmp_path), "--data-root", str(synth_root),
            *TINY, "--epochs", "50", "--no-val"]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not list(tmp_path.rglob("model_epoch1.pth.tar")) and process.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert process.poll() is None, "the run ended before its first checkpoint"
        process.send_signal(signal.SIGTERM)  # after the first checkpoint (a resume from here is the kill -9 test's)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 143 and err.strip().splitlines()[-1].startswith("terminated (SIGTERM): "), err
    assert not list(next(tmp_path.iterdir()).glob(".*.tmp"))


def test_training_shows_progress_bars_unless_quiet(synth_root, tmp_path, capsys):
    argv = ["--directory", str(tmp_path), "--data-root", str(synth_root)] + [a for a in TINY if a != "-q"]
    train_cli.main(argv + ["--epochs", "1"])
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "batch" in err and "validation 1" in err and "extracting" in err
    # stderr is not a terminal here: whole lines, not a bar redrawn in place with carriage returns
    assert "\r" not in err and "\x1b[" not in err
    assert any(line.startswith("epoch 1/1: 100%") for line in err.splitlines()), err
    train_cli.main(argv + ["--epochs", "1", "-q", "-c", "_quiet"])
    assert "epoch 1/1" not in capsys.readouterr().err


def test_a_full_disk_ends_training_in_one_line_and_keeps_the_checkpoints_written(synth_root, tmp_path, full_disk,
                                                                                   monkeypatch):
    from aml.cli.arguments import run_cli
    run = train(synth_root, tmp_path, "--epochs", "1").run_dir
    full_disk(run)  # the disk fills up during epoch 2
    with pytest.raises(SystemExit) as info:
        run_cli(lambda: train(synth_root, tmp_path, "--epochs", "2", "--resume", "latest"))
    assert str(info.value.code).startswith("error: no space left on the device for ") and str(run) in str(info.value.code)
    assert "model_epoch1.pth.tar" in checkpoints(run) and "model_epoch2.pth.tar" not in checkpoints(run)
    assert load_checkpoint(run / "model_epoch1.pth.tar")["epoch"] == 1 and not list(run.glob(".*.tmp"))


def test_a_val_split_smaller_than_a_batch_is_refused_before_training(synth_root, tmp_path):
    """Its validation loss was NaN (no full batch) every epoch, so no model_best was ever written,
    without a word; the training split is checked the same way before any mining."""
    from aml.utils.errors import ConfigError

    with pytest.raises(ConfigError, match=r"the val split draws 16 tuples an epoch, fewer than --batch-size 20: "
                                          r"validation would measure nothing .* --batch-size 16 or less; or train "
                                          r"without validation \(--no-val\)"):
        train(synth_root, tmp_path, "-b", "20", "-qs", "40")
    with pytest.raises(ConfigError, match=r"the train split draws 10 tuples an epoch, fewer than --batch-size 12"):
        train(synth_root, tmp_path, "-b", "12", "--no-val")
    assert list(tmp_path.iterdir()) == []


def test_a_non_finite_validation_loss_ends_in_one_line_and_saves_nothing_of_its_epoch(synth_root, tmp_path,
                                                                                      monkeypatch):
    """Validation's non-finite loss escaped as the internal _NonFiniteLoss: a traceback, not the
    one-line error that training's gives."""
    real = trainer_module.Trainer.batch_losses

    def batch_losses(self, batch, split, backward, sync=True):
        values = real(self, batch, split, backward, sync)
        if not backward:
            trainer_module._check_finite([float("nan")])  # as a val image of non-finite descriptors makes it
        return values

    monkeypatch.setattr(trainer_module.Trainer, "batch_losses", batch_losses)
    with pytest.raises(TrainingDiverged, match=r"validation stopped: its loss is nan at epoch 1, batch 1/\d+: a val "
                                               r"image or the network gives non-finite descriptors \(with --amp, "
                                               r"whose forwards run in bfloat16: try --no-amp\)"):
        train(synth_root, tmp_path, "--epochs", "1")
    assert not list(tmp_path.rglob("*.pth.tar"))


def test_an_epoch_stopped_while_tested_is_tested_when_the_run_resumes(synth_root, tmp_path, monkeypatch):
    """main.py --test-freq stopped while it tested an epoch (saved just before) resumed after
    it: history.json kept the epoch without its test, and the last epoch was never tested."""
    import aml.training.runner as runner_module

    real, calls = runner_module.evaluate, []

    def stopped_at_the_second_test(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C while epoch 2 is tested
        return real(*args, **kwargs)

    flags = ("--epochs", "2", "--no-val", "--test-freq", "1", "-td", "synth-oxford", "--test-image-size", "40")
    monkeypatch.setattr(runner_module, "evaluate", stopped_at_the_second_test)
    with pytest.raises(KeyboardInterrupt):
        train(synth_root, tmp_path, *flags)
    monkeypatch.setattr(runner_module, "evaluate", real)
    resumed = train(synth_root, tmp_path, *flags, "--resume", "latest")  # nothing left to train: only the test
    history = json.loads((resumed.run_dir / "history.json").read_text())
    assert [(r["epoch"], "synth-oxford" in r.get("test", {}).get("symmetric", {})) for r in history] == [
        (1, True), (2, True)]
