"""The atomic writer: files get the permissions the umask gives any new file."""

import os
import stat

import pytest

from aml.utils.atomic import atomic_write, publish_folder, staging_folder


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
