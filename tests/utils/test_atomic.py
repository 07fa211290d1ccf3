"""The atomic writer: files get the permissions the umask gives any new file."""

import errno
import io
import os
import stat
from pathlib import Path

import pytest
import torch

from aml.utils.atomic import DiskFull, atomic_write, is_disk_full, optional_write, publish_folder, staging_folder


@pytest.mark.parametrize("umask, mode", [(0o002, 0o664), (0o022, 0o644), (0o077, 0o600)])
def test_written_files_respect_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = atomic_write(tmp_path / "model.pth.tar", lambda out: out.write(b"weights"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode and path.read_bytes() == b"weights"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pth.tar"]


def test_staging_folders_are_per_process_and_dead_ones_are_removed(tmp_path):
    folder = tmp_path / "synth-1m"
    dead = tmp_path / ".synth-1m.999999999.abc.staging"  # no such process
    dead.mkdir()
    first, second = staging_folder(folder), staging_folder(folder)
    assert first != second and first.is_dir() and second.is_dir() and not dead.exists()
    (first / "a.txt").write_text("first")
    (second / "a.txt").write_text("second")
    assert publish_folder(first, folder) and not publish_folder(second, folder)  # the first one done wins
    assert (folder / "a.txt").read_text() == "first" and not second.exists()
    third = staging_folder(folder)
    (third / "a.txt").write_text("third")
    assert publish_folder(third, folder, overwrite=True) and (folder / "a.txt").read_text() == "third"


def test_a_failed_replacement_puts_the_old_folder_back_and_keeps_the_new_one(tmp_path, monkeypatch):
    """A rename that fails for another reason than a rival's folder must lose neither folder."""
    folder, staging = tmp_path / "store", tmp_path / ".store.indexing"
    folder.mkdir()
    (folder / "a.txt").write_text("old")
    staging.mkdir()
    (staging / "a.txt").write_text("new")
    rename = Path.rename

    def failing(self, target):
        if self == staging:
            raise PermissionError(13, "Permission denied", str(target))
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", failing)
    with pytest.raises(PermissionError):
        publish_folder(staging, folder, overwrite=True)
    assert (folder / "a.txt").read_text() == "old" and (staging / "a.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".store.indexing", "store"]  # no folder aside left


@pytest.mark.parametrize("umask, mode", [(0o002, 0o775), (0o022, 0o755), (0o077, 0o700)], ids=["002", "022", "077"])
def test_data_set_folders_respect_the_umask(tmp_path, umask, mode):
    """Staging folders come from mkdtemp (0700): a group sharing a data root could not read the sets."""
    from aml.data.download import extract_archive
    from aml.data.synthetic import SyntheticDistractorConfig, generate_distractor_set
    from tests.data.test_download import make_tar

    archive = tmp_path / "set.tgz"
    archive.write_bytes(make_tar({"set/a/x.jpg": b"x"}))
    old = os.umask(umask)
    try:
        tiny = SyntheticDistractorConfig(images=2, image_size=16)
        folders = [generate_distractor_set(tmp_path / "root", config=tiny),
                   extract_archive(archive, tmp_path / "jpg", flatten=True), staging_folder(tmp_path / "own")]
    finally:
        os.umask(old)
    assert [oct(stat.S_IMODE(folder.stat().st_mode)) for folder in folders] == [oct(mode)] * 3


class _FillsUp(io.RawIOBase):
    """A handle on a disk that fills up after ``room`` bytes."""

    def __init__(self, out, room):
        self.out, self.room = out, room

    def writable(self):
        return True

    def write(self, data):
        self.room -= len(data)
        if self.room < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.out.write(data)


def test_a_full_disk_is_named_and_leaves_the_old_file_whole(tmp_path):
    """torch.save reports a full disk as a RuntimeError raised while handling the OSError."""
    path = tmp_path / "model_best.pth.tar"
    atomic_write(path, lambda out: torch.save({"w": torch.ones(3)}, out))
    with pytest.raises(DiskFull, match="no space left on the device for .*model_best.pth.tar") as info:
        atomic_write(path, lambda out: torch.save({"w": torch.zeros(10000)}, _FillsUp(out, 2000)))
    assert isinstance(info.value.__cause__, RuntimeError) and is_disk_full(info.value.__cause__)
    assert torch.equal(torch.load(path)["w"], torch.ones(3)) and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_an_optional_write_on_a_full_disk_warns_and_goes_on(tmp_path, full_disk, caplog):
    full_disk(tmp_path)
    with optional_write("the cache"):
        atomic_write(tmp_path / "cache.npy", lambda out: out.write(b"x"))
    assert "the cache not written" in caplog.text and not list(tmp_path.iterdir())
    with pytest.raises(DiskFull):
        atomic_write(tmp_path / "needed.npy", lambda out: out.write(b"x"))


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS])
def test_an_optional_write_to_a_folder_it_cannot_write_warns_and_goes_on(tmp_path, monkeypatch, caplog, code):
    """A whitening or database cache beside a checkpoint on a read-only mount ended the test
    in a traceback after the encoding, with no results (tests run as root: the refusal is
    made by hand)."""
    import tempfile

    def refused(*args, **kwargs):
        raise OSError(code, os.strerror(code), str(tmp_path))

    monkeypatch.setattr(tempfile, "mkstemp", refused)
    with optional_write("the whitening cache"):
        atomic_write(tmp_path / "lw.pth", lambda out: out.write(b"x"))
    assert "the whitening cache not written" in caplog.text and not list(tmp_path.iterdir())
    with pytest.raises(OSError), optional_write("the cache"):
        raise OSError(errno.EIO, "input/output error")  # any other failure is not hidden


@pytest.mark.parametrize("message", ["4096 requested and 1024 written",
                                     "Not enough free space to write 41943040 bytes after offset 128"])
def test_numpys_short_writes_without_errno_are_a_full_disk(message):
    wrapped = RuntimeError("PytorchStreamWriter failed writing file")
    wrapped.__context__ = OSError(message)
    assert is_disk_full(OSError(message)) and is_disk_full(wrapped)
    assert not is_disk_full(OSError("4096 requested")) and not is_disk_full(OSError(errno.EACCES, message))


@pytest.mark.parametrize("megabytes, leave", [(4, 1 << 20), (40, 30 << 20)],
                         ids=["short write", "space reserved first"])
def test_np_save_on_a_real_full_disk_is_named_and_keeps_the_old_file(small_disk, megabytes, leave):
    """numpy writes arrays under 16 MB with fwrite (a short write) and reserves the space of
    larger ones first: both are a full disk, the old file stays whole, nothing is left."""
    import numpy as np

    from tests.conftest import fill_disk

    disk = small_disk(30)
    path = disk / "db.npy"
    atomic_write(path, lambda out: np.save(out, np.arange(10.0)))
    fill_disk(disk, leave)
    with pytest.raises(DiskFull, match=f"no space left on the device for {path}"):
        atomic_write(path, lambda out: np.save(out, np.ones((megabytes << 20) // 8)))
    assert np.array_equal(np.load(path), np.arange(10.0)) and sorted(p.name for p in disk.iterdir()) == ["db.npy",
                                                                                                       "filler"]


def test_a_writer_that_takes_a_file_name_replaces_the_file_whole_or_not_at_all(tmp_path, full_disk):
    from aml.utils.atomic import atomic_path

    path = tmp_path / "student.onnx"
    with atomic_path(path) as temporary:
        temporary.write_bytes(b"first")
    assert path.read_bytes() == b"first" and stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()
    with pytest.raises(RuntimeError, match="export failed"):
        with atomic_path(path) as temporary:
            temporary.write_bytes(b"cut")
            raise RuntimeError("export failed")
    full_disk(tmp_path)
    with pytest.raises(DiskFull, match=f"no space left on the device for {path}"):
        with atomic_path(path) as temporary:
            temporary.write_bytes(b"second")
    assert path.read_bytes() == b"first" and [p.name for p in tmp_path.iterdir()] == [path.name]


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_write_that_keeps_an_existing_file_keeps_the_first_one_written(tmp_path):
    """Shards are written so: two processes encoding one shard leave the first one's, never a swap."""
    path = tmp_path / "shard_00000.npy"
    atomic_write(path, lambda out: out.write(b"first"), replace=False)
    atomic_write(path, lambda out: out.write(b"second"), replace=False)
    assert path.read_bytes() == b"first" and [p.name for p in tmp_path.iterdir()] == [path.name]
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()


def test_a_lock_beside_a_folder_holds_while_the_folder_is_replaced(tmp_path):
    from aml.utils.atomic import FolderInUse, folder_lock

    store = tmp_path / "store"
    store.mkdir()
    with folder_lock(store, fix="give another --store", beside=True) as lock:
        assert lock == tmp_path / ".store.lock" and not list(store.iterdir())
        staging = staging_folder(store)
        (staging / "manifest.json").write_text("new")
        assert publish_folder(staging, store, overwrite=True)
        with pytest.raises(FolderInUse, match=f"another run is using {store} \\(pid {os.getpid()}\\); wait for it "
                                              "to end, or give another --store"):
            with folder_lock(store, fix="give another --store", beside=True):
                pass
    assert (store / "manifest.json").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == [
        ".store.lock", "store"]
    with folder_lock(store, beside=True):  # free again
        pass


def test_a_staging_folder_of_a_set_whose_name_extends_this_one_is_not_taken_for_a_dead_ones(tmp_path):
    """The staging of set 'a.123' (.a.123.<pid>.<random>.staging) was read as set 'a''s of process
    123 and deleted mid-build when no process 123 ran."""
    other = tmp_path / ".a.123.456.xyz.staging"
    other.mkdir()
    dead = tmp_path / ".a.999999999.abc_1.staging"
    dead.mkdir()
    staging_folder(tmp_path / "a")
    assert other.is_dir() and not dead.exists()


def test_a_folder_or_file_in_the_way_is_one_line_and_a_cache_goes_without(tmp_path, caplog):
    """A folder where a feature file or cache goes, or a file where its folder goes: an
    IsADirectoryError or FileExistsError's traceback, the cache's after a whole extraction."""
    from aml.utils.atomic import InTheWay, optional_write

    (tmp_path / "db.npy").mkdir()
    with pytest.raises(InTheWay, match=r"db.npy is a folder where aml writes a file: move it away"):
        atomic_write(tmp_path / "db.npy", lambda out: out.write(b"x"))
    (tmp_path / "features").write_text("a file")
    with pytest.raises(InTheWay, match=r"features is a file where aml makes a folder \(for .*a.npy\): move it away"):
        atomic_write(tmp_path / "features" / "cache" / "a.npy", lambda out: out.write(b"x"))
    with caplog.at_level("WARNING", logger="aml.utils.atomic"), optional_write("the descriptor cache"):
        atomic_write(tmp_path / "db.npy", lambda out: out.write(b"x"))
    assert "the descriptor cache not written, the results are not affected" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db.npy", "features"] and (tmp_path / "db.npy").is_dir()


def test_a_staging_folder_of_another_machine_is_never_taken_for_a_dead_ones(tmp_path, monkeypatch):
    """A job on another node of a shared (NFS) data root has a pid this machine does not run:
    its staging folder was deleted mid-build, the writer recreated it holding only what came
    after, and a partial data set was published as whole."""
    import aml.utils.atomic as atomic

    monkeypatch.setattr(atomic.socket, "gethostname", lambda: "node-7.cluster")
    here = atomic._host()
    assert here.startswith("node-7-cluster")
    elsewhere = tmp_path / ".synth-1m.node-12.999999999.abc.staging"  # no such pid here: another machine's
    elsewhere.mkdir()
    dead_here = tmp_path / f".synth-1m.{here}.999999999.def.staging"
    dead_here.mkdir()
    machine_only = tmp_path / ".synth-1m.node-7-cluster.999999999.jkl.staging"  # the last aml's, before namespaces
    machine_only.mkdir()
    older = tmp_path / ".synth-1m.999999999.ghi.staging"  # an older aml's name, without the machine
    older.mkdir()
    mine = staging_folder(tmp_path / "synth-1m")
    assert mine.name.startswith(f".synth-1m.{here}.{os.getpid()}.") and mine.name.endswith(".staging")
    assert elsewhere.is_dir() and not dead_here.exists() and not older.exists() and not machine_only.exists()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to act as another user")
def test_another_users_lock_file_is_waited_on_not_a_permission_error():
    """On a data root a group shares, a lock file made by one user (0644 by a 022 umask) could
    not be opened for writing by the next: PermissionError instead of taking turns."""
    import shutil
    import tempfile

    from aml.utils.atomic import folder_lock, lock_beside

    shared = Path(tempfile.mkdtemp(dir="/tmp"))  # a world-writable folder another user reaches
    try:
        shared.chmod(0o777)
        sticky, readonly = shared / "sticky", shared / "readonly"  # /tmp's mode; A's features folder
        sticky.mkdir(mode=0o1777)
        sticky.chmod(0o1777)
        readonly.mkdir(mode=0o755)
        for name in (".shard_00000.npy.lock", ".store.lock", "sticky/.db.npy.lock"):  # left by user A's runs
            (shared / name).write_text("1")
            (shared / name).chmod(0o644)
        child = os.fork()
        if child == 0:  # user B
            code = 1
            try:
                os.setgid(65534)
                os.setuid(65534)
                with lock_beside(shared / "shard_00000.npy"), folder_lock(shared / "store", beside=True):
                    pass
                with lock_beside(sticky / "db.npy"):  # A's lock file cannot be deleted there: it stays
                    pass
                try:
                    with lock_beside(readonly / "db.npy"):  # no lock file, no right to make one
                        pass
                except PermissionError:  # what a cache's optional write forgives (not FileNotFoundError)
                    code = 0
            finally:
                os._exit(code)
        assert os.waitpid(child, 0)[1] == 0
    finally:
        shutil.rmtree(shared)


def test_a_lock_that_cannot_be_taken_is_not_reported_as_a_run_in_the_way(tmp_path, monkeypatch):
    """On NFS an exclusive flock needs a file opened for writing (EBADF otherwise): it was
    reported as "another run is using ...", which no run was."""
    import errno

    import aml.utils.atomic as atomic
    from aml.utils.atomic import LockUnavailable, folder_lock, lock_beside

    def refused(handle, flags):
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(atomic.fcntl, "flock", refused)
    for lock in (lambda: folder_lock(tmp_path / "store", beside=True), lambda: lock_beside(tmp_path / "db.npy")):
        with pytest.raises(LockUnavailable, match=r"cannot lock .*\.lock \(Bad file descriptor\): another user's"):
            with lock():
                pass


def test_a_killed_writers_temporary_in_a_shared_folder_goes_with_the_next_write_of_its_file(tmp_path, monkeypatch):
    """A run killed while it wrote a feature file left ``.<file>.<random>.tmp`` (gigabytes for
    a +1M store) in the shared features/ folder for good: no run cleans a folder others write
    to. The next write of the same file removes those of this machine's dead processes only."""
    import aml.utils.atomic as atomic

    monkeypatch.setattr(atomic.socket, "gethostname", lambda: "node-7.cluster")
    here = atomic._host()
    # this machine's name and its pid namespace: another container of the same name (the host's
    # network) counts its own pids, and its live writer looked dead from here
    assert here == f"node-7-cluster-{os.stat('/proc/self/ns/pid').st_ino}"
    leftovers = {
        "dead here": tmp_path / f".db.npy.{here}.999999999.abc.tmp",
        "dead here, named by the machine alone (an older aml)": tmp_path / ".db.npy.node-7-cluster.999999999.stu.tmp",
        "live here": tmp_path / f".db.npy.{here}.{os.getppid()}.def.tmp",
        "another machine's": tmp_path / ".db.npy.node-12.999999999.ghi.tmp",
        "another pid namespace's": tmp_path / ".db.npy.node-7-cluster-1.999999999.pqr.tmp",
        "an older aml's, naming no process": tmp_path / ".db.npy.jkl.tmp",
        "another file's": tmp_path / f".db.npy.json.{here}.999999999.mno.tmp",
    }
    for path in leftovers.values():
        path.write_bytes(b"half a file")
    atomic_write(tmp_path / "db.npy", lambda out: out.write(b"whole"))
    kept = {what for what, path in leftovers.items() if path.exists()}
    assert kept == set(leftovers) - {"dead here", "dead here, named by the machine alone (an older aml)"}
    assert (tmp_path / "db.npy").read_bytes() == b"whole"
    with atomic.atomic_path(tmp_path / "db.npy") as temporary:
        assert temporary.name.startswith(f".db.npy.{here}.{os.getpid()}.") and temporary.suffix == ".tmp"
        temporary.write_bytes(b"again")


def test_waiting_on_a_lock_beside_a_file_is_said(tmp_path, caplog):
    """A second job preparing the 1M set waited hours on the first one's download without a word."""
    import threading

    from aml.utils.atomic import lock_beside

    entered = []

    def wait():
        with lock_beside(tmp_path / "jpg"):
            entered.append(True)

    with lock_beside(tmp_path / "jpg"):
        with caplog.at_level("INFO", logger="aml.utils.atomic"):
            waiter = threading.Thread(target=wait)
            waiter.start()
            for _ in range(200):
                if "waiting for another process" in caplog.text:
                    break
                threading.Event().wait(0.01)
            assert not entered
    waiter.join(10)
    assert f">> waiting for another process, which is making {tmp_path / 'jpg'}" in caplog.text and entered == [True]


def test_a_long_file_name_is_written_whatever_the_machines_name(tmp_path, monkeypatch):
    """The temporary file named the machine and the pid after the file's name: a whitening cache
    named after a long checkpoint (over ~220 characters) failed with 'File name too long' once
    learned; with a 63-character host name, from ~158."""
    import aml.utils.atomic as atomic

    monkeypatch.setattr(atomic.socket, "gethostname", lambda: "n" * 63)
    name = "r" * 240 + ".pth"
    with atomic.atomic_path(tmp_path / name) as temporary:
        assert temporary.name.startswith(".~") and len(temporary.name) < 255
        temporary.write_bytes(b"learned")
    assert (tmp_path / name).read_bytes() == b"learned"
    dead = tmp_path / f".{atomic._leftover_stem(name)}.{atomic._host()}.999999999.abc.tmp"
    dead.write_bytes(b"half")
    atomic_write(tmp_path / name, lambda out: out.write(b"again"))
    assert not dead.exists() and (tmp_path / name).read_bytes() == b"again"
    staging = staging_folder(tmp_path / ("s" * 250))
    assert staging.name.startswith(".~") and staging.is_dir()


def test_a_stop_waits_until_an_uninterrupted_block_ends():
    """Ctrl-C between the renames that publish an export left two exports' files mixed: within
    the block a stop is held, then taken by the handler it would have met."""
    import signal

    from aml.utils.atomic import uninterrupted

    class Stopped(Exception):
        pass

    def stop(signum, frame):
        raise Stopped(signum)

    done = []
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        with pytest.raises(Stopped):
            with uninterrupted():
                os.kill(os.getpid(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGTERM)  # one stop is taken, as its handler takes it
                done.append("renamed")
        assert done == ["renamed"] and signal.getsignal(signal.SIGTERM) is stop
        with uninterrupted():  # without a stop, nothing happens
            done.append("again")
        assert done == ["renamed", "again"]
        ignored = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a job started with & by a script
        try:
            with pytest.raises(Stopped):  # an ignored Ctrl-C first does not hide the SIGTERM after it
                with uninterrupted():
                    os.kill(os.getpid(), signal.SIGINT)
                    os.kill(os.getpid(), signal.SIGTERM)
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        finally:
            signal.signal(signal.SIGINT, ignored)
    finally:
        signal.signal(signal.SIGTERM, previous)
