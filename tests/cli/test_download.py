"""python -m aml.cli.download: every registered set and published network is fetched into the
data root; an unknown name stops the command before anything is fetched."""

from pathlib import Path

import pytest

from aml.cli import download as download_cli
from aml.data.distractors import DISTRACTOR_SETS
from aml.data.testsets import TEST_SETS
from aml.data.trainsets import TRAIN_SETS
from aml.networks import loading
from aml.networks.pretrained import PRETRAINED, TEACHERS

NAMES = [*TEST_SETS, *(f"{t}+{d}" for t in ("roxford5k", "synth-paris") for d in DISTRACTOR_SETS), *DISTRACTOR_SETS,
         *(entry.folder for entry in DISTRACTOR_SETS.values()), *TRAIN_SETS, *TEACHERS, *PRETRAINED]


@pytest.fixture
def fetched(monkeypatch):
    """The calls that would download or generate, recorded instead: (what, name)."""
    calls = Calls()

    def record(what):
        def fetch(name, root, *args, **kwargs):
            calls.append((what, name))
            calls.progress.append(kwargs["progress"] if "progress" in kwargs else args[-1] if args else "default")
            return Path(root) / what / name

        return fetch

    for what in ("prepare_test_set", "prepare_distractors", "prepare_train_set", "pretrained_checkpoint"):
        monkeypatch.setattr(download_cli, what, record(what))
    monkeypatch.setattr(download_cli, "published_whitening_file",
                        lambda name, root, progress: calls.append(("whitening", name)) or calls.progress.append(progress))
    return calls


class Calls(list):
    """The calls, and the progress flag each was given."""

    def __init__(self):
        super().__init__()
        self.progress = []


def expected_calls(name):
    """What fetching ``name`` calls, read from the registries."""
    test, _, suffix = name.partition("+")
    folders = {entry.folder: key for key, entry in DISTRACTOR_SETS.items()}
    if test in TEST_SETS:
        return [("prepare_test_set", test)] + ([("prepare_distractors", suffix)] if suffix else [])
    if name in DISTRACTOR_SETS or name in folders:
        return [("prepare_distractors", folders.get(name, name))]
    if name in TRAIN_SETS:
        return [("prepare_train_set", name)]
    listed = TEACHERS.get(name, name)
    return [("pretrained_checkpoint", listed), ("whitening", listed)]


@pytest.mark.parametrize("name", NAMES)
def test_every_registered_name_is_fetched_as_what_it_names(name, fetched, tmp_path):
    download_cli.main([name, "--data-root", str(tmp_path), "-q"])
    assert fetched == expected_calls(name)
    assert fetched.progress == [False] * len(fetched)  # -q: training sets and networks showed their bars


@pytest.mark.parametrize("name, calls", [
    ("ROxford5k+1M", [("prepare_test_set", "roxford5k"), ("prepare_distractors", "1m")]),
    ("revisitop1m", [("prepare_distractors", "1m")]),
    ("Retrieval-SfM-120k", [("prepare_train_set", "retrieval-SfM-120k")]),
    ("resnet101", [("pretrained_checkpoint", "retrievalSfM120k-resnet101-gem"),
                   ("whitening", "retrievalSfM120k-resnet101-gem")]),
    ("VGG16", [("pretrained_checkpoint", "retrievalSfM120k-vgg16-gem"), ("whitening", "retrievalSfM120k-vgg16-gem")]),
    ("retrievalsfm120k-vgg16-gem", [("pretrained_checkpoint", "retrievalSfM120k-vgg16-gem"),
                                    ("whitening", "retrievalSfM120k-vgg16-gem")]),
])
def test_names_as_users_type_them(name, calls, fetched, tmp_path):
    download_cli.main([name, "--data-root", str(tmp_path), "-q"])
    assert fetched == calls


def test_an_unknown_name_stops_the_command_before_anything_is_fetched(fetched, tmp_path, capsys):
    with pytest.raises(SystemExit):
        download_cli.main(["roxford5k", "roxford5k+2m", "--data-root", str(tmp_path)])
    assert "unknown distractor set '2m'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        download_cli.main(["vgg16", "my-photos", "--data-root", str(tmp_path)])
    err = capsys.readouterr().err
    assert "'my-photos' is no data set or published network" in err and "make_testset" in err
    with pytest.raises(SystemExit):
        download_cli.main(["vgg16", "--imagenet", "no_such_net", "--data-root", str(tmp_path)])
    assert "no_such_net" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        download_cli.main(["--data-root", str(tmp_path)])
    assert "name what to download" in capsys.readouterr().err
    assert fetched == []


def test_a_published_student_comes_with_its_whitening_file(monkeypatch, tmp_path, capsys):
    urls = []

    def download_file(url, path, **kwargs):
        urls.append((url, path))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"weights")
        return path

    monkeypatch.setattr(loading, "download_file", download_file)
    student = next(name for name, entry in PRETRAINED.items() if entry.whitening_url)
    download_cli.main([student, "vgg16", "--data-root", str(tmp_path), "-q"])
    wanted = [PRETRAINED[student].url, PRETRAINED[student].whitening_url, PRETRAINED[TEACHERS["vgg16"]].url]
    assert [url for url, _ in urls] == wanted
    assert all(path.parent == tmp_path / "model" for _, path in urls)
    printed = capsys.readouterr().out.splitlines()
    assert printed[-3:] == [f"{student}: {path}" for _, path in urls[:2]] + [f"vgg16: {urls[2][1]}"]


def test_sets_already_on_disk_are_found_and_named(synth_root, capsys):
    download_cli.main(["--imagenet", "mobilenet_v2", "synth-oxford", "synth-sfm", "--data-root", str(synth_root)])
    printed = capsys.readouterr().out.splitlines()
    assert printed[-3:-1] == [f"synth-oxford: {synth_root / 'test' / 'synth-oxford'}",
                              f"synth-sfm: {synth_root / 'train' / 'synth-sfm'}"]
    name, path = printed[-1].split(": ")
    assert name == "mobilenet_v2 (ImageNet)" and Path(path).name.startswith("mobilenet_v2-") and Path(path).is_file()
