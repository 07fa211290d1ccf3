"""test.py --report: an offline HTML page and a PNG per query whose frames tell the truth."""

import os
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from PIL import Image

from aml.cli import test as test_cli
from aml.data.safe_pickle import load_pickle
from aml.networks import build_network
from aml.networks.checkpoint import checkpoint_state, save_checkpoint
from aml.reports.ranking import FRAME, LABEL_COLOURS, Ranking, tile_origin, write_report


class Page(HTMLParser):
    """Sections (one per query) with their rows of (image source, label) figures."""

    def __init__(self):
        super().__init__()
        self.sections, self.sources, self.links = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append({"id": attrs["id"], "rows": []})
        elif tag == "div" and attrs.get("class") == "row":
            self.sections[-1]["rows"].append([])
        elif tag == "figure":
            self.sections[-1]["rows"][-1].append([attrs["data-label"], None])
        elif tag == "img":
            self.sources.append(attrs["src"])
            self.sections[-1]["rows"][-1][-1][1] = attrs["src"]
        elif tag == "a":
            self.links.append(attrs["href"])


def expected_label(entry, index):
    for key in ("easy", "hard", "junk"):
        if index in list(entry[key]):
            return key
    return "negative"


@pytest.fixture(scope="module")
def report(synth_root, tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    torch.manual_seed(0)
    student = save_checkpoint(checkpoint_state(build_network("resnet18", pretrained=False), 1, 0.0), folder / "s.pth")
    torch.manual_seed(1)
    teacher = save_checkpoint(checkpoint_state(build_network("resnet18", pretrained=False), 1, 0.0), folder / "t.pth")
    results = test_cli.main(["-npath", str(student), "-d", "synth-oxford", "-imsize", "64", "-j", "0", "--device",
                             "cpu", "-q", "--data-root", str(synth_root), "--asym", "--teacher", str(teacher),
                             "--report", str(folder / "out"), "--report-top", "6", "-w", "synth-sfm"])
    REPORTED.update(results["synth-oxford"])
    return Path(results["synth-oxford"]["report"])


REPORTED = {}  # the test's results of the report fixture's run


def test_report_page_parses_and_every_file_opens(report):
    page = Page()
    page.feed(report.read_text())
    assert len(page.sections) == 30 and all(len(s["rows"]) == 2 for s in page.sections)  # student, teacher
    for source in set(page.sources) | set(page.links):
        assert not source.startswith(("/", "http")), source  # works offline, folder can move
        with Image.open(report.parent / source) as image:
            image.verify()


def test_frames_match_the_ground_truth(report, synth_root):
    gnd = load_pickle(synth_root / "test" / "synth-oxford" / "gnd_synth-oxford.pkl")
    page = Page()
    page.feed(report.read_text())
    labels_seen = set()
    for section in page.sections:
        q = int(section["id"][1:])
        png = Image.open(report.parent / f"{section['id']}.png").convert("RGB")
        for row, figures in enumerate(section["rows"]):
            assert figures[0][0] == "query"
            for column, (label, source) in enumerate(figures):
                if column:
                    index = int(Path(source).stem[2:])
                    assert label == expected_label(gnd["gnd"][q], index)
                    labels_seen.add(label)
                x, y = tile_origin(row, column)
                assert png.getpixel((x + FRAME // 2, y + FRAME // 2)) == LABEL_COLOURS[label]
    assert {"easy", "negative"} <= labels_seen


def test_report_shows_each_ranking_ap(report):
    """With -w the report showed the plain search's rankings and numbers, unnamed, while the
    command printed the whitened ones: it shows the whitened search and names it."""
    text = report.read_text()
    assert text.count("student s") == 30 and text.count("teacher t") == 30 and "AP " in text
    assert "asymmetric: queries by s, database by t; synth-oxford + whiten: mAP E: " in text  # the summary on top
    assert "; each query&#x27;s AP below is its Medium AP" in text  # html.escape's apostrophe
    shown = [ap for ap in REPORTED["whiten"]["medium"]["aps"] if ap == ap]
    plain = [ap for ap in REPORTED["plain"]["medium"]["aps"] if ap == ap]
    assert shown != plain
    assert all(f"AP {100 * ap:.1f}" in text for ap in shown)


@pytest.mark.parametrize("stem", [os.fsdecode(b"caf\xe9"), "东京塔", "a\u0301b"], ids=["not-utf8", "cjk", "combining"])
def test_image_names_that_are_not_utf8_or_not_latin1_make_a_whole_report(tmp_path, stem):
    """File names are bytes on Linux: one that is not UTF-8 (decoded with surrogates) used to
    raise while index.html was being written, leaving it empty; the PNG's font must not fail
    on other scripts."""
    names = []
    for i in range(3):
        path = tmp_path / "jpg" / f"{stem}{i}.jpg"
        path.parent.mkdir(exist_ok=True)
        Image.new("RGB", (40, 30), (40 * i, 80, 120)).save(path)
        names.append(str(path))
    gnd = [{"easy": [1], "hard": [], "junk": [2]}]
    out = write_report(tmp_path / "report", "mine", gnd, names, names[:1], [None],
                       [[Ranking("aml", [1, 2, 0], [0.9, 0.5, 0.1], 1.0)]], summary=f"{stem} summary")
    text = out.read_bytes().decode("utf-8")  # valid UTF-8 throughout
    page = Page()
    page.feed(text)
    assert [label for label, _ in page.sections[0]["rows"][0]] == ["query", "easy", "junk", "negative"]
    shown = stem.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    assert f"{shown}1" in text and "\ufffd" in text if "\udce9" in stem else f"{stem}1" in text
    Image.open(out.parent / "q000.png").verify()
    assert sorted(p.name for p in out.parent.iterdir()) == [".aml-ranking-report", "index.html", "q000.png", "thumbs"]


def test_a_full_disk_leaves_no_cut_image_in_the_report(tmp_path, full_disk):
    from aml.utils.atomic import DiskFull

    path = tmp_path / "jpg" / "a.jpg"
    path.parent.mkdir()
    Image.new("RGB", (40, 30), (40, 80, 120)).save(path)
    full_disk(tmp_path / "report")
    with pytest.raises(DiskFull, match="query000.jpg"):
        write_report(tmp_path / "report", "mine", [{"easy": [0], "hard": [], "junk": []}], [str(path)], [str(path)],
                     [None], [[Ranking("aml", [0], [0.9], 1.0)]])
    assert [p.name for p in (tmp_path / "report").rglob("*") if p.is_file()] == [".aml-ranking-report"]


def test_a_report_written_over_an_earlier_one_keeps_none_of_its_images(tmp_path, monkeypatch):
    """A second report into the same folder kept the PNGs of queries it did not show (skipped
    now) and, interrupted, left the earlier page linking a mix of the two runs' images."""
    from aml.reports import ranking

    names = []
    for i in range(3):
        path = tmp_path / "jpg" / f"{i}.jpg"
        path.parent.mkdir(exist_ok=True)
        Image.new("RGB", (40, 30), (40 * i, 80, 120)).save(path)
        names.append(str(path))
    gnd = [{"easy": [1], "hard": [], "junk": []}, {"easy": [2], "hard": [], "junk": []}]
    folder = tmp_path / "report"
    write_report(folder, "mine", gnd, names, names[:2], [None, None],
                 [[Ranking("aml", [1, 2], [0.9, 0.5], 1.0)], [Ranking("aml", [2, 0], [0.9, 0.5], 1.0)]])
    assert (folder / "q001.png").is_file() and (folder / "thumbs" / "db000000.jpg").is_file()
    write_report(folder, "mine", gnd, names, names[:2], [None, None], [[Ranking("aml", [1], [0.9], 1.0)], []])
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.*")) == [
        ".aml-ranking-report", "index.html", "q000.png", "thumbs/db000001.jpg", "thumbs/query000.jpg"]

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ranking, "query_png", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_report(folder, "mine", gnd, names, names[:2], [None, None], [[Ranking("aml", [2], [0.9], 1.0)], []])
    assert not (folder / "index.html").exists()


def test_a_folder_of_ones_own_files_is_refused_and_left_as_it_was(tmp_path, synth_root):
    """--report DIR replaced DIR/<dataset>/index.html and deleted every q*.png and thumbs/*.jpg
    there, a web site's or a photo folder's, without a word."""
    from aml.utils.errors import ConfigError

    own = tmp_path / "site" / "synth-oxford"
    (own / "thumbs").mkdir(parents=True)
    (own / "index.html").write_text("<html>my own page</html>")
    (own / "thumbs" / "holiday.jpg").write_bytes(b"a photo")
    (own / "q7_plot.png").write_bytes(b"a plot")
    before = {p: p.read_bytes() for p in own.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match=r"--report: .*synth-oxford holds files that are not an aml ranking report "
                                          r"\(index.html, ...\).*give --report another folder"):
        write_report(own, "synth-oxford", [], [], [], [], [])
    from aml.cli import test as test_cli
    from aml.evaluation import testing

    def not_reached(*args, **kwargs):
        raise AssertionError("images were encoded before the report's folder was checked")

    from aml.networks import build_network
    from aml.networks.checkpoint import checkpoint_state, save_checkpoint

    net = save_checkpoint(checkpoint_state(build_network("resnet18", pretrained=False), 1, 0.0), tmp_path / "n.pth")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(testing, "describe_images", not_reached)
        with pytest.raises(ConfigError, match="holds files that are not an aml ranking report"):
            test_cli.main(["-npath", str(net), "-d", "synth-oxford", "-imsize", "32", "-j", "0", "--device", "cpu",
                           "-q", "--no-cache", "--data-root", str(synth_root), "--report", str(tmp_path / "site")])
    assert {p: p.read_bytes() for p in own.rglob("*") if p.is_file()} == before
    older = tmp_path / "older"  # a report of an aml from before the mark: replaced as ever
    older.mkdir()
    (older / "index.html").write_text("<!DOCTYPE html><html><head><title>mine ranking report</title>")
    write_report(older, "mine", [], [], [], [], [])
    assert (older / ".aml-ranking-report").is_file()
    cut_short = tmp_path / "cut"  # an older report interrupted before its page: its images alone
    (cut_short / "thumbs").mkdir(parents=True)
    (cut_short / "q000.png").write_bytes(b"png")
    (cut_short / "thumbs" / "db000001.jpg").write_bytes(b"jpg")
    write_report(cut_short, "mine", [], [], [], [], [])
    assert sorted(p.name for p in cut_short.rglob("*")) == [".aml-ranking-report", "index.html", "thumbs"]
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"\(notes.txt\), which a report would replace or delete; give --report "
                                          r"another folder, or empty that one"):
        write_report(tmp_path / "one", "mine", [], [], [], [], [])


def test_a_report_of_a_database_with_an_unreadable_image_shows_what_can_be_found(tmp_path):
    """--report-top as large as the database stopped the run after all its encoding, blaming
    --qe and --superglobal, when --skip-bad-images had left an image out."""
    import numpy as np

    from aml.data.make_testset import build_test_set

    rng = np.random.default_rng(0)
    images = tmp_path / "photos"
    images.mkdir()
    for name in ("q.jpg", "a.jpg", "b.jpg", "c.jpg"):
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(images / name)
    root = tmp_path / "data"
    folder = build_test_set({"queries": [{"image": "q.jpg", "easy": ["a.jpg"]}], "database": None}, images, "tiny",
                            root)
    (folder / "jpg" / "c.jpg").write_bytes(b"damaged since")
    torch.manual_seed(0)
    net = save_checkpoint(checkpoint_state(build_network("resnet18", pretrained=False), 1, 0.0), tmp_path / "n.pth")
    results = test_cli.main(["-npath", str(net), "-d", "tiny", "-imsize", "32", "-j", "0", "--device", "cpu", "-q",
                             "--data-root", str(root), "--skip-bad-images", "--report", str(tmp_path / "out"),
                             "--report-top", "3"])
    page = Page()
    page.feed(Path(results["tiny"]["report"]).read_text())
    labels = [label for label, _ in page.sections[0]["rows"][0]]
    assert len(labels) == 3 and labels[0] == "query", labels  # the query, a.jpg and b.jpg: c.jpg is never found
    # the page says what test.py's lines say: its mAP is of the images that could be read
    text = Path(results["tiny"]["report"]).read_text()
    assert "(1 unreadable images skipped)" in text and "1 database images and 0 queries could not be read" in text
