"""The test suite's own housekeeping: stale teachers go, the one in use and a locked one stay;
the processes the tests start keep their temporary files in the session's folder."""

import fcntl
import re
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


ROUNDING_MARK = re.compile(r"mark\.(learning|kernels)\b")


def test_each_rounding_test_is_marked_in_its_own_file(request):
    """The kernel lanes (make test-avx2, test-sse41) collect only the files whose text marks a
    `learning` or `kernels` test: a mark given elsewhere (a conftest, an imported decorator)
    would leave its test out of them. Checked over this session's tests (the whole suite in
    make test)."""
    marked = {item.path for item in request.session.items
              if item.get_closest_marker("learning") or item.get_closest_marker("kernels")}
    assert [path for path in marked if not ROUNDING_MARK.search(path.read_text())] == []
