"""test.py and extract_features.py under torchrun (2 gloo processes on the CPU): the images
are shared out over the processes and the results equal one process's."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from aml.cli import extract_features as extract_cli
from aml.cli import test as test_cli
from aml.data.synthetic import generate_distractor_set
from aml.descriptors.store import open_store
from aml.networks import build_network
from aml.networks.checkpoint import checkpoint_state, save_checkpoint
from aml.training.batchnorm import calibrate_batchnorm
from tests.cli.test_distractors import SMALL_DISTRACTORS

# Trains networks or starts processes for tens of seconds: started early (conftest).
pytestmark = pytest.mark.long

REPOSITORY = Path(__file__).resolve().parents[2]
COMMON = ["-imsize", "64", "-j", "0", "--device", "cpu", "-q"]
# the processes encode other batches than one process does: float rounding, measured 2e-7
TOLERANCE = 1e-5


SCRIPTS = {"test.py": test_cli.main, "extract_features.py": extract_cli.main}


def launch(script, *args, processes=2):
    """``script`` under torchrun with 2 processes (its stdout), or with 1 in this process, on
    one thread as each torchrun process runs (a subprocess would add only torch's import)."""
    args = [str(a) for a in args]
    if processes == 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            SCRIPTS[script](args)
        finally:
            torch.set_num_threads(threads)
        return None
    prefix = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    done = subprocess.run(prefix + [str(REPOSITORY / script)] + args, capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    torch.manual_seed(1)
    network = build_network("resnet18", pretrained=False)
    calibrate_batchnorm(network, [torch.rand(8, 3, 64, 64)])
    return save_checkpoint(checkpoint_state(network, 0, 0.0), tmp_path_factory.mktemp("net") / "net.pth.tar")


def test_test_py_with_distractors_gives_one_process_results(synth_root, net, tmp_path):
    generate_distractor_set(synth_root, "synth-1m", SMALL_DISTRACTORS)
    results = {}
    for processes, shard in ((1, 64), (2, 50)):  # other shard sizes: each run encodes its own store
        out = tmp_path / f"{processes}.json"
        printed = launch("test.py", "-npath", net, "-d", "synth-oxford,synth-paris+synth1m", "--data-root", synth_root,
                         "--no-cache", "--shard-size", shard, "--results", out, *COMMON, processes=processes)
        assert processes == 1 or printed.count("synth-paris+synth1m: mAP") == 1  # rank 0 alone prints
        results[processes] = json.loads(out.read_text())["results"]
    for name in ("synth-oxford", "synth-paris+synth1m"):
        for level in ("easy", "medium", "hard"):
            assert results[2][name]["plain"][level]["map"] == pytest.approx(results[1][name]["plain"][level]["map"],
                                                                            abs=TOLERANCE)
    one, two = (open_store(results[p]["synth-paris+synth1m"]["distractors"]["store"]).load() for p in (1, 2))
    assert one.shape == two.shape == (512, SMALL_DISTRACTORS.images)
    np.testing.assert_allclose(two, one, atol=TOLERANCE)


def test_extract_features_gives_one_process_file(synth_root, net, tmp_path):
    files = {}
    for processes in (1, 2):
        root = tmp_path / str(processes)
        (root / "train").mkdir(parents=True)
        os.symlink(synth_root / "train" / "synth-sfm", root / "train" / "synth-sfm")
        launch("extract_features.py", "-npath", net, "-d", "synth-sfm", "--split", "val", "--data-root", root, *COMMON,
               processes=processes)
        (files[processes],) = (root / "features").glob("*.npy")
    one, two = np.load(files[1]), np.load(files[2])
    assert one.shape == two.shape and one.shape[1] > 10
    np.testing.assert_allclose(two, one, atol=TOLERANCE)
    lists = [files[p].with_name(files[p].name[:-4] + "_img_list.txt").read_text().split() for p in (1, 2)]
    assert [Path(image).name for image in lists[0]] == [Path(image).name for image in lists[1]]
