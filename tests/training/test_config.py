"""TrainConfig's own checks: the names and ranges main.py's flags check hold for a config
made in Python too, from one place, before anything is loaded or written."""

import argparse
import dataclasses
import re

import pytest

from aml.cli import train as train_cli
from aml.descriptors import ExtractionConfig
from aml.training import TrainConfig, TrainSettings, run
from aml.training.config import problems, run_name
from aml.utils.errors import ConfigError


@pytest.mark.parametrize("field, value, reason", [
    ("neg_num", -1, "--neg-num -1: must be an integer >= 0, got -1"),
    ("image_size", 0, "--image-size 0: must be a positive integer, got 0"),
    ("lr", 0.0, "--lr 0.0: must be a positive finite number, got 0.0"),
    ("momentum", 1.0, "--momentum 1.0: must be a number in [0, 1), got 1.0"),
])
def test_a_number_out_of_its_range_is_refused_before_anything_is_written(field, value, reason, tmp_path):
    config = TrainConfig.from_flags(directory=str(tmp_path / "runs"), **{field: value})
    assert reason in problems(config)
    with pytest.raises(ConfigError, match=reason.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        run(config)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("flags, reason", [
    ({"comment": "/../../elsewhere"}, "--comment '/../../elsewhere': it ends the run folder's name and cannot hold a "
                                      "path separator"),
    ({"mode": "std", "feat_path": "train.npy", "feat_val_path": "val.npy"},
     "--feat-path and --feat-val-path: --mode std trains without a teacher and would not read the teacher's "
     "descriptors"),
])
def test_a_flag_that_would_be_ignored_or_lead_the_run_elsewhere_is_refused(flags, reason, tmp_path):
    """A --comment with '/' wrote the run's history and curves outside --directory; --feat-path
    in std was ignored without a word."""
    assert any(problem.startswith(reason) for problem in problems(TrainConfig.from_flags(str(tmp_path), **flags)))
    assert problems(TrainConfig.from_flags(str(tmp_path), comment="_run-2")) == []


def test_an_unknown_loss_is_a_reason_not_a_key_error():
    assert problems(TrainConfig(directory="runs", loss="contrastve")) == [
        "--loss: unknown loss 'contrastve'; choose one of bct, contrastive, contrastive_dist, cross_entropy, "
        "cross_entropy_dist, csd, dark, hvs, lce, multi, regression, rkd, triplet"]


def test_an_unknown_optimizer_is_refused_before_the_network_is_built(tmp_path, monkeypatch):
    from aml.training import runner

    monkeypatch.setattr(runner, "build_network", None)  # building it would fail with a TypeError
    config = TrainConfig(directory=str(tmp_path / "runs"), training_dataset="synth-sfm", optimizer="adamw")
    assert problems(config) == ["--optimizer: unknown optimizer 'adamw'; choose one of adam, sgd"]
    with pytest.raises(ConfigError, match="unknown optimizer 'adamw'"):
        run(config)
    assert not (tmp_path / "runs").exists()


def test_unknown_architecture_pooling_and_mode_are_named_together():
    reasons = problems(TrainConfig(directory="runs", arch="resnet9", pool="max", mode="tss"))
    assert [reason.split(":")[0] for reason in reasons] == ["--arch", "--pool", "--mode"]


def test_the_flags_check_the_ranges_the_config_declares():
    """Every numeric flag of main.py takes its type from the range its field declares (in the
    config or one of its parts): a value the config refuses, the flag refuses too."""
    fields = {f.name: f for part in (TrainConfig, TrainSettings, ExtractionConfig) for f in dataclasses.fields(part)}
    checked = 0
    for action in train_cli.build_parser()._actions:
        field = fields.get(action.dest)
        if field is None or "bound" not in field.metadata:
            continue
        bound = field.metadata["bound"]
        low = "-1" if bound.kind is int else "-0.5"
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(bound.what)):
            action.type(low)
        assert problems(TrainConfig.from_flags(directory="runs", **{field.name: bound.kind(low)}))
        checked += 1
    assert checked >= 19


def test_a_timm_teacher_is_checked_by_name_before_anything_is_loaded():
    """A typo in --teacher timm:... failed when the teacher was loaded, after the training
    set's download; a spec without its pooling raised out of the checks."""
    from aml.networks.loading import NetworkSpec
    from aml.training.config import problems

    for teacher, message in (("timm:nosuchmodel-gem", "has no model 'nosuchmodel'"),
                             ("timm:test_vit", "must look like ARCH-POOL"),
                             ("timm:test_vit-nopool", "unknown pooling 'nopool'"),
                             # its whitening random, other at every load: the student's teacher could not be found again
                             ("timm:test_vit-gem-reg-whiten", "is MODEL-POOL (timm:test_vit-gem): the layers of -reg, "
                                                              "-whiten would have random weights")):
        found = problems(TrainConfig.from_flags("runs", arch="mobilenet_v2", teacher=teacher, mode="ts"))
        assert len(found) == 1 and found[0].startswith(f"--teacher {teacher!r}: ") and message in found[0]
    assert problems(TrainConfig.from_flags("runs", arch="mobilenet_v2", teacher="timm:test_vit-gem", mode="ts")) == []
    # the dimension as built: a student trunk projects to the default teacher's 512, another keeps its width
    assert NetworkSpec.parse("mobilenet_v2-gem", offtheshelf=True).dimension() == 512
    assert NetworkSpec.parse("timm:test_convnext-gem").dimension() == 64


@pytest.mark.parametrize("teacher", ["ResNet-101", "resnet10", "runs/no/such/model_best.pth.tar"])
def test_a_teacher_that_is_no_network_is_refused_before_anything_is_loaded(teacher):
    """main.py -t ResNet-101 (a typo) trained a 512-d student, the default's, in a folder named
    after the typo; the original's choices refused it. Another case is the name (ResNet101)."""
    from aml.training.config import problems

    found = problems(TrainConfig.from_flags("runs", arch="mobilenet_v2", teacher=teacher))
    assert found == [f"--teacher {teacher!r} is neither a published network (vgg16, resnet101, a name of test.py "
                     "--list-pretrained), a timm model with its released weights (timm:MODEL-POOL, e.g. "
                     "timm:vit_small_patch14_dinov2-gem) nor a checkpoint file"]
    for spelt in ("resnet101", "ResNet101"):
        assert problems(TrainConfig.from_flags("runs", arch="mobilenet_v2", teacher=spelt)) == []
        assert run_name(TrainConfig.from_flags("runs", teacher=spelt)).endswith("_teach_resnet101")


def test_a_dict_for_the_loop_or_the_extraction_is_refused_by_name():
    """TrainConfig(loop={...}) was dataclasses' TypeError "must be called with a dataclass type"."""
    from aml.descriptors import ExtractionConfig
    from aml.evaluation import TestSettings
    from aml.utils.errors import ConfigError

    with pytest.raises(ConfigError, match=r"TrainConfig.loop must hold TrainSettings\(...\), got a dict"):
        TrainConfig(directory="runs", loop={"epochs": 1})
    with pytest.raises(ConfigError, match=r"TestSettings.extraction must hold ExtractionConfig\(...\), got a dict"):
        TestSettings(extraction={"workers": 0})
    assert TestSettings(extraction=ExtractionConfig(workers=0)).extraction.workers == 0


def test_a_temperature_is_ranged_only_for_the_losses_that_read_it():
    """--loss triplet --temp 0.0005 was refused as 'the softmax is a hard maximum': triplet has
    none (the original accepted any --temp, which names the run folder alone)."""
    from aml.losses import LOSSES

    readers = {name for name, spec in LOSSES.items() if spec.uses_temperature}
    assert readers == {"cross_entropy", "cross_entropy_dist", "csd", "bct", "hvs", "lce"}
    for name, spec in LOSSES.items():
        found = problems(TrainConfig.from_flags("runs", loss=name, mode="reg" if name in {"csd", "bct", "hvs", "lce"}
                                                else "rand" if name in {"rkd", "dark"} else "ts", temp=0.0005))
        assert any("--temp 0.0005: below 0.001" in problem for problem in found) == (name in readers), name
    assert problems(TrainConfig.from_flags("runs", loss="triplet", temp=-1.0))  # no temperature at all: refused


def test_settings_the_run_would_ignore_are_problems_from_python_too():
    """SGD's momentum with Adam, and a GPU id beside a named device, trained without a word."""
    from aml.training.config import problems

    assert problems(TrainConfig("runs", momentum=0.5)) == [
        "--momentum 0.5: it is SGD's, and --optimizer adam has none; leave it out"]
    assert problems(TrainConfig("runs", momentum=0.5, optimizer="sgd")) == []
    assert problems(TrainConfig("runs", device="cpu", gpu_id="3")) == [
        "--gpu-id 3: it picks the GPU of --device auto; --device cpu names its own (cuda:N)"]
    assert problems(TrainConfig("runs", device="auto", gpu_id="3")) == []
