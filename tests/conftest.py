"""Shared fixtures: a small synthetic data root generated once per test session, and the
learning tests' trained teacher, kept in pytest's cache."""

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import Iterator

import pytest
import torch

from aml.training import TrainConfig, run
from aml.data.synthetic import SyntheticTestConfig, SyntheticTrainConfig, generate_test_set, generate_train_set
from aml.utils.atomic import atomic_write
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


@pytest.fixture(scope="session", autouse=True)
def _children_scratch(tmp_path_factory) -> Iterator[None]:
    """The processes the tests start keep their temporary files in the session's folder, which
    pytest removes in turn: torchrun's agent leaves a ``torchelastic_*`` folder in $TMPDIR at
    every launch."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TMPDIR", str(tmp_path_factory.mktemp("tmp")))
        yield


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """A data root holding small synth-sfm, synth-oxford and synth-paris sets."""
    logging.getLogger("aml").setLevel(logging.WARNING)
    root = tmp_path_factory.mktemp("data")
    generate_train_set(root, "synth-sfm", SMALL_TRAIN)
    generate_test_set(root, "synth-oxford", SMALL_TEST)
    generate_test_set(root, "synth-paris", SMALL_TEST)
    return root


SEED = int(os.environ.get("AML_TEST_SEED", "0"))
# The learning tests' runs (tests/training/test_learning.py), main.py's flags (TrainConfig.from_flags). Frozen
# BatchNorm and a tuple loss: batch_forward encodes a mini-batch in one forward (the same
# result as tuple by tuple up to rounding, in 3/4 of the time).
LEARNING = dict(training_dataset="synth-sfm", pretrained=False, image_size=64, workers=0, device="cpu", val=False,
                print_freq=1000, seed=SEED, batch_forward=True, quiet=True)
# Their teacher: a resnet18-gem trained from scratch in std mode, 3 epochs.
TEACHER = dict(LEARNING, arch="resnet18", query_size=64, pool_size=128, neg_num=3, batch_size=4, epochs=3, lr=1e-4)
TEACHER_FILE = "model_epoch3.pth.tar"


def _teacher_key() -> str:
    """What the teacher's weights depend on: aml's code, the recipe, the data and torch (not
    the CPU kernels, see ``trained_teacher``)."""
    digest = hashlib.sha256(repr((sorted(TEACHER.items()), SMALL_TRAIN, torch.__version__)).encode())
    package = Path(__file__).resolve().parents[1] / "aml"
    for source in sorted(package.rglob("*.py")):
        digest.update(str(source.relative_to(package)).encode() + source.read_bytes())
    return digest.hexdigest()[:20]


@pytest.fixture(scope="session")
def trained_teacher(synth_root, tmp_path_factory, request) -> Path:
    """The learning tests' trained teacher (``TEACHER``), trained once per version of
    aml's code and recipe and kept in pytest's cache (``.pytest_cache``), where the other
    pytest-xdist worker, the kernel lanes that `make test-other-isa` runs after `make test`, and
    the next run find it (a file lock makes one process train it). The lanes thus train the
    students under their kernels from a teacher trained under the default ones; without the
    cache (``-p no:cacheprovider``, as benchmarks/learning_margins.py runs) each run trains its own."""
    cache = getattr(request.config, "cache", None)
    if cache is None:
        return _train_teacher(synth_root, tmp_path_factory.mktemp("teacher"))
    folder = cache.mkdir("aml-learning-teacher") / _teacher_key()
    # a copy of this session's own: what the tests write next to a network (the whitening
    # cache) stays out of the cache
    copy = tmp_path_factory.mktemp("teacher") / TEACHER_FILE
    with _locked(folder):  # trained, copied and the stale teachers dropped while it is held
        drop_stale_teachers(folder)
        if not (folder / TEACHER_FILE).exists():
            trained = _train_teacher(synth_root, tmp_path_factory.mktemp("teacher"))
            atomic_write(folder / TEACHER_FILE, lambda out: out.write(trained.read_bytes()))
        shutil.copyfile(folder / TEACHER_FILE, copy)
    return copy


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """``folder`` made and its lock held (made again if a run of another version of the code
    dropped it as stale before this one locked it)."""
    while True:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            lock = open(folder / "lock", "a")
        except FileNotFoundError:
            continue
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if (folder / "lock").exists():
                yield
                return


def drop_stale_teachers(kept: Path) -> None:
    """Delete the teachers that ``kept``'s siblings hold: each was trained for another version
    of aml's code (134 MB each), and a cache that kept them all filled the disk of a machine
    whose CI then ran out of room. A sibling whose lock another process holds (a run of
    another version, training or copying it now) stays."""
    for sibling in kept.parent.iterdir():
        if sibling == kept or not sibling.is_dir():
            continue
        try:
            lock = open(sibling / "lock", "a")
        except (FileNotFoundError, NotADirectoryError):  # another process dropped it first
            continue
        with lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            shutil.rmtree(sibling, ignore_errors=True)


def _train_teacher(root: Path, directory: Path) -> Path:
    return run(TrainConfig.from_flags(directory=str(directory), data_root=str(root), **TEACHER)).run_dir / TEACHER_FILE


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
def lock(monkeypatch):
    """``lock(path)``: opening ``path`` raises the PermissionError of another user's file (the
    tests may run as root, whom a file's permissions do not stop)."""
    import builtins
    import errno
    import io

    locked, real_open = set(), builtins.open

    def guarded_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.path.abspath(file) in locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(io, "open", guarded_open)  # pathlib's Path.open, read_bytes and read_text
    return lambda path: locked.add(os.path.abspath(path))


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


@pytest.fixture
def small_disk(tmp_path):
    """``small_disk(megabytes)``: a real file system of that size (a tmpfs mounted in the test's
    folder), so that numpy, torch and PIL meet a full disk as a user's command does (numpy
    reports it without an errno); skipped where this process may not mount. Unmounted after the
    test. ``fill_disk(folder, leave)`` then leaves ``leave`` bytes free on it."""
    import subprocess

    mounted = []

    def make(megabytes: int = 30) -> Path:
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(folder)],
                              capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"cannot mount a small file system here ({done.stderr.strip() or done.returncode})")
        mounted.append(folder)
        return folder

    yield make
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill_disk(folder: Path, leave: int) -> Path:
    """Fill the file system of ``folder`` with a file (``folder/filler``) until ``leave`` bytes stay free."""
    stats = os.statvfs(folder)
    free = stats.f_bavail * stats.f_frsize
    filler = Path(folder) / "filler"
    with open(filler, "wb") as out:
        out.truncate(0)
        chunk = b"\0" * (1 << 20)
        size = max(free - leave, 0)
        while size > 0:
            size -= out.write(chunk[:size])
    return filler


def pytest_terminal_summary(terminalreporter, config):
    """With --durations (as .ci/run runs): when each of the 12 longest test files ran, and on
    which pytest-xdist worker, to see where a run's wall time goes."""
    if not config.getoption("durations", None):
        return
    files = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) and getattr(report, "start", None):
                worker = getattr(getattr(report, "node", None), "gateway", None)
                span = files.setdefault(report.nodeid.split("::")[0], [report.start, report.stop, None])
                span[0], span[1] = min(span[0], report.start), max(span[1], report.stop)
                span[2] = worker.id if worker else "-"
    if not files:
        return
    begin = min(span[0] for span in files.values())
    terminalreporter.write_sep("=", "longest files: worker, from-to (s after the first test)")
    for name, (start, stop, worker) in sorted(files.items(), key=lambda kv: kv[1][0] - kv[1][1])[:12]:
        terminalreporter.write_line(f"{worker:4s} {start - begin:6.0f} - {stop - begin:6.0f}  {name}")


@pytest.fixture(scope="session")
def earlier_export(tmp_path_factory) -> Path:
    """A folder holding what `aml.export.export_student` writes (a random MobileNetV2 student
    with its aml metadata), and a copy of its ONNX file under the int8 file's name."""
    from aml.export import export_student
    from aml.networks import build_network

    folder = tmp_path_factory.mktemp("earlier-export")
    torch.manual_seed(0)
    export_student(build_network("mobilenet_v2", pretrained=False, teacher_dim=512).eval(), folder)
    shutil.copyfile(folder / "student.onnx", folder / "student-int8.onnx")
    return folder
