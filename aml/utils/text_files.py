"""Reading a user's text file (an image list, a CSV, a JSON description) or a small file of a
store (its manifest and search.json, a feature file's settings): whole, but no further than `MAX_TEXT_BYTES`, so
that ``/dev/zero``, a pipe that never ends or a huge file given by mistake is refused in one
line instead of hanging or filling the memory. A pipe (``<(find ...)``, a FIFO) is read until
its writer closes it. Results are written as strict JSON (`strict_json`)."""

import contextlib
import csv
import errno
import io
import json
import math
import os
import stat
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Type

from aml.utils.errors import AmlError, DataError
from aml.utils.types import PathLike

#: the largest text file read (an image list of 4 million paths of 64 characters)
MAX_TEXT_BYTES = 256 << 20
UTF8_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class TextFile:
    """What a user's text file is, for reading it and for the messages that refuse it.

    Attributes:
        what: the file in words, put before its path (``"the image list"``).
        fix: what to give instead, ending the messages (``"give a text file of paths, one a line"``).
        error: the error raised (a `DataError`).
        names: bytes that are not UTF-8 are kept (file names as they are on disk) rather than refused.
    """

    what: str
    fix: str
    error: Type[DataError] = DataError
    names: bool = False


def _in_words(size: int) -> str:
    """A number of bytes, in MB when it is at least one."""
    return f"{size >> 20} MB" if size >= 1 << 20 else f"{size} bytes"


class TooLarge(AmlError, OSError):
    """A file larger than `MAX_TEXT_BYTES`, or without end (an OSError: ``strerror`` says so in words)."""


def read_bounded(path: PathLike) -> bytes:
    """The bytes of ``path``, read no further than `MAX_TEXT_BYTES` (a larger regular file unread).

    Args:
        path: the file (a regular file, or a pipe).

    Returns:
        Its bytes.

    Raises:
        TooLarge: (an OSError) when it is larger than `MAX_TEXT_BYTES` or has no end.
        OSError: when it cannot be opened or read.
    """
    limit = MAX_TEXT_BYTES
    with open(path, "rb") as handle:
        status = os.fstat(handle.fileno())
        regular = stat.S_ISREG(status.st_mode)
        large_file = regular and status.st_size > limit  # refused unread
        # a regular file's size, not the limit, is asked for: read(n) allocates n bytes first
        wanted = min(limit, status.st_size) + 1 if regular else limit + 1
        data = b"" if large_file else handle.read(wanted)
        if regular and len(data) == wanted <= limit:  # it grew since: read on to the limit
            data += handle.read(limit + 1 - len(data))
    if large_file or len(data) > limit:
        words = f"larger than {_in_words(limit)} or has no end (a device, a pipe that does not close)"
        raise TooLarge(errno.EFBIG, words, str(path))
    return data


def read_text_file(path: PathLike, kind: TextFile) -> str:
    """The text of ``path`` (UTF-8), read no further than `MAX_TEXT_BYTES`.

    Args:
        path: the file (a regular file, or a pipe).
        kind: what the file is (`TextFile`).

    Returns:
        Its text.

    Raises:
        DataError: (``kind.error``) one line naming ``kind.what``, ``path`` and ``kind.fix``, when
            it cannot be opened, is larger than `MAX_TEXT_BYTES` or has no end, holds NUL bytes, or
            (unless ``kind.names``) is not UTF-8.

    Examples:
        >>> import pathlib, tempfile
        >>> from aml.utils.text_files import TextFile, read_text_file
        >>> listing = TextFile("the image list", "give a text file of paths, one a line")
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = pathlib.Path(folder) / "images.txt"
        ...     _ = path.write_text("a.jpg\\nb.jpg\\n")
        ...     read_text_file(path, listing).split()
        ['a.jpg', 'b.jpg']
    """
    try:
        data = read_bounded(path)
    except TooLarge as err:
        raise kind.error(f"{kind.what} {path} is {err.strerror}: {kind.fix}") from None
    except OSError as err:
        raise kind.error(f"cannot read {kind.what} {path} ({err.strerror}): {kind.fix}") from None
    if b"\0" in data:
        raise kind.error(f"{kind.what} {path} is not text (it holds NUL bytes: a binary file): {kind.fix}")
    data = data.removeprefix(UTF8_BOM)  # Excel's "CSV UTF-8" starts with one
    if kind.names:
        return data.decode(errors="surrogateescape")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise kind.error(
            f"{kind.what} {path} is not UTF-8 text (byte {err.start}: {err.reason}); save it as UTF-8"
        ) from None


@contextlib.contextmanager
def _any_field_size() -> Iterator[None]:
    """csv's field size limit lifted for the block (GLDv2 lists a landmark's thousands of
    image ids in one field; csv refuses fields of over 131,072 characters)."""
    previous = csv.field_size_limit(MAX_TEXT_BYTES)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


class CsvRow(NamedTuple):
    """One row of a CSV: the line it ends on (blank lines counted, as an editor shows them)
    and its fields by the header's names."""

    line: int
    fields: Dict[str, str]


def csv_rows(
    text: str,
    source: PathLike,
    error: Type[DataError],
    columns: Optional[Sequence[str]] = None,
    read: Optional[Sequence[str]] = None,
) -> List[CsvRow]:
    """The rows of a CSV's text, by its header's names (spaces around them dropped).

    Args:
        text: the CSV (`read_text_file`).
        source: its file, for the messages.
        error: the error raised.
        columns: the names a header may hold (None: any).
        read: the names the caller reads, which the header may name once only (the csv module
            keeps a repeated column's last field); default: ``columns``.

    Returns:
        One `CsvRow` per row.

    Raises:
        DataError: (``error``) naming ``source``, for a header name outside ``columns``, one
            of ``read`` named twice, a line the csv module cannot read, or a line with more fields than the header (an
            unquoted comma in a field would shift names out of their column).

    Examples:
        >>> from aml.utils.errors import DataError
        >>> from aml.utils.text_files import csv_rows
        >>> csv_rows("query, box\\n\\nq.jpg, 1 2 3 4\\n", "queries.csv", DataError, ("query", "box"))
        [CsvRow(line=3, fields={'query': 'q.jpg', 'box': ' 1 2 3 4'})]
    """
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        with _any_field_size():
            header = [name.strip() for name in reader.fieldnames or []]
            unknown = [name for name in header if columns is not None and name not in columns]
            if unknown:
                raise error(
                    f"{source}: unknown column {unknown[0]!r} (the header holds {', '.join(header)}); the columns "
                    f"are {', '.join(columns or ())}, and the first line is the header that names them"
                )
            once = read if read is not None else columns or ()
            twice = [name for k, name in enumerate(header) if name in once and name in header[:k]]
            if twice:  # csv keeps the last of two columns of one name: the other's names would be lost
                raise error(
                    f"{source}: the header names the column {twice[0]!r} twice ({', '.join(header)}); put all its "
                    "names in one column, separated by spaces"
                )
            reader.fieldnames = header
            rows = []
            for row in reader:
                extra = [field for field in row.pop(None, []) if field.strip()]
                if extra:
                    raise error(
                        f"{source}: line {reader.line_num} has {len(header) + len(extra)} fields for the "
                        f"header's {len(header)} ({', '.join(header)}); quote a field holding a comma"
                    )
                rows.append(CsvRow(reader.line_num, row))
            return rows
    except csv.Error as err:
        raise error(f"{source}: line {reader.line_num} cannot be read as CSV ({err}); save it as plain CSV") from None


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def strict_json(value: Any, indent: Optional[int] = 1) -> bytes:
    """A results file's bytes, JSON that every reader takes: numpy numbers as floats, NaN or an
    infinity (an undefined mAP: no query with a positive at a level) as null, not Python's bare
    ``NaN``; UTF-8, a file name that is not (bytes on Linux) as its ``\\udcxx`` escape, which
    ``json.loads`` reads back.

    Examples:
        >>> import numpy as np
        >>> from aml.utils.text_files import strict_json
        >>> strict_json({"medium": np.float32(0.5), "hard": float("nan")}, indent=None)
        b'{"medium": 0.5, "hard": null}'
    """
    plain = json.loads(json.dumps(value, default=float))
    text = json.dumps(_finite(plain), indent=indent, ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8", "backslashreplace")


def check_line_names(names: Iterable[str]) -> None:
    """Refuse a file name with a line break (a line feed or a carriage return): aml lists
    images one per line (stores, feature files), where it would read back as two names, or,
    in a list edited on Windows, lose its carriage return.

    Raises:
        DataError: naming the first such file, with the fix.
    """
    broken = next((name for name in names if "\n" in name or "\r" in name), None)
    if broken is not None:
        raise DataError(
            f"the file name {broken!r} holds a line break, and aml lists images one per line (stores, feature "
            "files), where it would read back as two: rename the file"
        )


def line_list(names: Sequence[str]) -> bytes:
    """``names`` one per line, as `read_line_list` reads them back (a name that is not UTF-8
    keeps its bytes: surrogates in Python, bytes on Linux).

    Raises:
        DataError: for a name with a line break (`check_line_names`).
    """
    check_line_names(names)
    return "".join(f"{name}\n" for name in names).encode(errors="surrogateescape")


def read_line_list(data: bytes) -> List[str]:
    """The names `line_list` wrote, or a list written by hand: one a line, split at line feeds
    only (a form feed is part of a name), a carriage return before one dropped (a list edited
    on Windows), the last line with or without its line feed."""
    lines = data.decode(errors="surrogateescape").split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]
