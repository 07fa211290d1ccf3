"""test.py and extract_features.py end to end through their command lines."""

import argparse
import json
import os
import re
import shutil

import numpy as np
import pytest
import torch

from aml.cli import extract_features as extract_cli
from aml.descriptors import feature_file_key
from aml.cli import test as test_cli
from aml.cli.arguments import parse_scales
from aml.data.images import ImageLoadError
from aml.evaluation import testing, whitening_store
from aml.networks import build_network
from aml.networks.checkpoint import checkpoint_state, save_checkpoint
from aml.networks.loading import parse_offtheshelf
from aml.utils.errors import DataError

# Trains networks or starts processes for tens of seconds: started early (conftest).
pytestmark = pytest.mark.long

COMMON = ["-d", "synth-oxford", "-imsize", "64", "-j", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("nets") / "resnet18-gem.pth.tar"
    return save_checkpoint(checkpoint_state(build_network("resnet18", pretrained=False), 1, 0.0), path)


def run(args, root):
    return test_cli.main(args + COMMON + ["--data-root", str(root)])


def medium(results, kind="plain"):
    return results["synth-oxford"][kind]["medium"]["map"]


def test_symmetric_run_prints_and_writes_json(checkpoint, synth_root, tmp_path, capsys):
    out = tmp_path / "res.json"
    results = run(["-npath", str(checkpoint), "--results", str(out)], synth_root)
    printed = capsys.readouterr().out
    assert ">> synth-oxford: mAP E: " in printed and ">> synth-oxford: mP@k[1, 5, 10] E: " in printed
    # the original's lines: the path as given, the scales and their power
    assert f">> Loading network:\n>>>> '{checkpoint}'\n" in printed
    assert ">> Set-up multiscale:\n>>>> ms: [1]\n>>>> msp: 1\n" in printed
    report = json.loads(out.read_text())
    assert report["results"]["synth-oxford"]["plain"]["medium"]["map"] == pytest.approx(medium(results))
    assert report["settings"]["image_size"] == 64 and 0 < medium(results) < 1
    # the weights tested, not only their file's name (a replaced file gave the same settings)
    from aml.networks.checkpoint import load_network
    from aml.networks.fingerprint import network_fingerprint

    assert report["settings"]["network_fingerprint"] == network_fingerprint(load_network(checkpoint))
    assert report["settings"]["teacher_fingerprint"] is None
    # where and with what the numbers were measured, as the docs said it held (and which data root)
    assert report["settings"]["data_root"] == str(synth_root.resolve())
    assert {"date", "machine", "torch", "command"} <= set(report["provenance"])
    # main(argv) called from Python: its command, not the caller's (pytest's)
    assert report["provenance"]["command"].startswith(f"python test.py -npath {checkpoint} --results {out}")


def test_asymmetric_against_itself_equals_symmetric(checkpoint, synth_root):
    symmetric = run(["-npath", str(checkpoint), "-ms", "[1, 1/2**(1/2)]"], synth_root)
    asymmetric = run(["-npath", str(checkpoint), "-ms", "[1, 1/2**(1/2)]", "--asym", "--teacher", str(checkpoint)],
                     synth_root)
    for difficulty in ("easy", "medium", "hard"):
        assert asymmetric["synth-oxford"]["plain"][difficulty]["map"] == pytest.approx(
            symmetric["synth-oxford"]["plain"][difficulty]["map"], abs=1e-12)


def test_asymmetric_uses_teacher_for_database(checkpoint, synth_root, tmp_path, monkeypatch):
    torch.manual_seed(5)
    other = save_checkpoint(checkpoint_state(build_network("resnet18", pretrained=False), 1, 0.0), tmp_path / "t.pth")
    loads = []
    real_load_teacher = test_cli.load_teacher
    monkeypatch.setattr(test_cli, "load_teacher", lambda *a: loads.append(a) or real_load_teacher(*a))
    asym = run(["-npath", str(checkpoint), "--asym", "--teacher", str(other)], synth_root)
    assert len(loads) == 1  # the teacher is read once
    sym = run(["-npath", str(checkpoint)], synth_root)
    assert medium(asym) != pytest.approx(medium(sym), abs=1e-6)


def test_a_teacher_without_asym_is_warned_of(checkpoint, synth_root, capsys):
    """--teacher without --asym printed symmetric numbers without a word (dropping --asym from
    the docs' command is an easy slip)."""
    run(["-npath", str(checkpoint), "--teacher", str(checkpoint)], synth_root)
    assert "--teacher " + str(checkpoint) + " without --asym: the test is symmetric" in capsys.readouterr().out


def test_asymmetric_dimension_mismatch_is_refused(checkpoint, synth_root, tmp_path):
    small = save_checkpoint(checkpoint_state(build_network("resnet18", pretrained=False, teacher_dim=128), 1, 0.0),
                            tmp_path / "small.pth")
    with pytest.raises(ValueError, match="equal dimensions"):
        run(["-npath", str(checkpoint), "--asym", "--teacher", str(small)], synth_root)


def test_a_student_is_tested_against_the_teacher_it_records(checkpoint, synth_root, tmp_path, monkeypatch, capsys):
    """--asym took vgg16 unless --teacher was given, and any 512-d teacher was accepted without
    a word: a student of another teacher searched a database of another space and printed
    near-chance mAP as its asymmetric result."""
    from aml.networks.loading import load_named_or_file
    from aml.utils.errors import ConfigError

    torch.manual_seed(5)
    teacher = save_checkpoint(checkpoint_state(build_network("resnet18", pretrained=False), 1, 0.0), tmp_path / "t.pth")
    net = build_network("resnet18", pretrained=False)
    net.meta["teacher"], net.meta["teacher_fingerprint"] = str(teacher), load_named_or_file(str(teacher)).fingerprint
    student = save_checkpoint(checkpoint_state(net, 1, 0.0), tmp_path / "student.pth")
    loads = []
    real_load_spec = test_cli.load_spec
    monkeypatch.setattr(test_cli, "load_spec", lambda spec, *a: loads.append(spec.given) or real_load_spec(spec, *a))
    recorded = run(["-npath", str(student), "--asym"], synth_root)
    assert loads == [str(teacher)]
    assert medium(recorded) == pytest.approx(medium(run(["-npath", str(student), "--asym", "-t", str(teacher)],
                                                        synth_root)), abs=1e-12)
    capsys.readouterr()
    run(["-npath", str(student), "--asym", "--teacher", str(checkpoint)], synth_root)  # named: tested, with a warning
    printed = capsys.readouterr().out
    assert "student was trained against another teacher" in printed and "this measures how compatible" in printed
    shutil.copyfile(checkpoint, teacher)  # the recorded teacher's file replaced by other weights
    with pytest.raises(ConfigError, match=r"student was trained against the weights [0-9a-f]+ of its teacher "
                                          r".*t.pth, but t now holds [0-9a-f]+: the file was replaced"):
        run(["-npath", str(student), "--asym"], synth_root)
    teacher.rename(tmp_path / "moved.pth")
    with pytest.raises(ConfigError, match=r"student records the teacher .*t.pth', which is not a file here"):
        run(["-npath", str(student), "--asym"], synth_root)


def test_whitening_is_learned_changes_numbers_and_is_cached(checkpoint, synth_root, tmp_path, monkeypatch):
    local = shutil.copy(checkpoint, tmp_path / "net.pth.tar")
    first = run(["-npath", str(local), "-w", "synth-sfm"], synth_root)
    cache = tmp_path / "net.pth.tar_synth-sfm_whiten_64.pth"
    assert cache.exists()
    assert medium(first, "whiten") != pytest.approx(medium(first, "plain"), abs=1e-4)

    def must_not_learn(*args, **kwargs):
        raise AssertionError("whitening should come from the cache")

    monkeypatch.setattr(whitening_store, "learn_whitening", must_not_learn)
    second = run(["-npath", str(local), "-w", "synth-sfm"], synth_root)
    assert medium(second, "whiten") == pytest.approx(medium(first, "whiten"))


def test_a_full_disk_skips_the_whitening_cache_and_the_results_stand(checkpoint, synth_root, tmp_path, full_disk,
                                                                       capsys):
    local = shutil.copy(checkpoint, tmp_path / "net.pth.tar")
    full_disk(tmp_path)  # where the whitening cache goes: beside the checkpoint
    results = run(["-npath", str(local), "-w", "synth-sfm"], synth_root)
    assert medium(results, "whiten") != pytest.approx(medium(results, "plain"), abs=1e-4)
    assert "the whitening cache not written" in "".join(capsys.readouterr())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.pth.tar"]


def test_whitening_cache_follows_the_weights_and_the_scales(checkpoint, synth_root, tmp_path, monkeypatch):
    local = tmp_path / "net.pth.tar"
    shutil.copy(checkpoint, local)
    learned = []
    real = whitening_store.learn_whitening
    monkeypatch.setattr(whitening_store, "learn_whitening", lambda *a, **k: learned.append(1) or real(*a, **k))
    run(["-npath", str(local), "-w", "synth-sfm", "-ms", "[1, 1/2]"], synth_root)
    cache = tmp_path / "net.pth.tar_synth-sfm_whiten_ms_64.pth"
    first = cache.read_bytes()
    run(["-npath", str(local), "-w", "synth-sfm", "-ms", "[1, 1/4]"], synth_root)  # same file name, other scales
    assert len(learned) == 2 and cache.read_bytes() != first
    torch.manual_seed(5)
    save_checkpoint(checkpoint_state(build_network("resnet18", pretrained=False), 0, 0.0), local)  # replaced in place
    run(["-npath", str(local), "-w", "synth-sfm", "-ms", "[1, 1/4]"], synth_root)
    assert len(learned) == 3


def test_whitening_from_checkpoint_meta(checkpoint, synth_root, tmp_path):
    state = torch.load(checkpoint, weights_only=True)
    dim = state["meta"]["outputdim"]
    state["meta"]["Lw"] = {"synth-sfm": {"ss": {"m": np.zeros((dim, 1)), "P": np.eye(dim)},
                                         "ms": {"m": np.zeros((dim, 1)), "P": np.eye(dim)}}}
    path = save_checkpoint(state, tmp_path / "with_lw.pth")
    results = run(["-npath", str(path), "-w", "synth-sfm"], synth_root)
    # identity whitening: only renormalisation (L2N's eps) moves scores, by ~1e-7, which may swap a near tie;
    # a learned whitening moves mAP by whole points (test_whitening_is_learned_changes_numbers_and_is_cached)
    assert medium(results, "whiten") == pytest.approx(medium(results, "plain"), abs=1e-4)
    assert not list(tmp_path.glob("*whiten*"))


LW_DAMAGES = {
    "nan": (lambda dim: {"synth-sfm": {"ss": {"m": np.zeros((dim, 1)), "P": np.where(np.eye(dim) > 0, np.nan, 0)}}},
            r"meta\['Lw'\]\['synth-sfm'\]\['ss'\] holds 512 NaN or infinite values \(in float32\): it is damaged"),
    "garbage": (lambda dim: "garbage", r"meta\['Lw'\] is a str, not \{set: "),
    "set garbage": (lambda dim: {"synth-sfm": [1, 2]}, r"meta\['Lw'\]\['synth-sfm'\] is a list"),
    "other dimension": (lambda dim: {"synth-sfm": {"ss": {"m": np.zeros((8, 1)), "P": np.eye(8)}}},
                        r"meta\['Lw'\]\['synth-sfm'\]\['ss'\]: m of shape \(8, 1\) and P of shape \(8, 8\) do not "
                        r"whiten 512-d descriptors"),
}


@pytest.mark.parametrize("lw, message", LW_DAMAGES.values(), ids=LW_DAMAGES.keys())
def test_a_damaged_whitening_in_a_checkpoint_ends_in_one_line(checkpoint, synth_root, tmp_path, lw, message):
    """A NaN in meta['Lw'] gave whitened mAPs of 1.39/1.62/0.70 and exit status 0."""
    from aml.cli.arguments import run_cli

    state = torch.load(checkpoint, weights_only=True)
    state["meta"]["Lw"] = lw(state["meta"]["outputdim"])
    path = save_checkpoint(state, tmp_path / "with_lw.pth")
    with pytest.raises(SystemExit) as info:
        run_cli(lambda: run(["-npath", str(path), "-w", "synth-sfm", "-q"], synth_root))
    assert re.search(f"^error: {path}: {message}", str(info.value.code)), info.value.code


def test_a_damaged_whitening_cache_is_learned_again(checkpoint, synth_root, tmp_path, capsys):
    local = shutil.copy(checkpoint, tmp_path / "net.pth.tar")
    first = run(["-npath", str(local), "-w", "synth-sfm"], synth_root)
    cache = tmp_path / "net.pth.tar_synth-sfm_whiten_64.pth"
    data = torch.load(cache, weights_only=False)
    data["P"][0, 0] = np.nan
    torch.save(data, cache)
    capsys.readouterr()
    second = run(["-npath", str(local), "-w", "synth-sfm"], synth_root)
    assert "the whitening cache cannot be used, learning it again" in capsys.readouterr().out
    assert medium(second, "whiten") == medium(first, "whiten")
    assert np.isfinite(torch.load(cache, weights_only=False)["P"]).all()


def test_database_descriptors_are_cached(checkpoint, synth_root, monkeypatch):
    run(["-npath", str(checkpoint)], synth_root)
    calls = []
    real = testing.describe_images
    monkeypatch.setattr(testing, "describe_images", lambda *a, **k: calls.append(1) or real(*a, **k))
    import aml.descriptors.cache as cache

    monkeypatch.setattr(cache, "describe_images", lambda *a, **k: pytest.fail("database re-encoded"))
    run(["-npath", str(checkpoint)], synth_root)
    assert len(calls) == 1  # queries only


def test_offtheshelf_parsing_and_run(synth_root, tmp_path):
    assert parse_offtheshelf("resnet101-gem-reg-whiten") == {"architecture": "resnet101", "pooling": "gem",
                                                              "pretrained": True, "regional": True, "whitening": True}
    with pytest.raises(ValueError, match="unknown option 'foo'"):
        parse_offtheshelf("resnet101-gem-foo")
    with pytest.raises(ValueError, match="ARCH-POOL"):
        parse_offtheshelf("resnet101")
    # the ImageNet file of mobilenet_v2 is found offline (the pip package of requirements-data.txt)
    results = test_cli.main(["-noff", "mobilenet_v2-gem"] + COMMON + ["--data-root", str(synth_root)])
    assert 0 < medium(results) <= 1


def test_multiscale_is_parsed_without_eval():
    assert parse_scales("[1, 1/2**(1/2), 1/2]") == pytest.approx([1, 2 ** -0.5, 0.5])
    assert parse_scales("1") == [1.0]
    for bad in ("__import__('os').system('true')", "[1, x]", "[]", "[-1]", "[1, 2**10000]"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_scales(bad)


def test_unknown_dataset_and_network_are_clear(checkpoint, synth_root, capsys):
    with pytest.raises(SystemExit):
        test_cli.main(["-npath", str(checkpoint), "-d", "roxford6k", "--data-root", str(synth_root)])
    assert "Unsupported or unknown dataset: roxford6k" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="neither a file nor a name of the pretrained list"):
        run(["-npath", "mobilenet-v2-gem-contr-vgg17"], synth_root)


@pytest.mark.parametrize("whitening, message", [
    ("retrieval-SfM-500k", r"--whitening retrieval-SfM-500k is no training set; choose from .*retrieval-SfM-120k.*, "
                           r"or make a folder .*/train/retrieval-SfM-500k with ims/ and retrieval-SfM-500k-whiten.pkl"),
    ("synth-oxford", r"--whitening synth-oxford is no training set"),
])
def test_a_whitening_set_that_is_not_one_names_the_flag_and_the_file_it_needs(checkpoint, synth_root, capsys,
                                                                              whitening, message):
    """It asked for <name>.pkl, a training db, where whitening needs <name>-whiten.pkl."""
    with pytest.raises(SystemExit):
        test_cli.main(["-npath", str(checkpoint), "-w", whitening, "--data-root", str(synth_root)])
    assert re.search(message, capsys.readouterr().err)


def test_missing_and_corrupt_images_are_named(checkpoint, synth_root, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(synth_root / "test", root / "test")
    images = sorted((root / "test" / "synth-oxford" / "jpg").glob("synth-oxford_0*.jpg"))
    images[0].unlink()
    with pytest.raises(ImageLoadError, match=f"{images[0].name} is missing \\(1 of the 1\\d+ images of synth-oxford\\)"):
        run(["-npath", str(checkpoint), "-d", "synth-paris,synth-oxford"], root)
    assert not (root / "features").exists()  # found before synth-paris was encoded (it was after)
    images[0].write_bytes(b"not a jpeg")
    with pytest.raises(ImageLoadError, match=f"{images[0].name} is corrupt"):
        run(["-npath", str(checkpoint), "--no-cache"], root)


def test_list_pretrained_has_every_published_name(capsys):
    test_cli.main(["--list-pretrained"])
    printed = capsys.readouterr().out
    assert "mobilenet-v2-gem-contr-vgg16" in printed and "http://files.inria.fr/aml/mobilenet_v2_gem_contr_vgg16.pth.tar" in printed
    assert "efficientnet_b3_gem_reg_vgg16.pth.tar" in printed and "pthaa" not in printed
    assert len(printed.strip().splitlines()) == 8 + 28 + 4


def test_extract_features_writes_columns_in_db_order(checkpoint, synth_root):
    paths = extract_cli.main(["-npath", str(checkpoint), "-d", "synth-sfm", "--split", "train,val", "-imsize", "64",
                              "-j", "0", "--device", "cpu", "--data-root", str(synth_root)])
    train, val = (np.load(p) for p in paths)
    assert train.shape == (512, 16 * 8) and val.shape == (512, 4 * 8)
    fingerprint = re.fullmatch(r"synth-sfm_resnet18-gem-([0-9a-f]{8})_imsize64.npy", paths[0].name).group(1)
    assert paths[1].name == f"synth-sfm-val_resnet18-gem-{fingerprint}_imsize64.npy"
    listing = paths[0].with_name(paths[0].stem + "_img_list.txt").read_text().splitlines()
    assert len(listing) == 128 and np.linalg.norm(train, axis=0) == pytest.approx(np.ones(128), abs=1e-4)


def test_two_runs_model_best_extract_to_two_files(synth_root, tmp_path):
    """Files were named by the checkpoint's file stem: the second run's model_best replaced the
    first's features, which --feat-path then read as the other teacher's."""
    (tmp_path / "data" / "train").mkdir(parents=True)  # a root of its own, for its features/ folder
    os.symlink(synth_root / "train" / "synth-sfm", tmp_path / "data" / "train" / "synth-sfm")
    written = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        path = tmp_path / f"run{seed}" / "model_best.pth.tar"
        path.parent.mkdir()
        save_checkpoint(checkpoint_state(build_network("squeezenet1_1", pretrained=False), 1, 0.0), path)
        written += extract_cli.main(["-npath", str(path), "-d", "synth-sfm", "--split", "val", "-imsize", "32",
                                     "-j", "0", "--device", "cpu", "-q", "--data-root", str(tmp_path / "data")])
    first, second = written
    assert first != second and first.is_file() and second.is_file()
    assert not np.array_equal(np.load(first), np.load(second))


def test_extract_features_of_other_settings_writes_beside_the_earlier_file(synth_root, tmp_path):
    """A run of other settings (-ms, --no-amp) under the same name replaced the earlier file (hours
    of SfM-120k) without a word; it goes beside it, and the same settings again replace it."""
    torch.manual_seed(0)
    path = save_checkpoint(checkpoint_state(build_network("squeezenet1_1", pretrained=False), 1, 0.0),
                           tmp_path / "teacher.pth.tar")
    common = ["-npath", str(path), "-d", "synth-sfm", "--split", "val", "-imsize", "64", "-j", "0", "--device", "cpu",
              "-q", "--data-root", str(synth_root)]
    multi, = extract_cli.main(common + ["-ms", "[1, 1/2]"])
    before = np.load(multi)
    single, = extract_cli.main(common)
    assert single != multi and single.parent == multi.parent and single.stem.startswith(multi.stem + "_")
    np.testing.assert_array_equal(np.load(multi), before)
    assert feature_file_key(multi).scales == (1.0, 0.5) and feature_file_key(single).scales == (1.0,)
    assert extract_cli.main(common + ["-ms", "[1, 1/2]"]) == [multi]


def test_a_full_disk_ends_extract_features_in_one_line(checkpoint, synth_root, tmp_path, full_disk):
    from aml.cli.arguments import run_cli

    root = tmp_path / "root"
    shutil.copytree(synth_root / "train", root / "train")
    full_disk(root)  # reads go on, every write fails
    with pytest.raises(SystemExit) as info:
        run_cli(lambda: extract_cli.main(["-npath", str(checkpoint), "-d", "synth-sfm", "--split", "val", "-imsize",
                                          "48", "-j", "0", "--device", "cpu", "--data-root", str(root), "-q"]))
    assert str(info.value.code).startswith("error: no space left on the device for ")
    assert not list(root.rglob("*.npy")) and not list(root.rglob(".*.tmp"))


def test_a_real_full_disk_skips_the_cache_keeps_the_old_results_and_ends_in_one_line(checkpoint, synth_root,
                                                                                      small_disk, capsys):
    """On a file system that is full (numpy says so without an errno), test.py skips its
    descriptor cache, prints its numbers, and leaves an earlier results file whole."""
    from aml.cli.arguments import run_cli
    from tests.conftest import fill_disk

    disk = small_disk(30)
    shutil.copytree(synth_root / "test" / "synth-oxford", disk / "test" / "synth-oxford")
    results = disk / "out" / "results.json"
    results.parent.mkdir()
    results.write_text('{"earlier": "results"}')
    fill_disk(disk, leave=0)
    with pytest.raises(SystemExit) as info:
        run_cli(lambda: run(["-npath", str(checkpoint), "--results", str(results), "-q"], disk))
    assert str(info.value.code).startswith(f"error: no space left on the device for {results}")
    printed = capsys.readouterr().out
    assert ">> synth-oxford: mAP E: " in printed and "the descriptor cache not written" in printed
    assert json.loads(results.read_text()) == {"earlier": "results"}
    assert not list(disk.rglob("*.npy")) and not list(disk.rglob(".*.tmp"))


def test_extract_features_on_a_real_full_disk_ends_in_one_line(checkpoint, synth_root, small_disk):
    from aml.cli.arguments import run_cli
    from tests.conftest import fill_disk

    disk = small_disk(30)
    shutil.copytree(synth_root / "train", disk / "train")
    fill_disk(disk, leave=16 << 10)  # room for the image list, not for the descriptors
    with pytest.raises(SystemExit) as info:
        run_cli(lambda: extract_cli.main(["-npath", str(checkpoint), "-d", "synth-sfm", "--split", "val", "-imsize",
                                          "48", "-j", "0", "--device", "cpu", "--data-root", str(disk), "-q"]))
    assert str(info.value.code).startswith("error: no space left on the device for ")
    assert not list(disk.rglob("*.npy")) and not list(disk.rglob(".*.tmp"))


def test_extract_features_store_equals_the_npy_and_feeds_feat_path(checkpoint, synth_root, tmp_path):
    from aml.cli import train as train_cli
    from aml.descriptors import load_feature_file

    common = ["-npath", str(checkpoint), "-d", "synth-sfm", "-imsize", "64", "-j", "0", "--device", "cpu",
              "--data-root", str(synth_root)]
    files = extract_cli.main(common + ["--split", "val"])
    stores = extract_cli.main(common + ["--split", "val", "--shard-size", "7"])
    assert stores[0].name == files[0].with_suffix(".store").name and len(list(stores[0].glob("shard_*.npy"))) == 5
    np.testing.assert_allclose(load_feature_file(stores[0], 32), load_feature_file(files[0], 32), atol=1e-6)
    (stores[0] / "shard_00002.npy").unlink()  # as if the extraction had been interrupted
    with pytest.raises(ValueError, match="lacks 1 of 5 shards.*run the same command again"):
        load_feature_file(stores[0], 32)
    extract_cli.main(common + ["--split", "val", "--shard-size", "7"])  # encodes the missing shard only
    # other settings under the same name: beside it (the command has no flag for another folder, and
    # the refusal said to choose one or delete the store)
    halves = extract_cli.main(common + ["--split", "val", "--shard-size", "7", "--store-dtype", "float16"])
    assert halves[0].parent == stores[0].parent and halves[0].name.startswith(stores[0].stem + "_")
    assert json.loads((stores[0] / "manifest.json").read_text())["dtype"] == "float32"
    assert extract_cli.main(common + ["--split", "val", "--shard-size", "7", "--store-dtype", "float16"]) == halves
    np.testing.assert_allclose(load_feature_file(halves[0], 32), load_feature_file(files[0], 32), atol=2e-3)
    train = extract_cli.main(common + ["--split", "train", "--shard-size", "50", "--store-dtype", "float16"])
    result = train_cli.main(["--directory", str(tmp_path), "--data-root", str(synth_root), "-d", "synth-sfm",
                             "--not-pretrained", "-a", "resnet18", "--image-size", "48", "-m", "ts", "-nn", "2", "-qs",
                             "10", "-ps", "30", "-b", "5", "-j", "0", "--device", "cpu", "--epochs", "1",
                             "--teacher", str(checkpoint), "--feat-path", str(train[0]), "--feat-val-path",
                             str(stores[0]), "-q"])
    assert np.isfinite(result.history[0]["val_loss"])
    # a teacher file of the same name with other weights: refused where the run loads it (validation)
    torch.manual_seed(1)
    other = save_checkpoint(checkpoint_state(build_network("resnet18", pretrained=False), 1, 0.0),
                            tmp_path / "other" / checkpoint.name)
    with pytest.raises(DataError, match=r"was encoded by other weights than --teacher .*other/resnet18-gem.pth.tar's"):
        train_cli.main(["--directory", str(tmp_path / "runs2"), "--data-root", str(synth_root), "-d", "synth-sfm",
                        "--not-pretrained", "-a", "resnet18", "--image-size", "48", "-m", "ts", "-nn", "2", "-qs",
                        "10", "-ps", "30", "-b", "5", "-j", "0", "--device", "cpu", "--epochs", "1",
                        "--teacher", str(other), "--feat-path", str(train[0]), "-q"])


def test_scripts_report_user_errors_in_one_line(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    bad = tmp_path / "broken.pth.tar"
    bad.write_bytes(b"not a checkpoint")
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, str(repo / "test.py"), "-npath", str(bad), "-d", "synth-oxford",
                           "--data-root", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().startswith("error: cannot read") and "broken.pth.tar" in done.stderr
    assert "Traceback" not in done.stderr
