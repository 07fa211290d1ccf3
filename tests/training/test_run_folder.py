"""The run folder's loss log: rewritten whole or not at all."""

import pytest

from aml.training.run_folder import LOSS_LOG_HEADER, RunLog
from aml.utils.atomic import DiskFull


def test_a_resumed_run_on_a_full_disk_keeps_the_loss_log(tmp_path, full_disk):
    log = RunLog(tmp_path)
    log.restart_at(0)
    log.losses(0, 0.5, None)
    log.losses(1, 0.4, None)
    before = (tmp_path / "loss_log.txt").read_text()
    assert before == f"{LOSS_LOG_HEADER}\n0, 0.5\n1, 0.4\n"
    full_disk(tmp_path)
    with pytest.raises(DiskFull, match="loss_log.txt"):
        log.restart_at(1)
    assert (tmp_path / "loss_log.txt").read_text() == before and sorted(p.name for p in tmp_path.iterdir()) == [
        "loss_log.txt"]


def test_a_loss_log_with_other_bytes_is_resumed(tmp_path):
    """A loss_log.txt with bytes that are not UTF-8 (an editor's, a cut write) ended --resume in UnicodeDecodeError."""
    (tmp_path / "loss_log.txt").write_bytes(f"{LOSS_LOG_HEADER}\n0, 0.5\n\xff\xfe garbage\n1, 0.4\n".encode("latin-1"))
    log = RunLog(tmp_path)
    log.restart_at(1)
    assert (tmp_path / "loss_log.txt").read_text() == f"{LOSS_LOG_HEADER}\n0, 0.5\n"
