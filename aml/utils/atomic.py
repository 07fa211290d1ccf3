"""The one atomic file writer: checkpoints, data pickles and descriptor files all go
through it, so an interrupted write never leaves a half-written file in place; and staging
folders, so that a data set appears whole or not at all, even when two processes build it."""

import contextlib
import errno
import fcntl
import glob
import hashlib
import logging
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
from pathlib import Path
from typing import IO, BinaryIO, Callable, Iterator, Optional, Tuple, Union

from aml.utils.errors import AmlError
from aml.utils.types import PathLike

log = logging.getLogger(__name__)
#: errno values of a full disk and of an exhausted quota
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
#: what numpy says, with no errno, when a file write stops short (``ndarray.tofile``, hence
#: ``np.save`` into a file) or when it cannot reserve the space first: on a regular file, both
#: mean that the device or the quota is full
SHORT_WRITE = re.compile(r"^\d+ requested and \d+ written$|^Not enough free space to write \d+ bytes")


NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}  # a folder this user cannot write to


class DiskFull(AmlError):
    """A write failed because the disk (or the user's quota) is full."""


class InTheWay(AmlError):
    """A folder stands where aml writes a file, or a file where it makes a folder."""


def is_disk_full(err: Optional[BaseException]) -> bool:
    """Whether ``err``, or an error it was raised from or during, is a full disk (torch.save
    reports one as a RuntimeError raised while handling the OSError; numpy as an OSError
    without errno, `SHORT_WRITE`)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError) and (err.errno in DISK_FULL or (err.errno is None and SHORT_WRITE.match(str(err)))):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


def _process_umask() -> int:
    """The process's umask (read from /proc where it is shown, else set and restored)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: PathLike, write: Callable[[BinaryIO], object], replace: bool = True) -> Path:
    """Call ``write(handle)`` on a temporary file next to ``path``, fsync it, then rename it
    onto ``path``; on any error (or interrupt) the temporary file is removed and an existing
    ``path`` is left untouched. The file gets the permissions of any new file (0666 less the
    umask), not the 0600 of a temporary file. With ``replace`` False, a ``path`` that exists
    when the file is complete (another process wrote it first) is kept and this one dropped.

    Raises:
        DiskFull: naming ``path``, when the disk or the quota is full.
    """
    with atomic_path(path, replace) as temporary, open(temporary, "wb") as out:
        write(out)
    return Path(path)


def _link_unless_present(temporary: Path, path: Path) -> None:
    """Put ``temporary`` at ``path`` unless a file is there already (the first one stays)."""
    try:
        os.link(temporary, path)
    except FileExistsError:
        pass
    except OSError:  # a file system without hard links: the same, but not atomic
        if not path.exists():
            os.replace(temporary, path)
    temporary.unlink(missing_ok=True)


def make_folder(folder: Path, purpose: Optional[Path] = None) -> None:
    """Create ``folder`` (and those above it), or raise `InTheWay` naming the file that stands
    where one of them goes.

    Args:
        folder: the folder to make.
        purpose: the file it is made for, named in the error (default: the folder).

    Raises:
        InTheWay: a file stands where ``folder`` or a folder above it goes.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocking = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), folder)
        wanted = purpose or folder
        named = f" (for {wanted})" if wanted != blocking else ""
        raise InTheWay(f"{blocking} is a file where aml makes a folder{named}: move it away") from None


def _make_folder_of(path: Path) -> None:
    """Create the folder ``path`` goes in (`make_folder`)."""
    make_folder(path.parent, path)


@contextlib.contextmanager
def atomic_path(path: PathLike, replace: bool = True) -> Iterator[Path]:
    """`atomic_write` for writers that take a file name, not a handle (TorchScript, ONNX,
    onnxruntime's quantization): the ``with`` block writes the temporary file it is given,
    which is then fsynced and renamed onto ``path`` (with ``replace`` False: linked there,
    unless ``path`` exists); on any error it is removed and an existing ``path`` is left
    untouched.

    Raises:
        DiskFull: naming ``path``, when the disk or the quota is full.
    """
    path = Path(path)
    if path.is_dir():
        raise InTheWay(f"{path} is a folder where aml writes a file: move it away, or give another name")
    _make_folder_of(path)
    _remove_dead_temporaries(path)
    try:
        prefix = f".{_leftover_stem(path.name)}.{_host()}.{os.getpid()}."
        handle, name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=path.parent)
    except OSError as err:
        if is_disk_full(err):
            raise DiskFull(f"no space left on the device for {path}: free space and run again") from err
        raise
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.chmod(temporary, 0o666 & ~_process_umask())
        if replace:
            os.replace(temporary, path)
        else:
            _link_unless_present(temporary, path)
    except BaseException as err:
        temporary.unlink(missing_ok=True)
        if is_disk_full(err) and not isinstance(err, DiskFull):
            raise DiskFull(
                f"no space left on the device for {path} (nothing of it was kept; files written before "
                "are complete): free space and run again"
            ) from err
        raise


@contextlib.contextmanager
def optional_write(what: str) -> Iterator[None]:
    """For writes a run can do without (caches): a full disk, or a folder this user cannot
    write to (a read-only mount, a shared data root), logs a warning and the run goes on."""
    try:
        yield
    except (DiskFull, InTheWay) as err:
        log.warning(">> %s not written, the results are not affected: %s", what, err)
    except OSError as err:
        if err.errno not in NOT_WRITABLE:
            raise
        log.warning(">> %s not written (%s), the results are not affected", what, err)


def remove_orphan_temporaries(folder: Union[str, Path]) -> list:
    """Delete the temporary files that `atomic_write` leaves when its process is killed
    (``.<name>.<host>.<pid>.<random>.tmp``) in ``folder``, whoever wrote them; returns their
    paths. Call it only on a folder no other process is writing to (a run folder at the start
    of its run); in a shared folder, `atomic_write` removes those of dead processes itself."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    orphans = [p for p in folder.glob(".*.tmp") if p.is_file()]
    for orphan in orphans:
        orphan.unlink()
    return orphans


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _machine() -> str:
    """This machine's name in letters, digits and hyphens."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def _host() -> str:
    """Where this process's pid means something, as a staging folder's or a temporary file's
    name carries it (letters, digits and hyphens): the machine's name, and its process-id
    namespace where one is seen (containers on one machine that share its name, e.g. with the
    host's network, each count their own pids: another's live writer is no dead one here)."""
    try:
        return f"{_machine()}-{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:  # no /proc (macOS): the machine alone
        return _machine()


#: the longest file name that file systems take (ext4, XFS, tmpfs, NFS)
NAME_MAX = 255


def _leftover_stem(name: str) -> str:
    """What the temporary file or staging folder of ``name`` is named after: the name itself,
    or, where the name with this process's machine, pid and a random part would not fit in
    `NAME_MAX` (a whitening cache named after a long checkpoint), ``~`` and 16 hex digits of
    its sha1 (a write that worked failed with 'File name too long' after all its work)."""
    if len(name.encode("utf-8", "surrogateescape")) + len(_host()) + 40 <= NAME_MAX:
        return name
    return "~" + hashlib.sha1(name.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def _dead_leftover(name: str, target: str, suffix: str) -> bool:
    """Whether ``name`` is what a process that no longer runs left while it wrote ``target``
    (a staging folder, ``suffix`` "staging", or a temporary file, "tmp"): one of this machine
    (``.<target>.<host>.<pid>.<random>.<suffix>``, or an older aml's, named by the machine
    alone or, for a staging folder, ``.<target>.<pid>.<random>.staging``) whose pid is not
    alive. Another machine's, or another pid namespace's, is never dead here: its pid means
    nothing in this one (a shared data root on NFS, a container restarted since)."""
    base = re.escape(target)
    hosted = re.fullmatch(rf"\.{base}\.([A-Za-z0-9-]+)\.(\d+)\.[A-Za-z0-9_]+\.{suffix}", name)
    if hosted:
        return hosted.group(1) in (_host(), _machine()) and not _alive(int(hosted.group(2)))
    if suffix != "staging":  # an older temporary file names no process: it may be in use
        return False
    older = re.fullmatch(rf"\.{base}\.(\d+)\.[A-Za-z0-9_]+\.staging", name)  # not those of "<target>.<x>"
    return older is not None and not _alive(int(older.group(1)))


def _remove_dead_temporaries(path: Path) -> None:
    """Delete the temporary files beside ``path`` that writers of ``path`` killed on this
    machine left (a shared features/ or cache/ folder, where `remove_orphan_temporaries`
    cannot run: other processes write there)."""
    stem = _leftover_stem(path.name)
    for old in path.parent.glob(f".{glob.escape(stem)}.*.tmp"):
        if _dead_leftover(old.name, stem, "tmp"):
            old.unlink(missing_ok=True)
            log.info(">> removed %s, left by an interrupted write", old)


def staging_folder(folder: Union[str, Path]) -> Path:
    """A new, empty staging folder beside ``folder`` that belongs to this process alone
    (``.<name>.<host>.<pid>.<random>.staging``): two processes building the same folder never
    write into or delete each other's. Staging folders of this machine's processes that no
    longer run (killed mid-way) are removed first; another machine's are left (a process
    there is not seen from here). It gets the permissions of any new folder (0777 less the
    umask), not the 0700 of a temporary one, so that a group sharing a data root can read it."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    stem = _leftover_stem(folder.name)
    for old in folder.parent.glob(f".{glob.escape(stem)}.*.staging"):
        if _dead_leftover(old.name, stem, "staging"):
            shutil.rmtree(old, ignore_errors=True)
    prefix = f".{stem}.{_host()}.{os.getpid()}."
    staging = Path(tempfile.mkdtemp(prefix=prefix, suffix=".staging", dir=folder.parent))
    staging.chmod(0o777 & ~_process_umask())
    return staging


class LockUnavailable(AmlError):
    """A lock file that this process cannot lock (another user's, on a file system whose locks
    need write access: NFS)."""


def _lock_file(path: Path) -> IO[str]:
    """The lock file ``path``, opened to be locked (and held, with the lock, until closed): for
    writing, or read-only where another user made it (a group's shared data root; a local
    flock needs no write access, and waiting for that user's run is what the lock is for)."""
    try:
        return open(path, "a+")
    except PermissionError as cannot_write:
        try:
            return open(path)
        except FileNotFoundError:  # a folder this user cannot write in: the write's own error
            raise cannot_write from None


def _flock(handle: IO[str], path: Path, flags: int) -> None:
    """flock ``handle``; BlockingIOError when another process holds it (with LOCK_NB), or
    `LockUnavailable` naming ``path`` where it cannot be locked at all."""
    try:
        fcntl.flock(handle, flags)
    except BlockingIOError:
        raise
    except OSError as err:  # NFS: an exclusive lock needs a file opened for writing (EBADF)
        raise LockUnavailable(
            f"cannot lock {path} ({err.strerror}): another user's lock file on a file system whose locks need "
            "write access; make it group-writable (chmod g+w), or delete it when no run uses it"
        ) from None


@contextlib.contextmanager
def lock_beside(path: PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``.<name>.lock`` beside ``path`` for the ``with`` block,
    waiting for another holder (processes making one file take turns). Unlike `folder_lock`,
    the lock file goes when the block ends: a waiter that then holds the deleted file's lock
    opens the new one and waits again.

    Examples:
        >>> import pathlib, tempfile
        >>> from aml.utils.atomic import lock_beside
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     with lock_beside(pathlib.Path(folder) / "weights.pth"):
        ...         held = sorted(p.name for p in pathlib.Path(folder).iterdir())
        ...     held, sorted(pathlib.Path(folder).iterdir())
        (['.weights.pth.lock'], [])
    """
    path = Path(path)
    lock = path.with_name(f".{path.name}.lock")
    _make_folder_of(path)
    while True:
        handle = _lock_file(lock)
        try:
            try:
                _flock(handle, lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # said: a download of the 1M set holds it for hours
                log.info(">> waiting for another process, which is making %s", path)
                _flock(handle, lock, fcntl.LOCK_EX)
            try:
                current: Optional[int] = os.stat(lock).st_ino
            except FileNotFoundError:
                current = None
            if current == os.fstat(handle.fileno()).st_ino:  # not a file its holder deleted meanwhile
                try:
                    yield
                finally:
                    with contextlib.suppress(PermissionError):  # another user's, in a sticky folder: it stays
                        lock.unlink(missing_ok=True)
                return
        finally:
            handle.close()


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the block ends, then act as they would have: a few
    renames that publish a set of files are done whole, never half (outside the main thread,
    where signal handlers cannot be set, the block runs as it is).

    Examples:
        >>> from aml.utils.atomic import uninterrupted
        >>> with uninterrupted():
        ...     pass
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list = []
    stops = (signal.SIGINT, signal.SIGTERM)
    previous = {stop: signal.signal(stop, lambda signum, frame: held.append((signum, frame))) for stop in stops}
    try:
        yield
    finally:
        for stop, handler in previous.items():  # None: a handler set from C, which Python cannot set again
            signal.signal(stop, handler if handler is not None else signal.SIG_DFL)
        taken = set()
        for signum, frame in held:  # each stop once, in the order they came, as its own handler takes it
            if signum in taken:
                continue
            taken.add(signum)
            handler = previous[signum]
            if callable(handler):
                handler(signum, frame)
            elif handler in (signal.SIG_DFL, None):
                os.kill(os.getpid(), signum)


@contextlib.contextmanager
def staged(folder: Union[str, Path]) -> Iterator[Path]:
    """A `staging_folder` of ``folder`` for the ``with`` block, which builds it and publishes
    it (`publish_folder`); whatever is left of it when the block ends (an error, a full disk,
    an interrupt) is removed, so a failed build leaves nothing behind."""
    staging = staging_folder(folder)
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish_folder(staging: Path, folder: Union[str, Path], overwrite: bool = False) -> bool:
    """Rename a finished ``staging`` folder to ``folder``; True if it was put in place. When
    ``folder`` exists already (another process finished first) it is kept and ``staging``
    removed, unless ``overwrite``, which replaces it: the old folder is first renamed aside
    (into a staging folder of this process, removed after), so that a reader finds the old
    folder or the new one whole, never one half deleted. A rename that fails for another
    reason (permissions, another file system) puts the old folder back, keeps ``staging``
    and raises: nothing is lost."""
    folder = Path(folder)
    aside = None
    if folder.exists() and overwrite:
        aside = staging_folder(folder)
        folder.rename(aside / folder.name)
    try:
        if not folder.exists():
            staging.rename(folder)
            return True
    except OSError:
        if not folder.exists():  # not another process's folder: a real failure
            if aside is not None:
                (aside / folder.name).rename(folder)
            raise
    finally:
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)  # another process published first
    return False


class FolderInUse(AmlError, RuntimeError):
    """Another live process holds the folder's lock."""


@contextlib.contextmanager
def folder_lock(
    folder: Union[str, Path],
    fix: str = "give another --directory or other flags",
    beside: bool = False,
    wait: bool = False,
) -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` for the ``with`` block; FolderInUse when another
    process holds it (unless ``wait``). The lock goes with the process (flock), so a killed
    run never leaves a stale one.

    Args:
        folder: the folder.
        fix: what the error advises besides waiting (``"give another --store"``).
        beside: lock ``.<name>.lock`` beside the folder instead of ``<folder>/.lock``, so that
            the folder itself may be replaced (a staging folder renamed onto it) while held.
        wait: wait for the other process instead (for a short update of a shared folder).

    Returns:
        The lock file, holding the holder's pid.

    Raises:
        FolderInUse: naming the folder and the process that holds it.
    """
    folder = Path(folder)
    path = folder.parent / f".{folder.name}.lock" if beside else folder / ".lock"
    handle = _lock_file(path)
    try:
        try:
            _flock(handle, path, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            if not wait:
                raise FolderInUse(
                    f"another run is using {folder} (pid {holder}); wait for it to end, or {fix}"
                ) from None
            log.info(">> waiting for process %s, which is using %s", holder, folder)
            _flock(handle, path, fcntl.LOCK_EX)
        if handle.writable():  # another user's lock file (a shared data root) keeps its last pid
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
        yield path
    finally:
        handle.close()


def file_stamp(path: Path) -> Tuple[int, int, int]:
    """What tells a file from one put in its place (`atomic_write` renames a new file onto
    it): its inode, modification time and size; zeros when it is missing."""
    try:
        found = path.stat()
    except OSError:
        return (0, 0, 0)
    return (found.st_ino, found.st_mtime_ns, found.st_size)


def folder_identity(folder: Path) -> Tuple[int, int]:
    """The folder's device and inode, which `publish_folder` changes (it renames a new folder
    into its place); zeros when there is none."""
    try:
        found = folder.stat()
    except OSError:
        return (0, 0)
    return found.st_dev, found.st_ino
