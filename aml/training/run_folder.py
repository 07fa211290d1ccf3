"""A run folder's plain-text logs and its checkpoints by epoch."""

import logging
import re
from pathlib import Path
from typing import Dict, Optional

from aml.utils.atomic import atomic_write
from aml.utils.bounds import digits

log = logging.getLogger("aml.training.trainer")  # the loop's lines, whichever module writes them
CHECKPOINT_PATTERN = re.compile(r"^model_epoch(\d+)\.pth\.tar$")
LOSS_LOG_HEADER = "epoch, train_loss, val_loss"
LOSS_LOG = "loss_log.txt"  # a run folder's mark: every run that starts training writes it first


class RunLog:
    """log.txt and loss_log.txt of a run folder, appended and flushed line by line.

    Nothing is written before `restart_at`, where training starts: it writes the header and
    drops the lines of epochs that a resumed run trains again (a crash after logging an epoch
    but before its checkpoint), so a run refused before it trains (a checkpoint that does not
    resume) leaves no log. ``enabled`` False (a rank other than 0 of a distributed run) writes
    and logs nothing."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.run_dir, self.enabled = run_dir, enabled
        self.loss_log = run_dir / LOSS_LOG
        if enabled:
            run_dir.mkdir(parents=True, exist_ok=True)

    def restart_at(self, epoch: int) -> None:
        """Keep the header and the lines of 0-based epochs below ``epoch``."""
        if not self.enabled:
            return
        kept = [LOSS_LOG_HEADER]
        earlier = self.loss_log.read_text(errors="replace") if self.loss_log.is_file() else ""
        for line in earlier.splitlines():
            head = line.split(",", 1)[0].strip()
            number = digits(head)
            if number is not None and number < epoch:
                kept.append(line)
        self._rewrite(kept)

    def _rewrite(self, lines: list) -> None:
        """Replace loss_log.txt whole (a full disk keeps the old one)."""
        atomic_write(self.loss_log, lambda out: out.write("".join(line + "\n" for line in lines).encode()))

    def line(self, text: str, echo: bool = True) -> None:
        """Append ``text`` to log.txt and log it (unless ``echo`` is False); a disabled log
        (a rank other than 0) does neither."""
        if not self.enabled:
            return
        if echo:
            log.info(text)
        with open(self.run_dir / "log.txt", "a") as out:
            out.write(text + "\n")

    def losses(self, epoch: int, train_loss: float, val_loss: Optional[float]) -> None:
        if not self.enabled:
            return
        with open(self.loss_log, "a") as out:
            out.write(f"{epoch}, {train_loss}" + (f", {val_loss}" if val_loss is not None else "") + "\n")


def earlier_checkpoint(run_dir: Path) -> Optional[Path]:
    """A checkpoint an earlier run left in ``run_dir`` (its model_best, else its latest
    model_epochN), or None."""
    best = run_dir / "model_best.pth.tar"
    return best if best.is_file() else latest_checkpoint(run_dir)


def epoch_checkpoints(run_dir: Path) -> Dict[int, Path]:
    """The ``model_epochN.pth.tar`` files of ``run_dir`` by N, in order."""
    found = {
        int(m.group(1)): p for p in run_dir.glob("model_epoch*.pth.tar") if (m := CHECKPOINT_PATTERN.match(p.name))
    }
    return dict(sorted(found.items()))


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    """The ``model_epochN.pth.tar`` with the largest N in ``run_dir``."""
    found = epoch_checkpoints(run_dir)
    return found[max(found)] if found else None
