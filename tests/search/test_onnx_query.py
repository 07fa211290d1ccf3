"""python -m aml.search query --onnx: the exported student (float32 or int8) queries a store,
and a file made for another store is refused."""

import json
import shutil

import numpy as np
import pytest
import torch

from aml.cli import export as export_cli
from aml.cli import search as search_cli
from aml.descriptors.onnx_student import OnnxStudentError, read_onnx_metadata, write_onnx_metadata
from aml.networks import build_network
from aml.networks.checkpoint import checkpoint_state, save_checkpoint
from aml.search import StoreError, open_database, query_database, query_database_onnx
from aml.networks.checkpoint import load_network

# Indexes a store, learns its whitening and quantizes a network for tens of seconds: started early (conftest).
pytestmark = pytest.mark.long

COMMON = ["-j", "0", "--device", "cpu", "-q"]
SIZE = 64


@pytest.fixture(scope="module")
def setup(synth_root, tmp_path_factory):
    """A random resnet18 that is its own teacher (same space: exact answers), a store of the
    synth-oxford database encoded by it with its whitening, and its float32 and int8 exports
    with that whitening folded in."""
    folder = tmp_path_factory.mktemp("onnx-query")
    torch.manual_seed(0)
    state = checkpoint_state(build_network("resnet18", pretrained=False), 1, 0.0)
    state["meta"]["teacher"] = str(folder / "student.pth.tar")
    student = save_checkpoint(state, folder / "student.pth.tar")
    jpg = synth_root / "test" / "synth-oxford" / "jpg"
    store = folder / "store"
    search_cli.main(["index", str(jpg), "--store", str(store), "--teacher", str(student), "-imsize", str(SIZE),
                     "-w", "synth-sfm", "--data-root", str(synth_root)] + COMMON)
    files = export_cli.main(["--network", str(student), "--out", str(folder / "deploy"), "--int8", "--calibration",
                             str(synth_root / "test" / "synth-paris" / "jpg"), "--calibration-images", "8",
                             "--store", str(store)])
    return student, store, files, sorted(jpg.glob("*query*.jpg"))


def test_onnx_queries_return_the_checkpoints_first_image(setup):
    student, store, files, queries = setup
    opened = open_database(store)
    expected = [hits["results"][0]["image"] for hits in query_database(opened, load_network(student), queries, k=1)]
    fp32 = [hits["results"][0]["image"] for hits in query_database_onnx(opened, files["onnx"], queries, k=1)]
    int8 = [hits["results"][0]["image"] for hits in query_database_onnx(opened, files["int8"], queries, k=1)]
    assert read_onnx_metadata(files["int8"]).calibration_image_size == SIZE  # the store's image size
    assert fp32 == expected
    agree = np.mean([a == b for a, b in zip(int8, expected)])
    assert len(queries) == 30 and agree >= 0.7  # measured: 30 of 30


def test_one_path_or_no_images_are_taken_as_by_the_checkpoints_query(setup):
    """One path was read a character at a time ("image d is missing"), no image was numpy's
    "need at least one array to stack"; query_database refuses the one and answers [] to the other."""
    from aml.descriptors.onnx_student import describe_with_onnx, onnx_session
    from aml.utils.errors import ConfigError

    student, store, files, queries = setup
    opened = open_database(store)
    with pytest.raises(ConfigError, match="images must be a list of image paths, got one str"):
        query_database_onnx(opened, files["onnx"], str(queries[0]), k=1)
    assert query_database_onnx(opened, files["onnx"], [], k=1) == query_database(opened, load_network(student), [])
    with pytest.raises(ConfigError, match="no images to encode"):
        describe_with_onnx(onnx_session(files["onnx"]), [], SIZE)


def test_the_command_line_with_onnx(setup, tmp_path):
    _, store, files, queries = setup
    out = tmp_path / "hits.json"
    search_cli.main(["query", str(queries[0]), "--store", str(store), "--onnx", str(files["onnx"]), "-k", "3",
                     "--json", str(out)] + COMMON)
    hits = json.loads(out.read_text())[0]["results"]
    assert len(hits) == 3 and hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]


def _edited(files, tmp_path, kind="onnx", **changes):
    import dataclasses

    copy = tmp_path / "edited.onnx"
    shutil.copyfile(files[kind], copy)
    write_onnx_metadata(copy, dataclasses.replace(read_onnx_metadata(copy), **changes))
    return copy


def test_a_file_for_another_store_is_refused(setup, tmp_path, caplog):
    _, store, files, queries = setup
    opened = open_database(store)
    other = "1" * 16  # the file of another network than the store's (the fixture's student is its own teacher)
    cases = {
        "another teacher": (dict(fingerprint=other, teacher_fingerprint="0" * 16, teacher="other"),
                            r"edited.onnx is a student of other \(weights 00000000\), but the store .* was encoded "
                            r"by student \(.*student.pth.tar, weights \w{8}\)"),
        "another teacher by name": (dict(fingerprint=other, teacher_fingerprint=None, teacher="other"),
                                    r"is a student of other"),
        "dimension": (dict(dim=256), r"edited.onnx outputs 256-d descriptors but the store .* holds 512-d ones"),
        "whitening": (dict(whitening="abc"), r"has a whitening folded in but the store .* has another whitening"),
        "no teacher": (dict(fingerprint=other, teacher=None, teacher_fingerprint=None), r"does not record its teacher"),
    }
    for name, (changes, message) in cases.items():
        with pytest.raises(StoreError, match=message):
            query_database_onnx(opened, _edited(files, tmp_path, **changes), queries[:1])
    same = _edited(files, tmp_path, fingerprint=other, teacher_fingerprint=None)  # by name: the store's network name
    assert len(query_database_onnx(opened, same, queries[:1], k=2)[0]["results"]) == 2
    # said, as for a checkpoint: any file of that name would pass
    assert f"checked against {same}'s teacher student by its file name only" in caplog.text
    own = _edited(files, tmp_path, teacher=None, teacher_fingerprint=None)  # the store's own network: symmetric
    assert len(query_database_onnx(opened, own, queries[:1], k=2)[0]["results"]) == 2


def test_an_int8_file_calibrated_at_another_size_than_the_stores_is_warned_of(setup, tmp_path, caplog):
    """The calibration size was recorded in the file and read by nothing: an int8 student
    calibrated at 1024 px (--int8 without --store) queried a store of 64 px without a word;
    then one calibrated on photos of the store's size was warned of as asked for at 1024 px."""
    import onnx

    _, store, files, queries = setup
    opened = open_database(store)
    with caplog.at_level("WARNING", logger="aml.search.query"):
        query_database_onnx(opened, files["int8"], queries[:1], k=1)
        assert "calibrated" not in caplog.text  # at the store's size
        # asked for 1024 px on photos shrunk to 64 px, as the store's are (images are never enlarged): nothing to say
        smaller = _edited(files, tmp_path, "int8", calibration_image_size=1024, calibrated_side=SIZE)
        query_database_onnx(opened, smaller, queries[:1], k=1)
        assert "calibrated" not in caplog.text
        edited = _edited(files, tmp_path, "int8", calibration_image_size=1024, calibrated_side=1024)
        query_database_onnx(opened, edited, queries[:1], k=1)
        query_database_onnx(opened, edited, queries[1:2], k=1)  # the same file again: checked, and said, once
    assert caplog.text.count(f"was calibrated on images of 1024 px and the store {store} holds images of 64 px") == 1
    # photos smaller than both sizes: another --image-size would not change them
    small = _edited(files, tmp_path, "int8", calibration_image_size=1024, calibrated_side=48)
    with caplog.at_level("WARNING", logger="aml.search.query"):
        query_database_onnx(open_database(store), small, queries[:1], k=1)
    assert "calibrated on images of 48 px and the store" in caplog.text
    assert f"calibrate it on photos of at least 64 px (--calibration), with --store {store}" in caplog.text
    # a file of an export that did not record the side: the size asked for counts
    older = _edited(files, tmp_path, "int8", calibration_image_size=1024, calibrated_side=None)
    model = onnx.load(str(older))
    kept = [p for p in model.metadata_props if p.key != "aml.calibrated_side"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(older))
    caplog.clear()
    with caplog.at_level("WARNING", logger="aml.search.query"):
        query_database_onnx(open_database(store), older, queries[:1], k=1)
    assert "was calibrated on images of 1024 px" in caplog.text


def test_a_file_without_metadata_or_damaged_is_refused(setup, tmp_path):
    import onnx

    _, store, files, queries = setup
    opened = open_database(store)
    model = onnx.load(str(files["onnx"]))
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    with pytest.raises(StoreError, match=r"bare.onnx has no aml metadata .* export it again: python -m aml.export"):
        query_database_onnx(opened, bare, queries[:1])
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(files["onnx"].read_bytes()[:5000])
    with pytest.raises(OnnxStudentError, match=r"broken.onnx is not a readable ONNX model"):
        query_database_onnx(opened, broken, queries[:1])


def test_an_exported_student_with_nan_weights_is_named_by_the_command(setup, tmp_path):
    """A NaN in an exported student gave exit status 0 and an empty result list."""
    import onnx
    from onnx import numpy_helper

    _, store, files, queries = setup
    model = onnx.load(str(files["onnx"]))
    weights = next(i for i in model.graph.initializer if len(i.dims) == 4)  # the first convolution's
    array = numpy_helper.to_array(weights).copy()
    array.flat[0] = np.nan
    weights.CopyFrom(numpy_helper.from_array(array, weights.name))
    damaged = tmp_path / "damaged.onnx"
    onnx.save(model, str(damaged))
    with pytest.raises(SystemExit, match=f"^error: {damaged} gives NaN or infinite descriptors for 1 of 1 images"):
        search_cli.main(["query", str(queries[0]), "--store", str(store), "--onnx", str(damaged)] + COMMON)


def test_the_whitening_of_another_teachers_store_is_not_folded_in(setup, tmp_path):
    """A store's whitening is its teacher's: folded into the student of another teacher of the
    same dimension it exported a student whose descriptors were noise, silently."""
    _, store, _, _ = setup
    torch.manual_seed(5)
    other = save_checkpoint(checkpoint_state(build_network("resnet18", pretrained=False), 1, 0.0), tmp_path / "other.pth")
    state = checkpoint_state(build_network("resnet18", pretrained=False), 1, 0.0)
    state["meta"]["teacher"] = str(other)
    student = save_checkpoint(state, tmp_path / "student.pth.tar")
    with pytest.raises(SystemExit, match=r"was encoded by student \(.*student.pth.tar, weights \w{8}\), not by the "
                                         r"student's teacher .*other.pth \(weights \w{8}\); index the database with "
                                         r"that teacher"):
        export_cli.main(["--network", str(student), "--out", str(tmp_path / "deploy"), "--store", str(store)])
    assert not (tmp_path / "deploy").exists() or not any((tmp_path / "deploy").iterdir())


def test_a_store_without_whitening_is_exported_for_as_the_advice_says(setup, synth_root, tmp_path):
    """"export the student again with --store STORE", said of a store without whitening, ended in
    "the store has no whitening to fold in": the advice went round in a circle."""
    student, _, files, queries = setup
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in sorted((synth_root / "test" / "synth-oxford" / "jpg").glob("*.jpg"))[:12]:
        shutil.copy(path, photos)
    plain = tmp_path / "plain"
    search_cli.main(["index", str(photos), "--store", str(plain), "--teacher", str(student), "-imsize", str(SIZE)]
                    + COMMON)
    with pytest.raises(StoreError, match=r"has a whitening folded in but the store .*plain has no whitening; export "
                                         r"the student again with --store"):
        query_database_onnx(open_database(plain), files["onnx"], queries[:1])
    again = export_cli.main(["--network", str(student), "--out", str(tmp_path / "deploy"), "--store", str(plain)])
    assert read_onnx_metadata(again["onnx"]).whitening is None
    assert len(query_database_onnx(open_database(plain), again["onnx"], queries[:1], k=2)[0]["results"]) == 2


def test_slips_of_the_python_api_are_refused_in_one_line(setup):
    """An image size of 0 encoded a 1 x 1 image without a word; a path given for the session, or
    a network for the file's path, were raw AttributeError and TypeError."""
    from aml.descriptors.onnx_student import describe_with_onnx, image_array, onnx_session
    from aml.networks.loading import load_test_network
    from aml.utils.errors import ConfigError

    student, store, files, queries = setup
    session = onnx_session(files["onnx"])
    for size in (0, -5, "64", float("nan")):
        with pytest.raises(ConfigError, match=f"image size {size!r}: the longer side to shrink images to is a number"):
            describe_with_onnx(session, queries[:1], size)
        with pytest.raises(ConfigError, match="image size"):
            image_array(queries[0], size)
    with pytest.raises(ConfigError, match="the session is a PosixPath, not an onnxruntime session: open the file"):
        describe_with_onnx(files["onnx"], queries[:1], SIZE)
    network = load_test_network(str(student), None, None, None)
    with pytest.raises(ConfigError, match="named by the path of its ONNX file, got a LoadedNetwork; a network in "
                                          "memory queries with aml.search.query_database"):
        query_database_onnx(open_database(store), network, queries[:1])
