"""Shared fixtures: a small synthetic data root generated once per test session."""

import logging
import os

import pytest
import torch

from aml.data.synthetic import SyntheticTestConfig, SyntheticTrainConfig, generate_test_set, generate_train_set
from aml.utils.cpu import enlarge_kernel_cache, threads_per_process

SMALL_TRAIN = SyntheticTrainConfig(train_landmarks=16, val_landmarks=4, views=8, pairs_per_landmark=4, image_size=96)
SMALL_TEST = SyntheticTestConfig(landmarks=15, queries_per_landmark=2, easy=4, hard=4, junk=1, distractor_landmarks=8,
                        distractor_views=3, image_size=96)


def _share_the_cores() -> None:
    """Under pytest-xdist (``-n N``) each worker takes its share of the cores, and so do the
    processes it starts: N workers of all the cores' threads each would wait on each other."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = threads_per_process(workers)
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)


_share_the_cores()
enlarge_kernel_cache()  # as the command lines do (aml.cli.arguments.run_cli)


def pytest_configure(config):
    config.addinivalue_line("markers", "learning: asserts a learning outcome (CI runs these under every CPU kernel set)")
    config.addinivalue_line("markers", "kernels: asserts an equality that float rounding could break (CI runs these "
                                       "under every CPU kernel set)")
    config.addinivalue_line("markers", "long: a file of tests that train networks or start processes for tens of "
                                       "seconds (pytest-xdist starts it early)")


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """A data root holding small synth-sfm, synth-oxford and synth-paris sets."""
    logging.getLogger("aml").setLevel(logging.WARNING)
    root = tmp_path_factory.mktemp("data")
    generate_train_set(root, "synth-sfm", SMALL_TRAIN)
    generate_test_set(root, "synth-oxford", SMALL_TEST)
    generate_test_set(root, "synth-paris", SMALL_TEST)
    return root


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failure says under which CPU kernels it ran (the kernel lanes run one worker per set)."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        report.sections.append(("CPU kernels", f"ATen {torch.backends.cpu.get_cpu_capability()}, ONEDNN_MAX_CPU_ISA="
                                               f"{os.environ.get('ONEDNN_MAX_CPU_ISA', 'default')}"))


def pytest_collection_modifyitems(config, items):
    """Files with `learning` tests (the longest: training runs), then with `kernels` tests
    (torchrun jobs), then files marked `long`, then the rest: pytest-xdist starts the long
    files early and the short ones fill in around them, so that no worker ends with a long
    file while the other waits."""
    def rank(item) -> int:
        for position, marker in enumerate(("learning", "kernels", "long")):
            if any(i.get_closest_marker(marker) for i in by_file[item.path]):
                return position
        return 3

    by_file = {}
    for item in items:
        by_file.setdefault(item.path, []).append(item)
    ranks = {path: rank(tests[0]) for path, tests in by_file.items()}
    items.sort(key=lambda item: ranks[item.path])


@pytest.fixture
def full_disk(monkeypatch):
    """``full_disk(folder)``: from then on, a file written (fsynced) under ``folder`` fails as
    on a full disk (ENOSPC), as the kernel reports a delayed allocation that finds no space."""
    import errno
    from pathlib import Path

    real_fsync = os.fsync

    def fill(folder):
        folder = Path(folder).resolve()

        def fsync(fd):
            if Path(os.readlink(f"/proc/self/fd/{fd}")).is_relative_to(folder):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_fsync(fd)
        monkeypatch.setattr(os, "fsync", fsync)
    return fill
