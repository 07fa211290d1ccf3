"""Progress: a bar redrawn in place on a terminal, a few whole lines in a log or a pipe."""

import io

from aml.utils.progress import progress_bar


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_log_gets_a_line_at_the_start_and_the_end_not_every_refresh():
    log = io.StringIO()
    for _ in progress_bar(range(5000), stream=log, desc="extracting", unit="img", leave=False):
        pass
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and "\x1b[" not in log.getvalue()
    assert len(lines) == 2, lines  # the loop took well under PLAIN_INTERVAL
    assert lines[0].startswith("extracting:   0%") and lines[-1].startswith("extracting: 100%")
    assert "5000/5000" in lines[-1]


def test_a_terminal_gets_the_bar_redrawn_in_place():
    terminal = Terminal()
    with progress_bar(total=3, stream=terminal, desc="epoch", mininterval=0) as bar:
        for _ in range(3):
            bar.update()
    assert terminal.getvalue().count("\r") >= 3 and "3/3" in terminal.getvalue()


def test_disabled_writes_nothing(capsys):
    stream = io.StringIO()
    assert list(progress_bar(range(3), enabled=False, stream=stream)) == [0, 1, 2]
    assert stream.getvalue() == "" and capsys.readouterr().err == ""
