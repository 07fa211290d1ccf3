"""What short training runs learn on the small synthetic sets: students from scratch make
asymmetric retrieval work against a trained teacher, regression beats contrastive there (the
paper's finding (1) in small), and a MobileNetV2 student shows what frozen BatchNorm and a
slow projection do.

The tests marked ``learning`` run with --seed AML_TEST_SEED (default 0); their margins are
about half the smallest effect measured over seeds 0, 1 and 2 under the default, AVX2 and
SSE4.1 CPU kernels (benchmarks/learning_margins.py; docs/tests.md)."""

import numpy as np
import pytest
import torch

from aml.descriptors import ExtractionConfig
from aml.cli import test as test_cli
from aml.training import TrainConfig, run
from aml.data.trainsets import load_training_db
from aml.descriptors import describe_images
from aml.networks import build_network
from aml.networks.checkpoint import checkpoint_state, load_checkpoint, load_network, save_checkpoint

from tests.conftest import LEARNING, SEED

# The students train with the teacher's flags (the ``trained_teacher`` fixture, tests/conftest.py).


def train(root, directory, **fields):
    return run(TrainConfig.from_flags(directory=str(directory), data_root=str(root), **dict(LEARNING, **fields)))


def asym_medium_map(student, teacher, root) -> float:
    """Asymmetric mAP (Medium), the mean over synth-oxford and synth-paris, at 64 px."""
    results = test_cli.main(["-npath", str(student), "--asym", "--teacher", str(teacher), "-d", "synth-oxford,synth-paris",
                             "-imsize", "64", "-j", "0", "--device", "cpu", "--data-root", str(root)])
    return float(np.mean([results[d]["plain"]["medium"]["map"] for d in ("synth-oxford", "synth-paris")]))


# Measured gains after 2 epochs (benchmarks/results/learning_margins.json, seeds 0/1/2 x AVX-512,
# AVX2 and SSE4.1 kernels): reg +21.7 to +31 points, ts +6.8 to +23, reg minus ts +7.7 to +17.5.
# Asserted: at most half the smallest (docs/tests.md's table).
GAIN_MARGIN = {"reg": 0.10, "ts": 0.034}
REGRESSION_WINS_MARGIN = 0.038
STUDENT_EPOCHS = 2


@pytest.mark.learning
def test_training_raises_asymmetric_map_and_regression_beats_contrastive(synth_root, tmp_path, trained_teacher):
    """ResNet-18 students from scratch against the trained teacher: reg (-b 2) and ts (-b 1),
    2 epochs each, against the untrained student; and in asymmetric testing the regression
    student beats the contrastive one."""
    torch.manual_seed(SEED)
    untrained = save_checkpoint(checkpoint_state(build_network("resnet18", pretrained=False), 0, 0.0),
                                tmp_path / "untrained.pth.tar")
    before = asym_medium_map(untrained, trained_teacher, synth_root)
    after = {}
    for mode, batch in (("reg", 2), ("ts", 1)):
        result = train(synth_root, tmp_path / "runs", arch="resnet18", mode=mode, teacher=str(trained_teacher),
                       query_size=128, pool_size=128, neg_num=3, batch_size=batch, epochs=STUDENT_EPOCHS, lr=1e-4)
        after[mode] = asym_medium_map(result.run_dir / f"model_epoch{STUDENT_EPOCHS}.pth.tar", trained_teacher,
                                      synth_root)
        print(f"LEARNING seed {SEED} {mode}: asymmetric mAP M {before:.4f} -> {after[mode]:.4f} "
              f"(+{after[mode] - before:.4f})")
    print(f"LEARNING seed {SEED} finding (1): reg minus ts, asymmetric mAP M {after['reg'] - after['ts']:+.4f}")
    assert all(after[mode] > before + GAIN_MARGIN[mode] for mode in after), (before, after)
    assert after["reg"] > after["ts"] + REGRESSION_WINS_MARGIN, after


def dead_projection_channels(checkpoint, root) -> int:
    """Student output dimensions that are zero for every training image (dead ReLUs)."""
    images = load_training_db("synth-sfm", "train", root)["images"]
    descriptors = describe_images(load_network(checkpoint), images, 64, config=ExtractionConfig(workers=0))
    return int((descriptors.max(axis=1) <= 0).sum())


MOBILENET_EPOCHS = 4


@pytest.mark.learning
def test_mobilenet_student_from_scratch_fits_the_teacher_with_train_batchnorm_and_slow_projection(
        synth_root, tmp_path, trained_teacher):
    def regression(**fields):
        result = train(synth_root, tmp_path, arch="mobilenet_v2", mode="reg", teacher=str(trained_teacher),
                       pool_size=128, batch_size=8, epochs=MOBILENET_EPOCHS, lr=3e-3, **fields)
        checkpoint = result.run_dir / f"model_epoch{MOBILENET_EPOCHS}.pth.tar"
        return [epoch["train_loss"] for epoch in result.history], checkpoint

    (frozen, _), (learned, _) = regression(), regression(train_batchnorm=True)
    slow, last = regression(train_batchnorm=True, proj_lr_mult=0.1)
    dead = dead_projection_channels(last, synth_root)
    print(f"LEARNING seed {SEED} mobilenet_v2 reg losses: frozen BN {frozen[1]:.4f} -> {frozen[-1]:.4f}, "
          f"train BN {learned[0]:.4f} -> {learned[-1]:.4f}, + --proj-lr-mult 0.1 {slow[-1]:.4f}, dead {dead}")
    # Measured over seeds 0/1/2 and the three kernel sets (learning_margins.json): frozen BatchNorm
    # moves 0.0-0.4% after epoch 2; batch statistics end 18.7-24.4% below their first epoch and
    # 4.9-11.5% below frozen; the slow projection 15.4-20.4% lower still, with no dead channel.
    # Asserted: at most half of each (the plateau: 2.5 times the largest move).
    # frozen BatchNorm plateaus where the student predicts the mean teacher descriptor
    assert abs(frozen[-1] - frozen[1]) < 0.01 * frozen[1], frozen
    assert learned[-1] < 0.91 * learned[0] and learned[-1] < 0.98 * frozen[-1], (learned, frozen)
    # the projection at a tenth of the lr fits better and keeps every channel alive (on the demo's
    # data, lr 3e-3 on the projection kills 72 of 512 in the first 10 steps)
    assert slow[-1] < 0.93 * learned[-1] and dead == 0, (slow, learned, dead)


def test_mobilenet_student_trains_in_ts_self_mode(synth_root, tmp_path, trained_teacher):
    result = run(TrainConfig.from_flags(directory=str(tmp_path), data_root=str(synth_root), training_dataset="synth-sfm",
                             arch="mobilenet_v2", pretrained=False, mode="ts_self", teacher=str(trained_teacher),
                             image_size=64, query_size=16, pool_size=64, neg_num=3, batch_size=4, epochs=1,
                             workers=0, device="cpu", print_freq=1000))
    state = load_checkpoint(result.run_dir / "model_epoch1.pth.tar")
    assert state["meta"]["outputdim"] == 512 and state["meta"]["architecture"] == "mobilenet_v2"
    assert np.isfinite(result.history[0]["train_loss"]) and np.isfinite(result.history[0]["val_loss"])
    assert "_teach_model_epoch3" in result.run_dir.name
