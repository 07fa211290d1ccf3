"""The docs name the demo's run folders by glob: each glob matches the one run it means."""

import fnmatch
import re
from pathlib import Path

import pytest

from aml.demo import pipeline
from aml.training.config import run_name

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture(scope="module")
def demo_runs():
    """The run folder names of the demo's teacher and of its students of seed 0 and 1, every recipe."""
    names = []

    class Done:
        run_dir = Path("unused")

    def record(config):
        names.append(run_name(config))
        return Done()

    patch = pytest.MonkeyPatch()
    patch.setattr(pipeline, "run", record)
    patch.setattr(pipeline, "file_sha256", lambda path: "948d5211" * 8)
    patch.setattr(pipeline, "_training_images_digest", lambda root: "5a1b2c3d")  # no data set is read, or made
    patch.setattr(pipeline.shutil, "rmtree", lambda *args, **kwargs: None)
    budget = pipeline.DemoBudget()
    teacher = Path("runs/teacher/model_epoch2.pth.tar")
    for seed in (0, 1):
        for recipe, options in pipeline.STUDENT_OPTIONS.items():
            pipeline._train(Path("runs"), Path("data"), "mobilenet_v2", budget.student_epochs,
                            {**budget.options(), **options}, seed, teacher)
    pipeline._train(Path("runs"), Path("data"), "efficientnet_lite2", budget.teacher_epochs,
                    {**budget.options(), **pipeline.TEACHER_OPTIONS}, 0, reuse=True)
    patch.undo()
    return names


@pytest.mark.parametrize("page", ["compatibility.md", "testing.md"])
def test_each_glob_of_a_demo_run_matches_one_run(page, demo_runs):
    """The students' run folders end in the demo's settings comment (_e2_<teacher sha>): the
    docs' globs matched none of them; a glob for the reg student matched the later papers'
    reg recipes (csd, bct, ...) too."""
    globs = re.findall(r"(?:demo/runs|\$runs)/(\S+?)/model_epoch2\.pth\.tar", (DOCS / page).read_text())
    assert len(globs) >= 2
    for glob in globs:
        assert len(fnmatch.filter(demo_runs, glob)) == 1, glob
