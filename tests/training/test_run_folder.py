"""The run folder's loss log: rewritten whole or not at all."""

import logging

import pytest

from aml.training.run_folder import LOSS_LOG_HEADER, RunLog
from aml.utils.atomic import DiskFull


def test_a_resumed_run_on_a_full_disk_keeps_the_loss_log(tmp_path, full_disk):
    log = RunLog(tmp_path)
    log.restart_at(0)
    log.losses(0, 0.5, None)
    log.losses(1, 0.4, None)
    before = (tmp_path / "loss_log.txt").read_text()
    assert before == f"{LOSS_LOG_HEADER}\n0, 0.5\n1, 0.4\n"
    full_disk(tmp_path)
    with pytest.raises(DiskFull, match="loss_log.txt"):
        log.restart_at(1)
    assert (tmp_path / "loss_log.txt").read_text() == before and sorted(p.name for p in tmp_path.iterdir()) == [
        "loss_log.txt"]


def test_a_loss_log_with_other_bytes_is_resumed(tmp_path):
    """A loss_log.txt with bytes that are not UTF-8 (an editor's, a cut write) ended --resume in UnicodeDecodeError."""
    (tmp_path / "loss_log.txt").write_bytes(f"{LOSS_LOG_HEADER}\n0, 0.5\n\xff\xfe garbage\n1, 0.4\n".encode("latin-1"))
    log = RunLog(tmp_path)
    log.restart_at(1)
    assert (tmp_path / "loss_log.txt").read_text() == f"{LOSS_LOG_HEADER}\n0, 0.5\n"


def test_only_the_main_rank_logs_and_writes_the_run_log(tmp_path, caplog):
    """Rank 1's RunLog wrote nothing but logged every line: from a script under torchrun, each
    epoch's lines came once per process."""
    caplog.set_level(logging.INFO, logger="aml")
    RunLog(tmp_path / "other", enabled=False).line(">> epoch 1 of rank 1")
    RunLog(tmp_path / "main").line(">> epoch 1 of rank 0")
    assert [r.getMessage() for r in caplog.records] == [">> epoch 1 of rank 0"]
    assert not (tmp_path / "other").exists() and (tmp_path / "main" / "log.txt").is_file()


def test_the_epoch_tests_are_logged_by_the_main_rank_alone(tmp_path, monkeypatch, caplog):
    """Every rank gets the collective evaluation's results; only rank 0 logged them from the CLI,
    every rank from a script of the user's under torchrun."""
    from aml.networks import build_network
    from aml.training import runner
    from aml.training.config import TrainConfig, TrainSettings
    from aml.utils.distributed import World

    class Result:
        def lines(self):
            return [">> synth-oxford: mAP 50.00"]

        def record(self):
            return {}

    def evaluate(student, settings, teacher=None, on_result=None):
        on_result(Result())
        return {"synth-oxford": Result()}

    monkeypatch.setattr(runner, "evaluate", evaluate)
    config = TrainConfig(directory=str(tmp_path), mode="std", loop=TrainSettings(test_freq=1))
    net = build_network("resnet18", pretrained=False)
    caplog.set_level(logging.INFO, logger="aml")
    for rank in (1, 0):
        runner._Run(config, World(rank, 2), "cpu", tmp_path / "run").test_callback()(net, 0)
    assert [r.getMessage() for r in caplog.records] == [
        ">> Test [1] symmetric: the student encodes the queries and the database", ">> synth-oxford: mAP 50.00"]


def test_a_student_records_its_published_teacher_as_listed(tmp_path, monkeypatch):
    """-t VGG16 recorded 'VGG16': test.py --asym --teacher vgg16 then took the two for other
    teachers, and checked the student's teacher by name only, not by its weights."""
    from aml.training import runner
    from aml.training.config import TrainConfig
    from aml.utils.distributed import World

    monkeypatch.setattr(runner._Run, "_teacher_fingerprint", lambda self: "f" * 16)
    config = TrainConfig.from_flags(str(tmp_path), arch="resnet18", mode="ts", teacher="VGG16", pretrained=False)
    net = runner._Run(config, World(), "cpu", tmp_path / "run").network(512)
    assert net.meta["teacher"] == "vgg16" and net.meta["teacher_fingerprint"] == "f" * 16


@pytest.mark.parametrize(
    "arch, teacher, dim",
    [
        ("resnet18", "resnet101", 2048),  # kept its 512 channels in a folder named _teach_resnet101
        ("resnet18", "vgg16", None),
        ("resnet18", "VGG16", None),
        ("resnet50", "resnet101", 2048),
        ("densenet121", "resnet101", None),  # the original's table listed DenseNets at their width
        ("mobilenet_v2", "resnet101", 2048),
        ("mobilenet_v2", "vgg16", 512),
        ("timm:test_vit", "vgg16", None),  # init_network projected it to 512
        ("timm:test_vit", "resnet101", 2048),
    ],
)
def test_a_std_run_projects_to_its_teacher_as_init_network_does(tmp_path, arch, teacher, dim):
    """--teacher resnet101 in --mode std set the dimension of the original's student trunks only:
    any other trunk kept its width without a word, where init_network projects it."""
    from aml.networks import init_network
    from aml.training import runner
    from aml.training.config import TrainConfig
    from aml.utils.distributed import World

    config = TrainConfig.from_flags(str(tmp_path), arch=arch, mode="std", teacher=teacher, pretrained=False)
    run = runner._Run(config, World(), "cpu", tmp_path / "run")
    assert run._dimension_without_features() == dim
    built = run.network(dim).meta["outputdim"]
    assert built == init_network({"architecture": arch, "teacher": teacher.lower(), "pretrained": False}).meta["outputdim"]
