"""The atomic writer: files get the permissions the umask gives any new file."""

import os
import stat

import pytest

from aml.utils.atomic import atomic_write


@pytest.mark.parametrize("umask, mode", [(0o002, 0o664), (0o022, 0o644), (0o077, 0o600)])
def test_written_files_respect_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = atomic_write(tmp_path / "model.pth.tar", lambda out: out.write(b"weights"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode and path.read_bytes() == b"weights"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pth.tar"]
