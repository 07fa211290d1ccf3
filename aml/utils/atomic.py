"""The one atomic file writer: checkpoints, data pickles and descriptor files all go
through it, so an interrupted write never leaves a half-written file in place."""

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Union


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


def atomic_write(path: Union[str, Path], write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(handle)`` on a temporary file next to ``path``, fsync it, then rename it
    onto ``path``; on any error (or interrupt) the temporary file is removed and an existing
    ``path`` is left untouched. The file gets the permissions of any new file (0666 less the
    umask), not the 0600 of a temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(handle, 0o666 & ~_process_umask())
        with os.fdopen(handle, "wb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return path


def remove_orphan_temporaries(folder: Union[str, Path]) -> list:
    """Delete the temporary files that :func:`atomic_write` leaves when its process is killed
    (``.<name>.<random>.tmp``) in ``folder``; returns their paths. Call it only on a folder
    no other process is writing to (a run folder at the start of its run)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    orphans = [p for p in folder.glob(".*.tmp") if p.is_file()]
    for orphan in orphans:
        orphan.unlink()
    return orphans
