"""The one bounded reader of a user's text file."""

import os
import subprocess
import sys

import pytest

from aml.utils import text_files
from aml.utils.errors import DataError
from aml.utils.text_files import TextFile, read_text_file

LIST = TextFile("the list", "give a text file of names, one a line")


class ListError(DataError):
    pass


def test_text_is_read_whole_and_non_utf8_names_are_kept_when_asked(tmp_path):
    path = tmp_path / "names.txt"
    path.write_bytes(b"a.jpg\n\xe9t\xe9.jpg\n")
    assert read_text_file(path, TextFile("the list", "fix", names=True)).splitlines() == ["a.jpg", "\udce9t\udce9.jpg"]
    with pytest.raises(DataError, match=r"^the list .*names.txt is not UTF-8 text \(byte 6: invalid continuation byte\); "
                                        r"save it as UTF-8$"):
        read_text_file(path, LIST)


def test_a_large_file_is_refused_unread_and_a_device_read_no_further_than_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(text_files, "MAX_TEXT_BYTES", 1 << 10)
    path = tmp_path / "huge.csv"
    with open(path, "wb") as out:
        out.truncate(1 << 40)  # a sparse terabyte: reading it would take the memory
    with pytest.raises(DataError, match=r"huge.csv is larger than 1024 bytes or has no end .*: give a text file"):
        read_text_file(path, LIST)
    path.write_bytes(b"x" * (1 << 10))  # at the limit: read
    assert len(read_text_file(path, LIST)) == 1 << 10
    with pytest.raises(DataError, match=r"^the list /dev/zero is larger than"):
        read_text_file("/dev/zero", LIST)


def test_a_pipe_is_read_until_its_writer_closes_it_and_an_endless_one_is_refused(tmp_path, monkeypatch):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    writer = subprocess.Popen([sys.executable, "-c", f"open({str(fifo)!r}, 'w').write('a\\nb\\n')"])
    assert read_text_file(fifo, LIST) == "a\nb\n"
    writer.wait()
    monkeypatch.setattr(text_files, "MAX_TEXT_BYTES", 1 << 16)
    endless = subprocess.Popen(["yes"], stdout=subprocess.PIPE)
    try:
        with pytest.raises(DataError, match=r"has no end \(a device, a pipe that does not close\)"):
            read_text_file(f"/proc/self/fd/{endless.stdout.fileno()}", LIST)
    finally:
        endless.kill()
        endless.wait()
        endless.stdout.close()


@pytest.mark.parametrize("make, problem", [
    (lambda p: p.write_bytes(b"a\0b"), r"is not text \(it holds NUL bytes: a binary file\)"),
    (lambda p: p.mkdir(), r"^cannot read the list .* \(Is a directory\)"),
    (lambda p: None, r"^cannot read the list .* \(No such file or directory\)"),
])
def test_what_is_not_a_text_file_is_one_line_of_the_callers_error(tmp_path, make, problem):
    path = tmp_path / "given"
    make(path)
    with pytest.raises(ListError, match=problem + r".*: give a text file of names, one a line$"):
        read_text_file(path, TextFile("the list", "give a text file of names, one a line", ListError))


def test_an_image_list_reads_back_the_names_it_wrote_and_refuses_a_line_break(tmp_path):
    """A name with a line feed was written into a store's images.txt as two lines: the store
    indexed 'successfully' and could never be opened (other descriptors, index it again)."""
    from aml.data.images import image_files
    from aml.data.make_trainset import images_from_folders
    from aml.utils.text_files import line_list, read_line_list

    names = ["a.jpg", "d\x0ce.jpg", b"caf\xe9.jpg".decode(errors="surrogateescape")]
    assert read_line_list(line_list(names)) == names  # split at line feeds only, bytes kept
    # a list written by hand: edited on Windows, or without the last line feed
    assert read_line_list(b"a.jpg\r\nb.jpg\r\n") == read_line_list(b"a.jpg\nb.jpg") == ["a.jpg", "b.jpg"]
    assert read_line_list(b"") == [] and read_line_list(b"\n") == [""]
    with pytest.raises(DataError, match=r"'b\\rc.jpg' holds a line break"):
        line_list(["b\rc.jpg"])
    with pytest.raises(DataError, match=r"'we\\nird.jpg' holds a line break, .* rename the file"):
        line_list(["a.jpg", "we\nird.jpg"])
    for name in ("img0.jpg", "we\nird.jpg"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(DataError, match=r"we\\nird.jpg' holds a line break"):
        image_files(tmp_path)
    (tmp_path / "landmark").mkdir()
    (tmp_path / "we\nird.jpg").rename(tmp_path / "landmark" / "we\nird.jpg")
    with pytest.raises(DataError, match=r"we\\nird.jpg' holds a line break"):  # make_trainset's listing
        images_from_folders(tmp_path)
