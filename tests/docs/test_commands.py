"""Every shell command and Python block of the docs (docs/*.md and README.md) that runs on the
synthetic data is run here, page by page in its order, at small sizes; the others carry a
marker saying which test covers them or why they are not run here.

A fenced ``bash`` or ``python`` block is run unless the line before it is a marker:
``<!-- not run: why -->`` (real downloads, GPUs, the suite itself) or ``<!-- tested by:
tests/file.py::test_name -->`` (a test that runs the same thing, checked to exist). Commands of
a page share one working folder, which starts with the small synthetic data root in ``data/``
and the getting-started page's ``teacher.pth.tar`` and ``student.pth.tar`` (a page that
generates its own data starts empty). Commands run in process; ``cp``, ``mkdir`` and ``ls`` in
a shell. Sizes are made small by the flag values of ``SMALL``.
"""

import importlib
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "docs"))
from generate import Block, doc_pages, page_blocks  # noqa: E402  (docs/ is not a package)

PAGES = doc_pages()
# Trains networks for tens of seconds: started early (conftest).
pytestmark = pytest.mark.long
SHELL = ("bash", "sh", "shell")
TOOLS = ("cp", "mkdir", "ls")
SCRIPTS = {"main.py": "aml.cli.train", "test.py": "aml.cli.test", "extract_features.py": "aml.cli.extract_features"}
MODULES = {"aml.search": "aml.cli.search", "aml.export": "aml.cli.export", "aml.demo": "aml.demo.pipeline",
           "aml.compat": "aml.cli.compat"}
# Small sizes: (a flag and its aliases, the value, whether to add it when the command does not
# give it). A given ``--epochs`` is halved instead, so that a resumed run (a larger --epochs
# than the run it resumes) still trains on.
SMALL: Dict[str, Sequence[Tuple[Tuple[str, ...], str, bool]]] = {
    "aml.cli.train": [(("--image-size",), "64", False), (("--query-size", "-qs"), "16", True),
                      (("--pool-size", "-ps"), "32", True), (("--epochs",), "1", True), (("--workers", "-j"), "0", True)],
    "aml.cli.test": [(("--image-size", "-imsize"), "64", True), (("--workers", "-j"), "0", True)],
    "aml.cli.extract_features": [(("--image-size", "-imsize"), "64", True), (("--workers", "-j"), "0", True)],
    "aml.cli.search": [(("--image-size", "-imsize"), "64", False), (("--workers", "-j"), "0", True)],
    "aml.cli.compat": [(("--image-size", "-imsize"), "64", True), (("--workers", "-j"), "0", True)],
    "aml.cli.export": [(("--image-size", "-imsize"), "64", False), (("--calibration-images",), "8", False),
                       (("--time-repeats",), "1", False)],
    "aml.cli.synthetic": [(("--image-size",), "64", True), (("--train-landmarks",), "12", True),
                          (("--val-landmarks",), "3", True), (("--views",), "6", True),
                          (("--test-landmarks",), "8", True), (("--distractors",), "4", True)],
}
HALVED = ("--epochs",)
OUTPUTS = ("--results", "--json", "--heatmap", "--out", "--store", "--report", "--directory")  # must exist after the command


def runs(block: Block) -> bool:
    """Whether this test runs the block: a shell or Python block without a marker."""
    return block.language in SHELL + ("python",) and block.marker is None


def commands(block: Block) -> List[List[str]]:
    """The command lines of a shell block as words: continuations joined, comments dropped."""
    joined = block.text.replace("\\\n", " ")
    return [words for words in (shlex.split(line, comments=True) for line in joined.splitlines()) if words]


def entry_point(words: Sequence[str]) -> Tuple[Optional[str], List[str]]:
    """(aml module whose ``main(argv)`` runs the command, argv), or (None, words) for a shell tool."""
    if words[0] in TOOLS:
        return None, list(words)
    if words[0] != "python" or len(words) < 2:
        raise ValueError(f"not a command this test knows how to run: {' '.join(words)}")
    if words[1] in SCRIPTS:
        return SCRIPTS[words[1]], list(words[2:])
    if words[1] == "-m" and len(words) > 2 and (words[2] in MODULES or words[2].startswith("aml.cli.")):
        return MODULES.get(words[2], words[2]), list(words[3:])
    raise ValueError(f"not a command this test knows how to run: {' '.join(words)}")


def small(module: str, argv: List[str]) -> List[str]:
    """``argv`` with the sizes of ``SMALL``: given values replaced, missing ones added."""
    argv = list(argv)
    for names, value, add in SMALL.get(module, ()):
        places = [i for i, word in enumerate(argv[:-1]) if word in names]
        for i in places:
            argv[i + 1] = str(max(1, int(argv[i + 1]) // 2)) if names[0] in HALVED else value
        if not places and add:
            argv += [names[0], value]
    return argv


def run_block(block: Block, folder: Path, monkeypatch) -> None:
    """Run one block in ``folder``; a failing command fails the test, naming the page and line."""
    monkeypatch.chdir(folder)
    if block.language == "python":
        exec(compile(block.text, block.where, "exec"), {"__name__": "__docs__"})
        return
    for words in commands(block):
        module, argv = entry_point(words)
        if module is None:
            done = subprocess.run(" ".join(argv), shell=True, cwd=folder, capture_output=True, text=True)
            assert done.returncode == 0, f"{block.where}: {' '.join(words)}: {done.stderr}"
            continue
        argv = small(module, argv)
        importlib.import_module(module).main(argv)
        for flag, value in zip(argv, argv[1:]):
            if flag in OUTPUTS:
                assert (folder / value).exists(), f"{block.where}: {' '.join(words)} did not write {value}"


RUN_PAGES = [page for page in PAGES if any(runs(block) for block in page_blocks(page))]
FIRST = ROOT / "docs" / "getting-started.md"


def generates_its_data(page: Path) -> bool:
    return any(entry_point(words)[0] == "aml.cli.synthetic"
               for block in page_blocks(page) if runs(block) and block.language in SHELL for words in commands(block))


def _run_page(page: Path, folder: Path, synth_root: Path, networks: Optional[Path], monkeypatch) -> Path:
    if not generates_its_data(page):
        for part in ("train", "test"):  # the generated sets alone, not what other tests left beside them
            shutil.copytree(synth_root / part, folder / "data" / part)
    if networks is not None:
        for name in ("teacher.pth.tar", "student.pth.tar"):
            shutil.copyfile(networks / name, folder / name)
    for block in page_blocks(page):
        if runs(block):
            run_block(block, folder, monkeypatch)
    return folder


@pytest.fixture(scope="module")
def getting_started(tmp_path_factory, synth_root) -> Path:
    """The getting-started page run whole: the folder with its teacher and student."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        return _run_page(FIRST, tmp_path_factory.mktemp("getting-started"), synth_root, None, monkeypatch)


# ---- the rules, checked without running anything


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_block_is_runnable_or_says_why_not(page):
    for block in page_blocks(page):
        if block.marker and block.marker[0] == "tested by":
            file, _, name = block.marker[1].partition("::")
            assert (ROOT / file).is_file() and f"def {name}(" in (ROOT / file).read_text(), \
                f"{block.where}: no test {block.marker[1]}"
        elif block.marker:
            assert len(block.marker[1]) > 10, f"{block.where}: say why the block is not run"
        elif block.language in SHELL:
            for words in commands(block):
                entry_point(words)  # raises for a command the test cannot run
                assert not {";", "&&", "|"} & set(words), f"{block.where}: one command per line"


COLUMN = 80  # characters of a code line that the site shows without scrolling, 1280 px wide


@pytest.mark.parametrize("page", [p for p in PAGES if p.parent.name == "docs"], ids=lambda p: p.name)
def test_every_line_of_a_code_block_fits_the_column(page):
    """A longer command is wrapped with continuations (``\\``), a comment goes on the line above."""
    for block in page_blocks(page):
        for number, line in enumerate(block.text.splitlines(), start=1):
            assert len(line) <= COLUMN, f"{block.where}, line {number} of the block: {len(line)} characters"


def test_the_commands_of_the_home_pages_task_table_parse():
    """Home's "choose by task" commands (not run: they need downloads or GPUs) are valid flags."""
    home = (ROOT / "docs" / "index.md").read_text().split("## Choose by task", 1)[1].split("\n## ", 1)[0]
    typed = [row.strip(" |").split(" | ")[1].strip("`") for row in home.splitlines()
             if row.startswith("| ") and "`" in row]
    assert len(typed) >= 8
    targets = (ROOT / "Makefile").read_text()
    for command in typed:
        words = shlex.split(command)
        if words[0] == "make":
            assert f"\n{words[1]}:" in targets, command
            continue
        if words[0] == "torchrun":
            words = ["python"] + words[next(i for i, w in enumerate(words) if w.endswith(".py")):]
        module, argv = entry_point(words)
        importlib.import_module(module).build_parser().parse_args(argv)


def _parsed_commands(block: Block) -> List[Tuple[str, List[str]]]:
    """(module, argv) of each aml command of a shell block whose flags can be parsed as written:
    not a shell tool, a script of benchmarks/ (its parser lives in its main) or a command with
    elided (``...``) or placeholder (``<data_root>``) words."""
    found = []
    for words in commands(block):
        if words[0] == "torchrun":
            start = next((i for i, word in enumerate(words) if word.endswith(".py") or word == "-m"), len(words))
            words = ["python"] + words[start - (words[start - 1:start] == ["-m"]):] if start < len(words) else words
        if any(word == "..." or "<" in word for word in words):
            continue
        try:
            module, argv = entry_point(words)
        except ValueError:
            continue
        if module is not None and hasattr(importlib.import_module(module), "build_parser"):
            found.append((module, argv))
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_commands_of_blocks_not_run_parse(page):
    """A block not run (downloads, GPUs, minutes) still gives flags its command takes, and outputs
    it accepts: the demo's --json into benchmarks/results was refused (the benchmarks' own
    search.json there read as a search store's)."""
    for block in page_blocks(page):
        if block.marker and block.marker[0] == "not run" and block.language in SHELL:
            for module, argv in _parsed_commands(block):
                try:
                    importlib.import_module(module).build_parser().parse_args(argv)
                except SystemExit:
                    pytest.fail(f"{block.where}: {module} {' '.join(argv)} does not parse")


def test_the_markers_are_found():
    blocks = [block for page in PAGES for block in page_blocks(page)]
    assert sum(runs(block) for block in blocks) >= 10
    assert any(block.marker and block.marker[0] == "not run" for block in blocks)
    assert entry_point(["python", "-m", "aml.search", "index", "x"]) == ("aml.cli.search", ["index", "x"])
    assert small("aml.cli.train", ["--image-size", "96", "-qs", "360"]) == \
        ["--image-size", "64", "-qs", "16", "--pool-size", "32", "--epochs", "1", "--workers", "0"]
    assert small("aml.cli.train", ["--epochs", "2", "-j", "1"])[:4] == ["--epochs", "1", "-j", "0"]
    assert small("aml.cli.train", ["--epochs", "4"])[:2] == ["--epochs", "2"]
    with pytest.raises(ValueError, match="not a command this test knows how to run: torchrun main.py"):
        entry_point(["torchrun", "main.py"])


# ---- the pages, run


def test_getting_started_trains_a_teacher_and_a_student_and_tests_them(getting_started):
    import json

    results = json.loads((getting_started / "asym.json").read_text())
    assert results["settings"]["asym"] and results["settings"]["teacher"] == "teacher"
    for dataset in ("synth-oxford", "synth-paris"):
        assert 0 <= results["results"][dataset]["plain"]["medium"]["map"] <= 1
    assert (getting_started / "teacher.pth.tar").is_file() and (getting_started / "student.pth.tar").is_file()


@pytest.mark.parametrize("page", [p for p in RUN_PAGES if p != FIRST], ids=lambda p: str(p.relative_to(ROOT)))
def test_the_commands_of_the_page_run(page, getting_started, synth_root, tmp_path, monkeypatch):
    _run_page(page, tmp_path, synth_root, getting_started, monkeypatch)
