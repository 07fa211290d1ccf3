"""Paths compared below the folder they share (a data root moved elsewhere)."""

from aml.data.paths import below_common_folder


def test_an_empty_or_relative_name_among_absolute_ones_is_compared_as_it_is():
    """A feature file's image list with an empty line (edited by hand) ended main.py --feat-path
    in commonpath's ValueError ("Can't mix absolute and relative paths")."""
    assert below_common_folder(["/a/data/x/1.jpg", "/a/data/y/2.jpg"]) == ["x/1.jpg", "y/2.jpg"]
    assert below_common_folder(["/a/data/x/1.jpg", "/a/data/y/2.jpg", ""]) == ["x/1.jpg", "y/2.jpg", ""]
    assert below_common_folder(["/a/1.jpg", "b.jpg"]) == ["/a/1.jpg", "b.jpg"]
    assert below_common_folder(["", ""]) == ["", ""] and below_common_folder([]) == []
