"""Progress bars: a live bar on a terminal; elsewhere (a log file, a pipe) a few plain lines.

Every loop that shows progress goes through `progress_bar`. On a terminal it is tqdm's
bar, redrawn in place. When stderr is not a terminal, redrawing in place would write every
refresh into the log (thousands of carriage-return lines in ``make demo > log 2>&1``), so a bar
writes a line when it starts, at most one every ``PLAIN_INTERVAL`` seconds, and one when it
ends.
"""

import sys
from typing import Any, Optional, TextIO

from tqdm import tqdm

#: seconds between two progress lines when stderr is not a terminal
PLAIN_INTERVAL = 30.0


class _Lines:
    """A stream for tqdm that writes each refresh as one plain line (no carriage return, no
    cursor movement)."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.encoding = getattr(stream, "encoding", None) or "utf-8"

    def write(self, text: str) -> int:
        line = text.replace("\r", "").replace("\x1b[A", "").strip()
        if line:
            self.stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def progress_bar(
    iterable: Any = None, *, enabled: bool = True, stream: Optional[TextIO] = None, **options: Any
) -> tqdm:
    """A tqdm bar over ``iterable`` (or ``total=``) with tqdm's ``options`` (desc, unit,
    leave...); nothing when not ``enabled``; plain lines when ``stream`` (stderr by default)
    is not a terminal."""
    if not enabled:
        return tqdm(iterable, disable=True, **options)
    stream = stream if stream is not None else sys.stderr
    if _is_terminal(stream):
        return tqdm(iterable, file=stream, **options)
    options.update(
        mininterval=PLAIN_INTERVAL, maxinterval=PLAIN_INTERVAL, leave=True, ascii=True, ncols=100, dynamic_ncols=False
    )
    return tqdm(iterable, file=_Lines(stream), **options)


__all__ = ["progress_bar", "PLAIN_INTERVAL"]
