"""The test suite's own housekeeping: stale teachers go, the one in use and a locked one stay;
the processes the tests start keep their temporary files in the session's folder."""

import fcntl
import subprocess
import sys
from pathlib import Path

from tests.conftest import drop_stale_teachers


def test_drop_stale_teachers_keeps_the_current_and_locked_ones(tmp_path):
    current, stale, busy = (tmp_path / name for name in ("current", "stale", "busy"))
    for folder in (current, stale, busy):
        folder.mkdir()
        (folder / "model_epoch3.pth.tar").write_bytes(b"weights")
    with open(busy / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        drop_stale_teachers(current)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "current"]
    drop_stale_teachers(current)
    assert [p.name for p in tmp_path.iterdir()] == ["current"]
    assert (current / "model_epoch3.pth.tar").read_bytes() == b"weights"


def test_started_processes_keep_their_temporary_files_in_the_sessions_folder(tmp_path_factory):
    """torchrun's agent leaves a torchelastic_* folder in $TMPDIR at every launch: not in /tmp."""
    printed = subprocess.run([sys.executable, "-c", "import tempfile; print(tempfile.gettempdir())"],
                             capture_output=True, text=True, check=True).stdout
    assert Path(printed.strip()).is_relative_to(tmp_path_factory.getbasetemp())
