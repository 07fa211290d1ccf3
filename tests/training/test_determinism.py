"""A run's weights depend only on its flags, data and --seed: not on the teacher-descriptor
cache, on loader workers or on PYTHONHASHSEED (bit-identical on one machine)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aml.descriptors import effective_workers
from aml.networks import build_network
from aml.networks.checkpoint import checkpoint_state, load_checkpoint, save_checkpoint
from aml.training import TrainConfig, run
from aml.utils.seeding import derived_seed

REPO = Path(__file__).resolve().parents[2]


def train(root, directory, teacher, **fields):
    flags = dict(data_root=str(root), training_dataset="synth-sfm", arch="squeezenet1_1", pretrained=False, mode="ts",
                 teacher=str(teacher), image_size=40, neg_num=2, query_size=16, pool_size=24, batch_size=4, epochs=2,
                 device="cpu", lr=1e-3, print_freq=100, workers=0)
    return run(TrainConfig.from_flags(directory=str(directory), **dict(flags, **fields)))


def weights(run_dir):
    return load_checkpoint(Path(run_dir) / "model_epoch2.pth.tar")["state_dict"]


def assert_identical(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture()
def fresh_teacher(tmp_path, request):
    """A teacher whose descriptors are in no cache yet: its weights come from a seed of its own
    per test, derived from AML_TEST_SEED (printed, so that a failure can be replayed)."""
    seed = derived_seed(int(os.environ.get("AML_TEST_SEED", "0")), "fresh-teacher:" + request.node.name, 0)
    print(f"fresh_teacher: torch seed {seed} (AML_TEST_SEED={os.environ.get('AML_TEST_SEED', '0')})")
    torch.manual_seed(seed)
    return save_checkpoint(checkpoint_state(build_network("squeezenet1_1", pretrained=False), 0, 0.0),
                           tmp_path / "teacher.pth.tar")


@pytest.mark.kernels
def test_cold_and_warm_teacher_cache_give_the_same_weights(synth_root, tmp_path, fresh_teacher):
    cold = train(synth_root, tmp_path / "cold", fresh_teacher)
    warm = train(synth_root, tmp_path / "warm", fresh_teacher)
    assert_identical(weights(cold.run_dir), weights(warm.run_dir))
    from aml.networks.loading import NetworkSpec, load_spec

    teacher = load_spec(NetworkSpec.parse(str(fresh_teacher)), None, None).fingerprint  # what a store records
    for run_dir in (cold.run_dir, warm.run_dir):  # the student records its teacher's weights (search checks them)
        assert load_checkpoint(Path(run_dir) / "model_epoch2.pth.tar")["meta"]["teacher_fingerprint"] == teacher


@pytest.mark.kernels
def test_loader_workers_do_not_change_the_weights(synth_root, tmp_path, fresh_teacher):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # leaves a core for a loader worker (workers are capped to free cores)
    try:
        if effective_workers(2, torch.device("cpu")) == 0:
            pytest.skip("one core: no core is left for a loader worker, and both runs would load in-process")
        runs = {j: train(synth_root, tmp_path / f"j{j}", fresh_teacher, workers=j, train_batchnorm=True)
                for j in (0, 2)}
    finally:
        torch.set_num_threads(threads)
    assert_identical(weights(runs[0].run_dir), weights(runs[2].run_dir))


def test_seed_changes_the_run_and_is_recorded(synth_root, tmp_path, fresh_teacher):
    base = train(synth_root, tmp_path, fresh_teacher, epochs=1)
    other = train(synth_root, tmp_path, fresh_teacher, epochs=1, seed=7)
    assert other.run_dir.name == base.run_dir.name.replace("_teach_", "_seed7_teach_")
    a = load_checkpoint(base.run_dir / "model_epoch1.pth.tar")
    b = load_checkpoint(other.run_dir / "model_epoch1.pth.tar")
    assert (a["meta"]["seed"], b["meta"]["seed"]) == (0, 7)
    assert not torch.equal(a["state_dict"]["features.0.weight"], b["state_dict"]["features.0.weight"])
    assert "Seed 7" in (other.run_dir / "log.txt").read_text()


def test_python_hash_seed_does_not_change_the_weights(synth_root, tmp_path, fresh_teacher):
    runs = []
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed, PYTHONPATH=str(REPO))
        directory = tmp_path / f"hash{hash_seed}"
        argv = ["--directory", str(directory), "--data-root", str(synth_root), "-d", "synth-sfm", "-a", "squeezenet1_1",
                "--not-pretrained", "-m", "ts", "--teacher", str(fresh_teacher), "--image-size", "40", "-nn", "2",
                "-qs", "16", "-ps", "24", "-b", "4", "--epochs", "2", "--device", "cpu", "--lr", "1e-3", "-j", "0"]
        subprocess.run([sys.executable, str(REPO / "main.py"), *argv], check=True, env=env, capture_output=True,
                       cwd=tmp_path)
        runs.append(next(directory.iterdir()))
    assert_identical(weights(runs[0]), weights(runs[1]))


def test_streams_are_stable_and_independent():
    # the same on any machine, Python and hash seed (numpy's SeedSequence of a CRC32): runs resume and compare
    assert derived_seed(0, "tuples", 3) == 2062893208538769887
    seeds = {derived_seed(s, stream, e) for s in (0, 1) for stream in ("tuples", "shuffle") for e in (0, 1)}
    assert len(seeds) == 8


def test_building_the_network_leaves_the_callers_generators_alone(tmp_path):
    """run() re-seeded torch's, numpy's and Python's global generators for good: a caller's
    own seed then drew the draws of --seed 0. The initial weights still depend on --seed only."""
    import random

    import numpy as np

    from aml.training import runner
    from aml.utils.distributed import World

    config = TrainConfig(directory=str(tmp_path), arch="resnet18", pretrained=False, mode="std")
    first = []
    for caller_seed in (1, 2):
        torch.manual_seed(caller_seed)
        np.random.seed(caller_seed)
        random.seed(caller_seed)
        expected = torch.rand(3), np.random.rand(3), random.random()
        torch.manual_seed(caller_seed)
        np.random.seed(caller_seed)
        random.seed(caller_seed)
        net = runner._Run(config, World(), "cpu", tmp_path / "run").network(None)
        assert torch.equal(torch.rand(3), expected[0]) and np.array_equal(np.random.rand(3), expected[1])
        assert random.random() == expected[2]
        first.append(next(net.parameters()).detach().clone())
    assert torch.equal(*first)
