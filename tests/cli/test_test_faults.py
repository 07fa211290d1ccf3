"""test.py when the data changes or is damaged: the database cache follows the files,
unreadable images are skipped on request, gnd files that do not fit are refused."""

import json
import os
import pickle
import shutil

import pytest
import torch

from aml.cli import test as test_cli
from aml.data.images import ImageLoadError
from aml.data.safe_pickle import load_pickle, save_pickle
from aml.networks import build_network
from aml.networks.checkpoint import checkpoint_state, save_checkpoint

# Trains networks or starts processes for tens of seconds: started early (conftest).
pytestmark = pytest.mark.long

COMMON = ["-d", "synth-oxford", "-imsize", "64", "-j", "0", "--device", "cpu", "-q"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("nets") / "resnet18-gem.pth.tar"
    return save_checkpoint(checkpoint_state(build_network("resnet18", pretrained=False), 1, 0.0), path)


@pytest.fixture
def root(synth_root, tmp_path):
    """A private copy of the synthetic test sets (the tests damage it)."""
    shutil.copytree(synth_root / "test", tmp_path / "root" / "test")
    return tmp_path / "root"


def run(checkpoint, root, *extra):
    return test_cli.main(["-npath", str(checkpoint), *COMMON, "--data-root", str(root), *extra])


def jpg(root, name):
    return root / "test" / "synth-oxford" / "jpg" / f"{name}.jpg"


def test_database_cache_follows_replaced_and_truncated_images(checkpoint, root):
    gnd = load_pickle(root / "test" / "synth-oxford" / "gnd_synth-oxford.pkl")
    first = run(checkpoint, root)["synth-oxford"]["plain"]["medium"]
    assert len(list((root / "features" / "cache").glob("*.npy"))) == 1
    # replace every positive of every query by one distractor: mAP must fall, not be read from the cache
    distractor = jpg(root, gnd["imlist"][-1]).read_bytes()
    for entry in gnd["gnd"]:
        for index in list(entry["easy"]) + list(entry["hard"]):
            jpg(root, gnd["imlist"][index]).write_bytes(distractor)
    second = run(checkpoint, root)["synth-oxford"]["plain"]["medium"]
    assert second["map"] < 0.5 * first["map"]
    assert len(list((root / "features" / "cache").glob("*.npy"))) == 2
    victim = jpg(root, gnd["imlist"][0])
    victim.write_bytes(victim.read_bytes()[:100])  # truncated
    with pytest.raises(ImageLoadError, match=victim.name):
        run(checkpoint, root)


def test_unreadable_images_are_skipped_listed_and_counted(checkpoint, root, tmp_path, capsys):
    gnd = load_pickle(root / "test" / "synth-oxford" / "gnd_synth-oxford.pkl")
    bad_db, bad_query = jpg(root, gnd["imlist"][3]), jpg(root, gnd["qimlist"][0])
    bad_db.write_bytes(b"not a jpeg")
    bad_query.write_bytes(b"")
    with pytest.raises(ImageLoadError, match="is corrupt or not an image"):
        run(checkpoint, root)
    results = run(checkpoint, root, "--skip-bad-images", "--results", str(tmp_path / "out" / "res.json"))
    printed = capsys.readouterr().out
    entry = results["synth-oxford"]
    assert entry["skipped"]["database"] == [str(bad_db)] and entry["skipped"]["queries"] == [str(bad_query)]
    listing = (tmp_path / "out" / "skipped_synth-oxford.txt").read_text().splitlines()
    assert listing == [f"database\t{bad_db}", f"query\t{bad_query}"]
    assert ">> synth-oxford: mAP E: " in printed and "(2 unreadable images skipped)" in printed
    assert len(entry["plain"]["medium"]["aps"]) == len(gnd["qimlist"])  # aps[q] is query q's
    saved = json.loads((tmp_path / "out" / "res.json").read_text())
    assert saved["results"]["synth-oxford"]["skipped"]["queries"] == [str(bad_query)]
    shutil.copyfile(jpg(root, gnd["imlist"][4]), bad_db)  # mended: the earlier list would name images read now
    shutil.copyfile(jpg(root, gnd["qimlist"][1]), bad_query)
    results = run(checkpoint, root, "--skip-bad-images", "--results", str(tmp_path / "out" / "res.json"))
    assert "skipped" not in results["synth-oxford"]
    assert not (tmp_path / "out" / "skipped_synth-oxford.txt").exists()


def test_a_skipped_querys_ap_is_nan_at_its_place_and_the_others_keep_theirs(checkpoint, root, tmp_path):
    """A skipped query's entry was left out of each per-query AP list: the results file's aps[q]
    was query q + 1's from the skipped one on."""
    gnd = load_pickle(root / "test" / "synth-oxford" / "gnd_synth-oxford.pkl")
    full = run(checkpoint, root)["synth-oxford"]["plain"]
    jpg(root, gnd["qimlist"][2]).write_bytes(b"")
    run(checkpoint, root, "--skip-bad-images", "--results", str(tmp_path / "res.json"))
    saved = json.loads((tmp_path / "res.json").read_text())["results"]["synth-oxford"]["plain"]
    for level in ("easy", "medium", "hard"):
        aps = saved[level]["aps"]
        assert aps[2] is None and len(aps) == len(gnd["qimlist"])
        assert [ap for q, ap in enumerate(aps) if q != 2] == pytest.approx(
            [ap for q, ap in enumerate(full[level]["aps"]) if q != 2], nan_ok=True)


def test_a_set_whose_every_query_is_skipped_is_an_error_not_a_result(checkpoint, root):
    """With every query unreadable, --skip-bad-images printed mAP nan and exited 0."""
    from aml.utils.errors import DataError

    gnd = load_pickle(root / "test" / "synth-oxford" / "gnd_synth-oxford.pkl")
    for name in gnd["qimlist"]:
        jpg(root, name).write_bytes(b"")
    with pytest.raises(DataError, match=r"synth-oxford: every query was skipped as unreadable \(first: .*\.jpg\): "
                                        r"the set's images are missing or damaged"):
        run(checkpoint, root, "--skip-bad-images")


def test_a_skipped_list_that_cannot_be_written_ends_no_test(checkpoint, root, capsys, full_disk):
    """The list goes to the data set's folder without --results or --report, often a shared,
    read-only or full one: the test stopped there, after the encoding, with its results unsaid.
    It goes on; the earlier list, which names other images, does not stay."""
    gnd = load_pickle(root / "test" / "synth-oxford" / "gnd_synth-oxford.pkl")
    bad = jpg(root, gnd["imlist"][3])
    bad.write_bytes(b"not a jpeg")
    listing = root / "test" / "synth-oxford" / "skipped_synth-oxford.txt"
    listing.write_text("database\tan earlier list\n")
    full_disk(listing.parent)
    results = run(checkpoint, root, "--skip-bad-images")
    printed = capsys.readouterr().out
    assert f"the list of skipped images {listing} not written, the results are not affected" in printed
    assert results["synth-oxford"]["skipped"] == {"database": [str(bad)], "queries": [], "list": None}
    assert "queries could not be read and were skipped; their list could not be written" in printed
    assert not listing.exists()


def test_skipped_database_image_ranks_last():
    import numpy as np

    from aml.evaluation.ranking import rank_database

    database = np.eye(3, dtype=np.float32)
    ranks = rank_database(database, database[:, :1], excluded=[0])
    assert ranks[:, 0].tolist() == [1, 2, 0]


@pytest.mark.parametrize("damage, message", [
    (lambda g: g["gnd"][2]["easy"].append(10 ** 6), r"query 2 \(.*\) lists database indices \[1000000\] in 'easy'"),
    (lambda g: g["gnd"][1]["junk"].append(-1), r"query 1 .* lists database indices \[-1\] in 'junk'"),
    (lambda g: g["gnd"].pop(), r"\d+ gnd entries for \d+ queries"),
    (lambda g: g["gnd"][0].pop("hard"), r"query 0 .* has no 'hard' list"),
    (lambda g: g["gnd"][0].update(bbx=[50, 10, 20, 40]), r"query 0 .* has box \[50.0, 10.0, 20.0, 40.0\]"),
])
def test_gnd_that_does_not_fit_the_images_is_refused(checkpoint, root, damage, message):
    path = root / "test" / "synth-oxford" / "gnd_synth-oxford.pkl"
    gnd = load_pickle(path)
    for entry in gnd["gnd"]:
        for key in ("easy", "hard", "junk"):
            entry[key] = list(entry[key])
    damage(gnd)
    save_pickle(gnd, path)
    with pytest.raises(ValueError, match="gnd_synth-oxford.pkl: " + message):
        run(checkpoint, root)


def test_truncated_and_unsafe_pickles_end_in_one_line(checkpoint, root):
    from aml.cli.arguments import run_cli

    path = root / "test" / "synth-oxford" / "gnd_synth-oxford.pkl"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SystemExit) as info:
        run_cli(lambda: run(checkpoint, root))
    assert str(info.value.code).startswith("error: ") and "gnd_synth-oxford.pkl is truncated" in str(info.value.code)

    class Boom:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path.write_bytes(pickle.dumps({"imlist": [], "qimlist": [], "gnd": [Boom()]}))
    with pytest.raises(SystemExit) as info:
        run_cli(lambda: run(checkpoint, root))
    assert "refusing to load" in str(info.value.code) and "system" in str(info.value.code)


def test_two_concurrent_runs_agree_and_leave_a_valid_cache(checkpoint, root, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    import numpy as np

    repo = Path(__file__).resolve().parents[2]
    outputs = [tmp_path / f"run{i}.json" for i in range(2)]
    processes = [subprocess.Popen([sys.executable, str(repo / "test.py"), "-npath", str(checkpoint), *COMMON,
                                   "--data-root", str(root), "--results", str(out)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for out in outputs]
    for process in processes:
        assert process.wait(timeout=300) == 0, process.stderr.read()
    first, second = (json.loads(out.read_text())["results"] for out in outputs)
    assert first == second
    caches = list((root / "features" / "cache").iterdir())
    assert len(caches) == 1 and caches[0].suffix == ".npy"  # no temporary file left behind
    assert np.load(caches[0]).shape[1] == len(load_pickle(root / "test" / "synth-oxford" / "gnd_synth-oxford.pkl")["imlist"])
    assert run(checkpoint, root)["synth-oxford"]["plain"]["medium"]["map"] == first["synth-oxford"]["plain"]["medium"]["map"]


def test_a_full_disk_skips_the_optional_caches_and_the_results_stand(checkpoint, root, full_disk, capsys):
    first = run(checkpoint, root, "--no-cache")["synth-oxford"]["plain"]
    full_disk(root / "features")
    second = run(checkpoint, root)["synth-oxford"]["plain"]
    assert second == first and "the descriptor cache not written" in "".join(capsys.readouterr())
    assert not list((root / "features").rglob("*.npy")) and not list((root / "features").rglob(".*.tmp"))
