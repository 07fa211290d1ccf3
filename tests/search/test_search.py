"""python -m aml.search: a teacher-encoded store queried with a student."""

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from aml.descriptors import ExtractionConfig
from aml.cli import search as search_cli
from aml.data.safe_pickle import load_pickle
from aml.descriptors import describe_images, write_feature_file
from aml.evaluation.ranking import rank_database
from aml.networks import build_network
from aml.networks.fingerprint import network_fingerprint
from aml.networks.checkpoint import CheckpointError, checkpoint_state, load_checkpoint, load_network, save_checkpoint
from aml.search import store as search_store
from aml.evaluation.reranking import Reranking
from aml.evaluation.superglobal import SuperGlobal, superglobal_rerank, superglobal_scores
from aml.evaluation.whitening import whitenapply
from aml.search import SearchDatabase, StoreError, build_ivfpq, open_database
from aml.search.faiss_index import ExactIndex
from aml.utils.plain_files import save_plain_file

# Trains networks or starts processes for tens of seconds: started early (conftest).
pytestmark = pytest.mark.long

COMMON = ["-j", "0", "--device", "cpu", "-q"]


@pytest.fixture(scope="module")
def teacher(trained_teacher, tmp_path_factory):
    """The learning tests' trained resnet18 teacher (tests/conftest.py), and a student that records it."""
    state = load_checkpoint(trained_teacher)
    state["meta"]["teacher"] = str(trained_teacher)  # a "student" that is its teacher: same space, exact answers
    student = save_checkpoint(state, tmp_path_factory.mktemp("search") / "student.pth.tar")
    return trained_teacher, student


@pytest.fixture(scope="module")
def store(teacher, synth_root, tmp_path_factory):
    folder = tmp_path_factory.mktemp("store")
    search_cli.main(["index", str(synth_root / "test" / "synth-oxford" / "jpg"), "--store", str(folder),
                     "--teacher", str(teacher[0]), "-imsize", "64", "--data-root", str(synth_root)] + COMMON)
    return folder


def test_store_holds_every_image_with_its_teacher(store, teacher, synth_root):
    opened = open_database(store)
    files = sorted((synth_root / "test" / "synth-oxford" / "jpg").glob("*.jpg"))
    assert opened.vecs.shape == (512, len(files)) and opened.images == [str(p.resolve()) for p in files]
    assert opened.settings["network"] == "model_epoch3" and opened.settings["image_size"] == 64


def test_easy_queries_return_their_positives_first(store, teacher, synth_root, tmp_path):
    gnd = load_pickle(synth_root / "test" / "synth-oxford" / "gnd_synth-oxford.pkl")
    jpg = synth_root / "test" / "synth-oxford" / "jpg"
    net = load_network(teacher[0])
    database = [str(jpg / f"{n}.jpg") for n in gnd["imlist"]]
    queries = [str(jpg / f"{n}.jpg") for n in gnd["qimlist"]]
    boxes = [g["bbx"] for g in gnd["gnd"]]
    ranks = rank_database(describe_images(net, database, 64, config=ExtractionConfig(workers=0)),
                          describe_images(net, queries, 64, bbxs=boxes, config=ExtractionConfig(workers=0)))
    easy = [q for q in range(len(queries)) if ranks[0, q] in set(gnd["gnd"][q]["easy"])]
    assert len(easy) >= 3  # the benchmark answers these right
    for q in easy[:3]:
        out = tmp_path / f"q{q}.json"
        box = ",".join(str(c) for c in boxes[q])
        search_cli.main(["query", queries[q], "--store", str(store), "--network", str(teacher[1]), "--box", box, "-k",
                         "5", "--json", str(out), "--data-root", str(synth_root)] + COMMON)
        top = json.loads(out.read_text())[0]["results"]
        assert Path(top[0]["image"]).stem == gnd["imlist"][ranks[0, q]]
        assert top[0]["score"] >= top[1]["score"]


def test_store_of_another_teacher_is_refused(store, synth_root, tmp_path):
    torch.manual_seed(9)
    other_teacher = save_checkpoint(checkpoint_state(build_network("resnet18", pretrained=False), 1, 0.0),
                                    tmp_path / "other.pth.tar")
    state = checkpoint_state(build_network("resnet18", pretrained=False), 1, 0.0)
    state["meta"]["teacher"] = str(other_teacher)
    student = save_checkpoint(state, tmp_path / "student.pth.tar")
    query = str(next((synth_root / "test" / "synth-oxford" / "jpg").glob("*.jpg")))
    with pytest.raises(SystemExit) as info:
        search_cli.main(["query", query, "--store", str(store), "--network", str(student)] + COMMON)
    assert "was encoded by model_epoch3" in str(info.value.code) and "not by the student's teacher" in str(info.value.code)
    state["meta"].pop("teacher")
    save_checkpoint(state, tmp_path / "orphan.pth.tar")
    with pytest.raises(SystemExit, match="does not record its teacher; give --teacher"):
        search_cli.main(["query", query, "--store", str(store), "--network", str(tmp_path / "orphan.pth.tar")] + COMMON)
    with pytest.raises(SystemExit, match=r"is not a store \(it holds no manifest.json\); build one with"):
        search_cli.main(["query", query, "--store", str(tmp_path), "--network", str(student)] + COMMON)
    with pytest.raises(StoreError, match="the store .*nope does not exist"):  # in Python, without the parser's check
        open_database(tmp_path / "nope")


def test_the_stores_own_network_searches_it_symmetrically(store, teacher, synth_root, tmp_path):
    """A std run recorded --teacher's default (vgg16) as its teacher: querying a store with the
    network that encoded it was refused ('index the database with that teacher')."""
    from aml.networks.fingerprint import network_fingerprint
    from aml.search import check_teacher

    assert "teacher" not in load_checkpoint(teacher[0])["meta"]  # the std teacher records none
    query = sorted((synth_root / "test" / "synth-oxford" / "jpg").glob("*query*.jpg"))[0]
    hits = search_cli.main(["query", str(query), "--store", str(store), "--network", str(teacher[0]), "-k", "1"]
                           + COMMON)
    assert hits[0]["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    earlier = load_network(teacher[0])
    earlier.meta["teacher"] = "vgg16"  # as a std run of an earlier aml recorded it, in the store's network too
    settings = {"dim": 512, "network": "model_epoch3", "source": "x", "fingerprint": network_fingerprint(earlier)}
    database = SearchDatabase(tmp_path, np.zeros((512, 1), np.float32), ["a.jpg"], settings)
    check_teacher(database, earlier)
    database.settings["fingerprint"] = "0" * 16  # another network's store: the recorded teacher counts again
    with pytest.raises(StoreError, match="not by the student's teacher vgg16"):
        check_teacher(database, earlier)


def test_the_stores_own_network_exported_searches_it(tmp_path, monkeypatch):
    """export --store of a store's own (std) network passed check_teacher, then query --onnx
    refused the file: it records no teacher."""
    from aml.descriptors.onnx_student import OnnxStudentInfo
    from aml.search import check_onnx_student
    from aml.search import query as search_query

    settings = {"dim": 512, "network": "teacher", "source": "teacher.pth.tar", "fingerprint": "f" * 16,
                "scales": [1]}
    database = SearchDatabase(tmp_path, np.zeros((512, 1), np.float32), ["a.jpg"], settings)
    own = OnnxStudentInfo("teacher", "f" * 16, None, None, 512, None)
    monkeypatch.setattr(search_query, "read_onnx_metadata", lambda path: own)
    assert check_onnx_student(database, "teacher.onnx") is own
    settings["scales"] = [1, 0.5]  # what the graph cannot encode is refused still
    with pytest.raises(StoreError, match="encoded at scales"):
        check_onnx_student(database, "teacher.onnx")
    settings.update(scales=[1], fingerprint="0" * 16)  # another store: a file without a teacher is refused
    with pytest.raises(StoreError, match="does not record its teacher"):
        check_onnx_student(database, "teacher.onnx")


def test_ivfpq_of_too_few_images_is_refused(tmp_path):
    store = SearchDatabase(tmp_path, np.eye(8, 100, dtype=np.float32), [f"{i}.jpg" for i in range(100)], {"dim": 8})
    with pytest.raises(StoreError, match=r"--ivfpq 2,2 needs at least 256 database images \(8-bit codes\); the store has 100"):
        build_ivfpq(store, nlist=2, m=2)


@pytest.mark.parametrize("reranking", [Reranking(qe=2), Reranking(superglobal=SuperGlobal())])
def test_a_store_is_not_built_with_a_query_side_reranking(reranking, tmp_path):
    """build_store took a Reranking and used its DBA only: αQE or SuperGlobal asked of an indexing did nothing."""
    from aml.networks.loading import LoadedNetwork
    from aml.search import build_store

    teacher = LoadedNetwork.in_memory(build_network("resnet18", pretrained=False), "t")
    with pytest.raises(StoreError, match="re-rank each search"):
        build_store(teacher, ["a.jpg", "b.jpg"], tmp_path / "store", 64, reranking=reranking)
    assert not (tmp_path / "store").exists()


def test_a_bare_network_no_images_or_a_bad_image_size_is_refused_before_indexing(tmp_path):
    """A bare network was an AttributeError ('no attribute net'), no images "give --dba -1 or
    less", an image size of 0 a damaged manifest."""
    from aml.networks.loading import LoadedNetwork
    from aml.search import build_store
    from aml.utils.errors import ConfigError

    net = build_network("resnet18", pretrained=False)
    with pytest.raises(ConfigError, match=r"teacher must be a LoadedNetwork .* LoadedNetwork.in_memory\(net, name\)"):
        build_store(net, ["a.jpg"], tmp_path / "store", 64)
    teacher = LoadedNetwork.in_memory(net, "t")
    with pytest.raises(StoreError, match="no images to index"):
        build_store(teacher, [], tmp_path / "store", 64)
    with pytest.raises(StoreError, match=r"image size 0: a store's images are shrunk to a whole number of pixels"):
        build_store(teacher, ["a.jpg"], tmp_path / "store", 0)
    with pytest.raises(ConfigError, match=r"got one str \('a.jpg'\)"):
        build_store(teacher, "a.jpg", tmp_path / "store", 64)
    assert not (tmp_path / "store").exists()
    from aml.search import query_database

    database = SearchDatabase(tmp_path, np.eye(512, 3, dtype=np.float32), ["0.jpg", "1.jpg", "2.jpg"], {"dim": 512})
    with pytest.raises(StoreError, match=r"k -1: the results per query are a whole number > 0"):  # numpy's error
        query_database(database, net, ["a.jpg"], k=-1)
    with pytest.raises(StoreError, match="no images to index"):  # numpy's paths too ("truth value ... ambiguous")
        build_store(teacher, np.array([], dtype=str), tmp_path / "store", 64)
    with pytest.raises(StoreError, match="re-rank each search"):  # a folder's glob() is taken as its list
        build_store(teacher, (p for p in ["a.jpg", "b.jpg"]), tmp_path / "store", 64, reranking=Reranking(qe=2))


def test_ivfpq_reports_recall_against_exact_search(tmp_path):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(64, 20))
    vecs = (centres[:, rng.integers(0, 20, 3000)] + 0.3 * rng.normal(size=(64, 3000))).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=0)
    coarse = build_ivfpq(SearchDatabase(tmp_path, vecs, [f"{i}.jpg" for i in range(3000)], {"dim": 64}), nlist=16, m=8)
    store = SearchDatabase(tmp_path, vecs, [f"{i}.jpg" for i in range(3000)], {"dim": 64})
    recall = build_ivfpq(store, nlist=16, m=32)  # measured: 0.26 with 8 sub-quantisers, 0.69 with 32
    assert 0 < coarse < recall - 0.2 and recall <= 1.0 and (tmp_path / "index.faiss").is_file()
    scores, indices = store.search(vecs[:, :5], 3)
    assert indices.shape == (5, 3) and np.all(scores[:, 0] >= scores[:, 1])
    with pytest.raises(StoreError, match="not a multiple"):
        build_ivfpq(store, nlist=16, m=7)


def test_an_index_written_on_a_real_full_disk_is_named_in_one_line(small_disk):
    """faiss's own writer reported a full disk as a RuntimeError without an errno: a traceback."""
    from aml.search.faiss_index import faiss_or_none, train_ivfpq, write_index
    from aml.utils.atomic import DiskFull
    from tests.conftest import fill_disk

    if faiss_or_none() is None:
        pytest.skip("faiss is not installed")
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(64, 3000)).astype(np.float32)
    index, _ = train_ivfpq(vecs / np.linalg.norm(vecs, axis=0), nlist=16, m=8, k=1)
    disk = small_disk(1)
    fill_disk(disk, 8 << 10)
    with pytest.raises(DiskFull, match=f"no space left on the device for {disk / 'index.faiss'}"):
        write_index(index, disk / "index.faiss")
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]


def test_ivfpq_recall_is_of_queries_the_index_does_not_hold():
    """The recall was of database columns searched in an index that held them: each found
    itself (recall@1 of 1.0 on random descriptors whose true nearest neighbour it finds 1 time
    in 5); the index still holds every column, in order."""
    from aml.search.faiss_index import train_ivfpq

    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(64, 3000)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=0)
    index, recall = train_ivfpq(vecs, nlist=16, m=8, k=1)
    _, found = index.search(np.ascontiguousarray(vecs[:, :200].T), 1)
    assert np.mean(found[:, 0] == np.arange(200)) > 0.95 and index.ntotal == 3000
    assert 0.05 < recall < 0.5  # measured: 0.195


def test_equal_scores_of_an_ivfpq_search_come_in_the_stores_order(tmp_path):
    """Only exact search put ties in the store's order: IVF-PQ returned identical copies (near-
    duplicate photos share PQ codes) as faiss left them, and αQE and SuperGlobal took them so."""
    rng = np.random.default_rng(3)
    vecs = rng.normal(size=(16, 600)).astype(np.float32)
    vecs[:, ::100] = vecs[:, :1]  # six copies: columns 0, 100, ..., 500
    vecs /= np.linalg.norm(vecs, axis=0)
    store = SearchDatabase(tmp_path, vecs, [f"{i}.jpg" for i in range(600)], {"dim": 16})
    exact = store.search(vecs[:, :1], 6)[1]
    build_ivfpq(store, nlist=8, m=4, nprobe=8)
    indexed = SearchDatabase(tmp_path, vecs, [f"{i}.jpg" for i in range(600)], {"dim": 16, "files": None})
    found = indexed.search(vecs[:, :1], 3)[1]
    assert exact.tolist() == [[0, 100, 200, 300, 400, 500]] and found.tolist() == [[0, 100, 200]]


def test_a_search_asking_for_another_dba_than_the_stores_is_refused(tmp_path):
    """DBA is applied when a store is indexed: ``Reranking(dba=3)`` on a store indexed without it
    searched with no DBA, without a word."""
    vecs = np.eye(16, 40, dtype=np.float32)
    names = [f"{i}.jpg" for i in range(40)]
    with pytest.raises(StoreError, match=r"DBA of 3 neighbours \(alpha 3\): the store .* was indexed with no DBA, "
                                         r".* index it "
                                         r"again with --dba 3"):
        SearchDatabase(tmp_path, vecs, names, {"dim": 16}).search(vecs[:, :2], 5, reranking=Reranking(dba=3))
    augmented = SearchDatabase(tmp_path, vecs, names, {"dim": 16, "dba": {"k": 3, "alpha": 3.0}})
    assert augmented.search(vecs[:, :2], 5, reranking=Reranking(dba=3))[1].shape == (2, 5)
    with pytest.raises(StoreError, match=r"was indexed with --dba 3"):
        augmented.search(vecs[:, :2], 5, reranking=Reranking(dba=2))
    with pytest.raises(StoreError, match=r"DBA of 3 neighbours \(alpha 0\): .* indexed with --dba 3 --dba-alpha 3"):
        augmented.search(vecs[:, :2], 5, reranking=Reranking(dba=3, dba_alpha=0))  # was searched as the store's


def test_an_ivfpq_index_of_a_store_indexed_again_with_the_same_images_is_refused(tmp_path):
    """Indexed again with the same images and teacher but another DBA or whitening, a store
    has the same manifest.json: an index trained on the database opened before was recorded
    in the new store, and answered its searches with the old descriptors."""
    from aml.utils.atomic import folder_identity

    folder = tmp_path / "store"
    folder.mkdir()
    vecs = np.random.default_rng(2).normal(size=(16, 300)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=0)
    opened = SearchDatabase(folder, vecs, [f"{i}.jpg" for i in range(300)], {"dim": 16},
                            identity=folder_identity(folder))
    folder.rename(tmp_path / "old")  # what an indexing does: its new folder renamed into place
    folder.mkdir()
    with pytest.raises(StoreError, match="was indexed again since it was opened"):
        build_ivfpq(opened, nlist=4, m=4)
    assert not (folder / "index.faiss").exists()


def test_an_ivfpq_index_and_its_record_are_written_under_the_stores_lock(tmp_path, monkeypatch):
    """Two builds at once would otherwise record one's sha256 with the other's settings; and
    the lock is the one an indexing of the store holds (beside it): a build took another, and
    an indexing published meanwhile got the old descriptors' index in its new store."""
    from aml.search import database as search_database
    from aml.utils.atomic import FolderInUse, folder_lock

    vecs = np.random.default_rng(2).normal(size=(16, 300)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=0)
    (tmp_path / "search.json").write_text(json.dumps({"source": "t", "files": {}}))
    held = []
    real_write, real_record = search_database.write_index, search_database._record_index

    def probe(real):
        def call(*args):
            with pytest.raises(FolderInUse), folder_lock(tmp_path, beside=True):  # as build_store takes it
                pass
            held.append(real.__name__)
            return real(*args)
        return call

    monkeypatch.setattr(search_database, "write_index", probe(real_write))
    monkeypatch.setattr(search_database, "_record_index", probe(real_record))
    build_ivfpq(SearchDatabase(tmp_path, vecs, [f"{i}.jpg" for i in range(300)], {"dim": 16}), nlist=4, m=4)
    assert held == ["write_index", "_record_index"]
    record = json.loads((tmp_path / "search.json").read_text())
    assert record["ivfpq"]["nlist"] == 4 and len(record["files"]["index.faiss"]) == 64


def test_an_ivfpq_build_stopped_between_its_writes_leaves_the_store_searchable(tmp_path, monkeypatch):
    """The index was written, then search.json recorded it: a stop between the two (a full disk,
    a kill) left an index that search.json did not list, or listed one that was not there, and
    the store refused to open until it was indexed again (hours for a million images)."""
    from aml.search import database as search_database
    from aml.search.store import _verify_files

    vecs = np.random.default_rng(2).normal(size=(16, 300)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=0)
    images = [f"{i}.jpg" for i in range(300)]
    (tmp_path / "search.json").write_text(json.dumps({"source": "t", "files": {}}))

    def stop(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(search_database, "_record_index", stop)  # stopped before the record
    with pytest.raises(KeyboardInterrupt):
        build_ivfpq(SearchDatabase(tmp_path, vecs, images, {"dim": 16}), nlist=4, m=4)
    listed = json.loads((tmp_path / "search.json").read_text())["files"]
    assert listed == {} and not (tmp_path / "index.faiss").exists()
    _verify_files(tmp_path, {"files": listed})  # the store as it was: searched exactly
    monkeypatch.undo()
    real_replace = os.replace

    def stop_at_the_index(source, target):  # the atomic writes' own renames go through
        if Path(target).name == "index.faiss":
            raise KeyboardInterrupt
        return real_replace(source, target)

    monkeypatch.setattr(os, "replace", stop_at_the_index)  # stopped after the record, before the rename
    with pytest.raises(KeyboardInterrupt):
        build_ivfpq(SearchDatabase(tmp_path, vecs, images, {"dim": 16}), nlist=4, m=4)
    monkeypatch.undo()
    listed = json.loads((tmp_path / "search.json").read_text())["files"]
    assert not (tmp_path / "index.faiss").exists() and search_database.index_path(tmp_path, listed["index.faiss"]).is_file()
    _verify_files(tmp_path, {"files": listed})
    opened = SearchDatabase(tmp_path, vecs, images, {"dim": 16, "files": listed})
    found = opened.search(vecs[:, :3], 5)[1]
    assert hasattr(opened.index, "nprobe") and found[:, 0].tolist() == [0, 1, 2]  # the recorded index, used
    build_ivfpq(SearchDatabase(tmp_path, vecs, images, {"dim": 16}), nlist=4, m=4)  # the next build completes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.faiss", "search.json"]


def test_exact_search_without_faiss_is_the_same(tmp_path, monkeypatch):
    from aml.search import faiss_index

    pytest.importorskip("faiss")
    rng = np.random.default_rng(1)
    vecs = rng.normal(size=(16, 50)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=0)
    first = SearchDatabase(tmp_path, vecs, [str(i) for i in range(50)], {"dim": 16})
    with_faiss = first.search(vecs[:, :4], 5)
    assert first.index.flat is not None  # faiss answered
    monkeypatch.setattr(faiss_index, "faiss_or_none", lambda: None)
    store = SearchDatabase(tmp_path, vecs, [str(i) for i in range(50)], {"dim": 16})
    without = store.search(vecs[:, :4], 5)
    assert store.index.flat is None  # torch's product answered
    assert np.array_equal(with_faiss[1], without[1]) and np.allclose(with_faiss[0], without[0], atol=1e-5)


def test_the_readme_flow_with_the_exported_student(store, teacher, synth_root, tmp_path):
    """Export the student, encode a query with onnxruntime as docs/search-export.md shows, search the
    teacher's store: the same answer as the command line with the PyTorch student."""
    import onnxruntime
    from PIL import Image

    from aml.cli import export as export_cli

    files = export_cli.main(["--network", str(teacher[1]), "--out", str(tmp_path / "deploy")])
    query = str(sorted((synth_root / "test" / "synth-oxford" / "jpg").glob("*query*.jpg"))[0])
    out = tmp_path / "cli.json"
    search_cli.main(["query", query, "--store", str(store), "--network", str(teacher[1]), "-k", "5", "--json",
                     str(out), "--data-root", str(synth_root)] + COMMON)
    expected = [hit["image"] for hit in json.loads(out.read_text())[0]["results"]]
    session = onnxruntime.InferenceSession(str(files["onnx"]))
    image = Image.open(query).convert("RGB")
    image.thumbnail((64, 64), Image.Resampling.LANCZOS)
    x = np.asarray(image, dtype=np.float32).transpose(2, 0, 1)[None] / 255
    descriptor = session.run(None, {"image": x})[0].T
    opened = open_database(store)
    scores, indices = opened.search(descriptor, k=5)
    assert [opened.images[i] for i in indices[0]] == expected


def test_teacher_check_by_name_when_the_checkpoint_is_elsewhere(tmp_path, caplog):
    from aml.search import check_teacher

    store = SearchDatabase(tmp_path, np.zeros((512, 1), np.float32), ["a.jpg"], {"dim": 512, "network": "model_epoch2",
                                                                       "source": "x", "fingerprint": "f"})
    student = build_network("resnet18", pretrained=False)
    student.meta["teacher"] = "/elsewhere/run/model_epoch2.pth.tar"
    check_teacher(store, student, None, None)
    assert "checked against the teacher /elsewhere/run/model_epoch2.pth.tar by its file name only" in caplog.text
    student.meta["teacher"] = "/elsewhere/run/model_best.pth.tar"
    with pytest.raises(StoreError, match="not by the student's teacher"):
        check_teacher(store, student, None, None)
    student.meta["teacher"] = "vgg16"
    store.settings["network"] = "retrievalSfM120k-vgg16-gem"
    check_teacher(store, student, None, None)


def test_teacher_check_by_the_fingerprint_training_recorded(tmp_path):
    """Two runs' model_best.pth.tar share a file name: a student trained with one of them
    passed the check against a store of the other wherever neither file was at hand."""
    from aml.search import check_teacher

    store = SearchDatabase(tmp_path, np.zeros((512, 1), np.float32), ["a.jpg"], {"dim": 512, "network": "model_best",
                                                                       "source": "runs/B/model_best.pth.tar",
                                                                       "fingerprint": "b" * 16})
    trained = build_network("resnet18", pretrained=False)
    trained.meta.update(teacher="runs/A/model_best.pth.tar", teacher_fingerprint="a" * 16)
    student = load_network(save_checkpoint(checkpoint_state(trained, 1, 0.0), tmp_path / "student.pth.tar"))
    assert student.meta["teacher_fingerprint"] == "a" * 16  # kept by the checkpoint's reader
    with pytest.raises(StoreError, match=r"encoded by model_best \(runs/B/model_best.pth.tar, weights bbbbbbbb\), not "
                                         r"by the student's teacher runs/A/model_best.pth.tar \(weights aaaaaaaa\)"):
        check_teacher(store, student, None, None)
    student.meta["teacher_fingerprint"] = "b" * 16
    check_teacher(store, student, None, None)
    with pytest.raises(StoreError, match="not by the student's teacher vgg16"):  # a teacher given: that one counts
        check_teacher(store, student, "vgg16", None)


def test_a_teacher_given_with_other_weights_than_the_student_was_trained_against_is_warned_of(tmp_path, caplog):
    """The recorded weights counted only when --teacher was spelt as the checkpoint records it:
    teacher.pth.tar replaced by a retrained one, then given as ./teacher.pth.tar, took the
    student's queries into the new teacher's store without a word (test.py warns)."""
    from aml.search import check_teacher

    retrained = build_network("resnet18", pretrained=False)
    path = save_checkpoint(checkpoint_state(retrained, 1, 0.0), tmp_path / "teacher.pth.tar")
    store = SearchDatabase(tmp_path, np.zeros((512, 1), np.float32), ["a.jpg"],
                           {"dim": 512, "network": "teacher", "source": str(path),
                            "fingerprint": network_fingerprint(load_network(path))})
    student = build_network("mobilenet_v2", pretrained=False, teacher_dim=512)
    student.meta.update(teacher=str(path), teacher_fingerprint="a" * 16)  # trained against the file's old weights
    with pytest.raises(StoreError, match=r"not by the student's teacher .*teacher.pth.tar \(weights aaaaaaaa\)"):
        check_teacher(store, student, None, None)
    with caplog.at_level("WARNING", logger="aml.search.query"):
        check_teacher(store, student, f"{tmp_path}/./teacher.pth.tar", None)
    assert "the student was trained against other teacher weights (aaaaaaaa) than those of --teacher" in caplog.text
    assert "the results measure how compatible the two are" in caplog.text


def test_indexing_again_into_a_store_drops_its_old_whitening_and_index(teacher, synth_root, tmp_path, monkeypatch):
    test = synth_root / "test"
    flags = ["--store", str(tmp_path), "--teacher", str(teacher[0]), "-imsize", "64", "--data-root", str(synth_root)]
    search_cli.main(["index", str(test / "synth-paris" / "jpg"), *flags, "-w", "synth-sfm"] + COMMON)
    old = open_database(tmp_path)  # with an IVF-PQ index (8-bit codes need 256 vectors: more than synth-paris has)
    build_ivfpq(SearchDatabase(tmp_path, np.tile(old.vecs, 2), old.images * 2, old.settings), nlist=4, m=8)
    assert (tmp_path / "index.faiss").is_file() and (tmp_path / "whitening.pth").is_file()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(SystemExit, match=rf"{tmp_path} holds a store that differs from this indexing \(\d+ images by "
                                         r".* at 64 px\): other images \(it holds \d+\); indexing "
                                         r"would replace it: give another --store, or --replace to replace it"):
        search_cli.main(["index", str(test / "synth-oxford" / "jpg"), *flags] + COMMON)  # a mistyped --store, say
    with monkeypatch.context() as patched:  # refused before the whitening is learned
        patched.setattr(search_cli, "get_whitening", lambda *a: pytest.fail("the whitening was learned first"))
        with pytest.raises(SystemExit, match=r"at 48 px\): image size 64; indexing would replace it"):
            search_cli.main(["index", str(test / "synth-paris" / "jpg"), *flags[:4], "-imsize", "48", *flags[6:],
                             "-w", "synth-sfm"] + COMMON)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    search_cli.main(["index", str(test / "synth-oxford" / "jpg"), *flags, "--replace"] + COMMON)
    assert not (tmp_path / "index.faiss").exists() and not (tmp_path / "whitening.pth").exists()
    listing = tmp_path.with_name(tmp_path.name + "-list.txt")  # the same images in another order: no --replace
    listing.write_text("\n".join(str(p) for p in sorted((test / "synth-oxford" / "jpg").glob("*.jpg"), reverse=True)))
    search_cli.main(["index", str(listing), *flags] + COMMON)
    assert open_database(tmp_path).images[0].endswith(sorted((test / "synth-oxford" / "jpg").glob("*.jpg"))[-1].name)
    image = sorted((test / "synth-oxford" / "jpg").glob("*.jpg"))[3]
    out = tmp_path.with_name(tmp_path.name + "-answer.json")  # beside the store: in it, the next index refuses it
    search_cli.main(["query", str(image), "--store", str(tmp_path), "--network", str(teacher[1]), "-k", "3",
                     "--json", str(out), "--data-root", str(synth_root)] + COMMON)
    top = json.loads(out.read_text())[0]["results"][0]
    assert Path(top["image"]) == image.resolve() and top["score"] == pytest.approx(1.0, abs=1e-4)


def legacy_store(folder: Path, images, vecs) -> Path:
    """A store of the one-file layout that aml.search wrote before it wrote shards."""
    settings = {"network": "t", "source": "t.pth", "fingerprint": "0", "image_size": 64, "scales": [1.0],
                "dim": vecs.shape[0]}
    write_feature_file(vecs, images, folder / "descriptors.npy", settings)
    return folder


def test_a_store_of_the_one_file_layout_is_read_and_indexing_replaces_it(teacher, synth_root, tmp_path):
    vecs = np.random.default_rng(0).standard_normal((8, 5)).astype(np.float32)
    opened = open_database(legacy_store(tmp_path, [f"{i}.jpg" for i in range(5)], vecs))
    assert opened.images[2] == "2.jpg" and np.array_equal(opened.vecs, vecs) and opened.settings["dim"] == 8
    search_cli.main(["index", str(synth_root / "test" / "synth-paris" / "jpg"), "--store", str(tmp_path),
                     "--teacher", str(teacher[0]), "-imsize", "64", "--data-root", str(synth_root)] + COMMON)
    assert not any((tmp_path / name).exists() for name in search_store.LEGACY_FILES)
    assert open_database(tmp_path).vecs.shape[0] == 512


def test_an_interrupted_indexing_resumes_at_its_missing_shard(teacher, synth_root, tmp_path, monkeypatch):
    """The store is built beside the old one, which queries find whole until the new one is renamed into place."""
    from aml.descriptors import store as descriptor_store

    import shutil

    monkeypatch.setattr(search_store, "SHARD_SIZE", 8)
    photos = tmp_path / "photos"  # 5 shards
    photos.mkdir()
    for image in sorted((synth_root / "test" / "synth-paris" / "jpg").glob("*.jpg"))[:40]:
        shutil.copy(image, photos / image.name)
    store, staging = tmp_path / "store", tmp_path / ".store.indexing"
    flags = [str(photos), "--store", str(store), "--teacher", str(teacher[0]), "-imsize", "64", "--data-root",
             str(synth_root)] + COMMON
    search_cli.main(["index", *flags])
    complete = open_database(store)
    before = {p.name: p.read_bytes() for p in store.iterdir()}
    shards = len(list(store.glob("shard_*.npy")))
    assert shards == 5
    encoded, encode = [], descriptor_store.describe_images

    def interrupted_after(count):
        def describe(net, images, *args, **kwargs):
            if len(encoded) == count:
                raise KeyboardInterrupt
            encoded.append(images)
            return encode(net, images, *args, **kwargs)
        return describe

    monkeypatch.setattr(descriptor_store, "describe_images", interrupted_after(2))
    with pytest.raises(KeyboardInterrupt):
        search_cli.main(["index", *flags])
    assert {p.name: p.read_bytes() for p in store.iterdir()} == before  # the old store, untouched meanwhile
    assert len(list(staging.glob("shard_*.npy"))) == 2
    encoded.clear()
    monkeypatch.setattr(descriptor_store, "describe_images", interrupted_after(None))
    search_cli.main(["index", *flags])
    assert len(encoded) == shards - 2 and not staging.exists()  # only the missing shards
    np.testing.assert_allclose(open_database(store).vecs, complete.vecs, atol=1e-6)
    encoded.clear()
    search_cli.main(["index", *flags])  # a complete store indexed again: every shard encoded again
    assert len(encoded) == shards


def test_an_interrupted_indexing_of_the_same_files_under_other_paths_is_not_resumed(teacher, synth_root, tmp_path,
                                                                                    monkeypatch):
    """An indexing interrupted in folder A, then one of the same photos moved to B: its staged
    list was kept as "the same images moved", and the published store answered with A's paths,
    where no file was."""
    import shutil

    from aml.descriptors import store as descriptor_store

    monkeypatch.setattr(search_store, "SHARD_SIZE", 8)
    photos = tmp_path / "A"
    photos.mkdir()
    for image in sorted((synth_root / "test" / "synth-paris" / "jpg").glob("*.jpg"))[:20]:
        shutil.copy(image, photos / image.name)
    encode, calls = descriptor_store.describe_images, []

    def interrupted(net, images, *args, **kwargs):
        if calls:
            raise KeyboardInterrupt
        calls.append(images)
        return encode(net, images, *args, **kwargs)

    flags = ["--store", str(tmp_path / "store"), "--teacher", str(teacher[0]), "-imsize", "64",
             "--data-root", str(synth_root)] + COMMON
    monkeypatch.setattr(descriptor_store, "describe_images", interrupted)
    with pytest.raises(KeyboardInterrupt):
        search_cli.main(["index", str(photos), *flags])
    photos.rename(tmp_path / "B")
    monkeypatch.setattr(descriptor_store, "describe_images", encode)
    search_cli.main(["index", str(tmp_path / "B"), *flags])
    images = open_database(tmp_path / "store").images
    assert len(images) == 20 and all(image.startswith(str(tmp_path / "B")) for image in images)


def test_an_index_or_whitening_of_another_store_is_refused(tmp_path):
    vecs = np.random.default_rng(0).standard_normal((8, 300)).astype(np.float32)
    legacy_store(tmp_path, [f"{i}.jpg" for i in range(300)], vecs)
    settings = open_database(tmp_path).settings
    save_plain_file({"m": np.zeros((4, 1)), "P": np.eye(4)}, tmp_path / "whitening.pth")
    with pytest.raises(StoreError, match=r"whitening.pth: m of shape \(4, 1\) and P of shape \(4, 4\) do not whiten 8-d"):
        open_database(tmp_path)
    (tmp_path / "whitening.pth").unlink()
    other = SearchDatabase(tmp_path, np.tile(vecs, 2), [f"{i}.jpg" for i in range(600)], settings)
    build_ivfpq(other, nlist=2, m=2, sample=10)
    with pytest.raises(StoreError, match=r"index.faiss indexes 600 vectors of 8 dimensions but the store holds 300"):
        open_database(tmp_path).search(vecs[:, :1], 3)


def _edit_manifest(folder: Path, **changes):
    """A manifest as aml wrote it before it recorded hashes (no digest, no shard hashes), with ``changes``."""
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.update(changes)
    skipped = ("digest", "shard_sha256")
    (folder / "manifest.json").write_text(json.dumps({k: v for k, v in manifest.items()
                                                     if v is not None and k not in skipped}))


def _edit_keeping_digest(folder: Path, **changes):
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.update(changes)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _unrecorded(edit):
    """``edit`` of a store whose search.json records no file hashes (indexed by an earlier aml)."""
    def apply(folder: Path):
        record = json.loads((folder / "search.json").read_text())
        record.pop("files")
        (folder / "search.json").write_text(json.dumps(record))
        edit(folder)
    return apply


def _shorter_image_list(folder: Path):
    listing = folder / "images.txt"
    listing.write_text("".join(line + "\n" for line in listing.read_text().splitlines()[:-1]))


def _nan_descriptor(folder: Path):
    vecs = np.load(folder / "shard_00000.npy")
    vecs[3, 0] = np.nan
    np.save(folder / "shard_00000.npy", vecs)


def _foreign_shard(folder: Path):
    """The shard of another store with the same settings: same shape, other rows."""
    np.save(folder / "shard_00000.npy", np.roll(np.load(folder / "shard_00000.npy"), 1, axis=0))


def _garbage(name: str):
    return lambda folder: (folder / name).write_bytes(np.random.default_rng(0).bytes(4096))


def _nan_whitening(folder: Path):
    P = np.eye(512)
    P[7, 3] = np.nan
    save_plain_file({"m": np.zeros((512, 1)), "P": P}, folder / "whitening.pth")


def _huge(name):
    """Make a store's small file a sparse terabyte (refused unread: reading it would take the memory)."""

    def edit(folder):
        with open(folder / name, "ab") as out:
            out.truncate(1 << 40)

    return edit


TAMPERING = {
    "shard-header": (lambda f: (f / "shard_00000.npy").write_bytes(b"\0" * (f / "shard_00000.npy").stat().st_size),
                     r"shard_00000.npy is not a readable .npy array"),
    "missing-shard": (lambda f: (f / "shard_00000.npy").unlink(), r"lacks 1 of 1 shards .* run the same"),
    "nan": (_nan_descriptor, r"shard_00000.npy is not the shard this store wrote"),
    "nan-unverified": (lambda f: (_edit_manifest(f), _nan_descriptor(f)), r"holds NaN or infinite values"),
    "foreign-shard": (_foreign_shard, r"shard_00000.npy is not the shard this store wrote .* copied from another "
                                      r"store; index it again"),
    "image-list": (_shorter_image_list, r"was made for other descriptors \(count"),
    "dim": (lambda f: _edit_manifest(f, dim=7), r"the manifest says \d+ x 7 float32"),
    "manifest": (lambda f: _edit_manifest(f, fingerprint=None), r"manifest.json has no fingerprint or image_size"),
    "edited-scales": (lambda f: _edit_keeping_digest(f, scales=[1, 0.5]),
                      r"manifest.json was edited after aml wrote it .*; index it again"),
    "search": (lambda f: (f / "search.json").unlink(), r"has no search.json: it is not a search store .*into another folder"),
    "search-edited": (lambda f: (f / "search.json").write_text('{"source": 5}'), r"search.json: source: must be a"),
    "manifest-huge": (_huge("manifest.json"), r"cannot read .*manifest.json .*larger than 256 MB or has no end"),
    "search-huge": (_huge("search.json"), r"cannot read .*search.json .*larger than 256 MB or has no end"),
    "stray-index": (_garbage("index.faiss"), r"index.faiss was not written by this store's indexing"),
    "index": (_unrecorded(_garbage("index.faiss")), r"cannot read .*index.faiss"),
    "whitening": (_unrecorded(_garbage("whitening.pth")), r"cannot read .*whitening.pth"),
    "whitening-1d": (_unrecorded(lambda f: save_plain_file({"m": np.zeros(512), "P": np.zeros(512)},
                                                           f / "whitening.pth")),
                     r"whitening.pth: m of shape \(512,\) and P of shape \(512,\) do not whiten"),
    "whitening-nan": (_unrecorded(_nan_whitening), r"whitening.pth holds 1 NaN or infinite values"),
}


@pytest.mark.parametrize("tamper", list(TAMPERING))
def test_a_damaged_or_edited_store_is_named_with_the_fix(store, tmp_path, tamper):
    """What an AssertionError, IndexError or faiss RuntimeError was: one StoreError or
    CheckpointError (one line from the command) naming the file and how to rebuild it."""
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    edit, message = TAMPERING[tamper]
    edit(copy)
    with pytest.raises((StoreError, CheckpointError), match=message):
        opened = open_database(copy)
        opened.search(opened.vecs[:, :2], 3)


def test_index_with_dba_and_query_with_qe(random_teacher, synth_root, tmp_path):
    from aml.evaluation import alpha_query_expansion, database_augmentation

    teacher, student = random_teacher
    jpg = synth_root / "test" / "synth-paris" / "jpg"
    flags = ["--teacher", str(teacher), "-imsize", "64", "--data-root", str(synth_root), "-w", "synth-sfm"] + COMMON
    search_cli.main(["index", str(jpg), "--store", str(tmp_path / "plain")] + flags)
    search_cli.main(["index", str(jpg), "--store", str(tmp_path / "dba"), "--dba", "3", "--dba-alpha", "1"] + flags)
    record = json.loads((tmp_path / "plain" / "search.json").read_text())
    assert record["source"] == str(teacher) and "dba" not in record and list(record["files"]) == ["whitening.pth"]
    assert not (tmp_path / "plain" / "dba.npy").exists()  # a store indexed without DBA is as before
    assert json.loads((tmp_path / "dba" / "search.json").read_text())["dba"] == {"k": 3, "alpha": 1.0}
    plain, augmented = open_database(tmp_path / "plain"), open_database(tmp_path / "dba")
    assert augmented.settings["dba"] == {"k": 3, "alpha": 1.0} and "dba" not in plain.settings
    np.testing.assert_array_equal(augmented.vecs, database_augmentation(plain.vecs, 3, alpha=1))  # whitened, then DBA

    query = sorted(jpg.glob("*query*.jpg"))[0]
    out = tmp_path / "hits.json"
    search_cli.main(["query", str(query), "--store", str(tmp_path / "dba"), "--network", str(student), "-k", "4",
                     "--qe", "2", "--json", str(out), "--data-root", str(synth_root)] + COMMON)
    hits = json.loads(out.read_text())[0]["results"]
    # the same steps by hand: the student's whitened query, its 2 first neighbours, αQE, exact search
    q = describe_images(load_network(student), [str(query)], 64, config=ExtractionConfig(workers=0))
    q = whitenapply(q, *augmented.whitening)
    expanded = alpha_query_expansion(q, augmented.vecs, rank_database(augmented.vecs, q), 2, alpha=3)
    top = rank_database(augmented.vecs, expanded)[:4, 0]
    assert [hit["image"] for hit in hits] == [augmented.images[i] for i in top]
    scores = augmented.vecs[:, top].T @ expanded[:, 0]
    assert [hit["score"] for hit in hits] == pytest.approx(scores.tolist(), abs=1e-5)
    # and SuperGlobal's re-ranking of the first 12 results of the expanded query, last
    search_cli.main(["query", str(query), "--store", str(tmp_path / "dba"), "--network", str(student), "-k", "14",
                     "--qe", "2", "--superglobal", "12", "--sg-k", "3", "--json", str(out), "--data-root",
                     str(synth_root)] + COMMON)
    ranks = rank_database(augmented.vecs, expanded)
    reranked = superglobal_rerank(augmented.vecs, expanded, ranks, SuperGlobal(12, 3))[:14, 0]
    assert [hit["image"] for hit in json.loads(out.read_text())[0]["results"]] == [augmented.images[i] for i in reranked]
    assert reranked.tolist() != ranks[:14, 0].tolist() and reranked[12:].tolist() == ranks[12:14, 0].tolist()

    search_cli.main(["index", str(jpg), "--store", str(tmp_path / "dba")] + flags)  # again, without --dba
    assert not (tmp_path / "dba" / "dba.npy").exists() and "dba" not in open_database(tmp_path / "dba").settings


def test_a_store_reads_its_index_once_whatever_its_searches(tmp_path, monkeypatch):
    """αQE and SuperGlobal search three times per query batch: the index file is read, or the
    exact index made over the database, once for the store's life, not once per search."""
    from aml.search import database as database_module

    rng = np.random.default_rng(2)
    vecs = rng.normal(size=(16, 300)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=0)
    images = [f"{i}.jpg" for i in range(300)]
    made, read = [], []
    monkeypatch.setattr(database_module, "ExactIndex", lambda v: made.append(v) or ExactIndex(v))
    reading = database_module.read_index
    monkeypatch.setattr(database_module, "read_index", lambda data: read.append(data) or reading(data))
    reranking = Reranking(qe=2, superglobal=SuperGlobal(m=20, k=3))
    exact = SearchDatabase(tmp_path / "exact", vecs, images, {"dim": 16})
    for _ in range(2):
        exact.search(vecs[:, :4], 10, reranking=reranking)
    assert len(made) == 1 and not read  # no index file: none read
    build_ivfpq(SearchDatabase(tmp_path, vecs, images, {"dim": 16}), nlist=4, m=4)
    approximate = SearchDatabase(tmp_path, vecs, images, {"dim": 16})
    for _ in range(2):
        approximate.search(vecs[:, :4], 10, reranking=reranking)
    assert len(made) == 1 and len(read) == 1 and approximate.index.ntotal == 300


def test_query_expansion_of_a_store_by_hand():
    # database a = (1, 0), b = (0, 1), c = (0.6, 0.8); the query (0.8, 0.6) is nearest to c (0.96), then a (0.8)
    store = SearchDatabase(Path("no/such.store"), np.array([[1.0, 0.0, 0.6], [0.0, 1.0, 0.8]], dtype=np.float32),
                  ["a", "b", "c"], {"dim": 2})
    query = np.array([[0.8], [0.6]], dtype=np.float32)
    expanded = np.array([0.8 + 0.96 * 0.6, 0.6 + 0.96 * 0.8]) / np.hypot(0.8 + 0.96 * 0.6, 0.6 + 0.96 * 0.8)
    scores, indices = store.search(query, k=3, reranking=Reranking(qe=1, qe_alpha=1))
    assert indices[0].tolist() == [2, 0, 1]
    assert scores[0].tolist() == pytest.approx([expanded @ [0.6, 0.8], expanded[0], expanded[1]], abs=1e-6)
    with pytest.raises(StoreError, match="--qe 4: the store no/such.store holds 3 images; give --qe 3 or less"):
        store.search(query, k=1, reranking=Reranking(qe=4))


def test_superglobal_reranks_a_stores_first_results_and_the_rest_follow():
    # a = (1, 0), b = (0.8, 0.6), c = (0, 1), d = (0.6, -0.8); the query (0.7, 0.714) ranks c, b, a, d;
    # SuperGlobal (k = 1, beta = 1) re-ranks the first three b, a, c (tests/evaluation/test_superglobal.py)
    vecs = np.array([[1.0, 0.8, 0.0, 0.6], [0.0, 0.6, 1.0, -0.8]], dtype=np.float32)
    store = SearchDatabase(Path("no/such.store"), vecs, ["a", "b", "c", "d"], {"dim": 2})
    query = np.array([[0.7], [0.714]], dtype=np.float32)
    reranking = Reranking(superglobal=SuperGlobal(m=3, k=1, beta=1.0))
    scores, indices = store.search(query, k=4, reranking=reranking)
    first = superglobal_scores(vecs[:, [2, 1, 0]].T.astype(np.float64), query[:, 0].astype(np.float64), 1, 1.0)
    assert indices[0].tolist() == [1, 0, 2, 3]
    assert scores[0].tolist() == pytest.approx(first[[1, 2, 0]].tolist() + [float(query[:, 0] @ vecs[:, 3])])
    scores, indices = store.search(query, k=2, reranking=reranking)
    assert indices[0].tolist() == [1, 0] and scores[0].tolist() == pytest.approx(first[[1, 2]].tolist())
    with pytest.raises(StoreError, match="--superglobal 5: the store no/such.store holds 4 images; give "
                                         "--superglobal 4 or less"):
        store.search(query, k=1, reranking=Reranking(superglobal=SuperGlobal(m=5)))


@pytest.mark.parametrize("with_faiss", [True, False])
def test_exact_search_puts_equal_scores_in_database_order(with_faiss, monkeypatch):
    """Six copies of one photo: faiss answered [2, 1, 0], torch's topk [3, 5, 4]; the test's
    ranking puts them in database order, and so does the store's search now."""
    from aml.search import faiss_index

    if with_faiss:
        pytest.importorskip("faiss")
    else:
        monkeypatch.setattr(faiss_index, "faiss_or_none", lambda: None)
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(8, 20)).astype(np.float32)
    vecs[:, [3, 7, 8, 11, 15, 16]] = np.abs(vecs[:, [0]]) + 1  # six equal columns, the best for the query
    vecs /= np.linalg.norm(vecs, axis=0)
    query = vecs[:, [3]]
    index = faiss_index.ExactIndex(vecs)
    assert (index.flat is not None) == with_faiss  # the search under test is faiss's, or torch's
    scores, indices = index.search(np.ascontiguousarray(query.T), 6)
    assert indices.tolist() == [[3, 7, 8, 11, 15, 16]] and np.all(scores[0] == scores[0, 0])
    assert index.search(np.ascontiguousarray(query.T), 4)[1].tolist() == [[3, 7, 8, 11]]  # the first of the tie
    # faiss picked any of 6,000 images tied at the k-th score (10 and 11, not the test's 0 and 1)
    a, b = np.eye(8, 2, dtype=np.float32).T
    vecs = np.concatenate([np.tile(b[:, None], 3000), np.tile(a[:, None], 10), np.tile(b[:, None], 3000)], axis=1)
    index = faiss_index.ExactIndex(vecs)
    assert index.search(a[None], 10)[1].tolist() == [list(range(3000, 3010))]
    assert index.search(a[None], 12)[1].tolist() == [list(range(3000, 3010)) + [0, 1]]
    both = index.search(np.stack([b, a]), 12)  # queries widened apart: b ties 6,000 images, a only at its end
    assert both[1].tolist() == [list(range(12)), list(range(3000, 3010)) + [0, 1]]
    assert both[0].tolist() == [[1.0] * 12, [1.0] * 10 + [0.0] * 2]


@pytest.mark.parametrize("edit", ["touched", "replaced keeping its time"])
def test_an_interrupted_indexing_encodes_again_what_was_edited_since(random_teacher, synth_root, tmp_path, monkeypatch,
                                                                     edit):
    """Its shards were kept by the images' paths alone: an image edited before the indexing was
    run again kept its old descriptor in the store; then by modification time alone, which
    ``cp -p`` and ``rsync -t`` carry over from the older copy."""
    from aml.descriptors import store as descriptor_store

    monkeypatch.setattr(search_store, "SHARD_SIZE", 8)
    photos = tmp_path / "photos"
    photos.mkdir()
    for image in sorted((synth_root / "test" / "synth-paris" / "jpg").glob("*.jpg"))[:20]:
        shutil.copy(image, photos / image.name)
    flags = [str(photos), "--store", str(tmp_path / "store"), "--teacher", str(random_teacher[0]), "-imsize", "32",
             "--data-root", str(synth_root)] + COMMON
    encoded, encode = [], descriptor_store.describe_images

    def describe(net, images, *args, **kwargs):
        if interrupt and encoded:
            raise KeyboardInterrupt
        encoded.append(images)
        return encode(net, images, *args, **kwargs)

    monkeypatch.setattr(descriptor_store, "describe_images", describe)
    interrupt = True
    with pytest.raises(KeyboardInterrupt):
        search_cli.main(["index", *flags])
    first = sorted(photos.glob("*.jpg"))[0]
    later = (tmp_path / "store").parent / ".store.indexing" / "shard_00000.npy"
    if edit == "touched":
        os.utime(first, ns=(later.stat().st_mtime_ns + 10**9,) * 2)  # edited after its shard was written
    else:
        time.sleep(0.05)  # past the file system's clock tick
        old = first.stat().st_mtime_ns
        shutil.copyfile(sorted(photos.glob("*.jpg"))[-1], first)  # another photo, with the old one's time (cp -p)
        os.utime(first, ns=(old, old))
    interrupt, encoded[:] = False, []
    search_cli.main(["index", *flags])
    assert len(encoded) == 3  # every shard, not the 2 missing ones


@pytest.mark.parametrize("command", ["search", "export"])
def test_a_published_student_needs_no_teacher_flag_for_its_teachers_store(command, tmp_path, monkeypatch):
    """A published student's checkpoint records no teacher: search query and export --store
    asked for --teacher although the published list names it."""
    from aml.cli import export as export_cli
    from aml.networks import loading

    torch.manual_seed(0)
    published = save_checkpoint(checkpoint_state(build_network("resnet18", pretrained=False), 1, 0.0),
                                tmp_path / "published.pth.tar")
    monkeypatch.setattr(loading, "pretrained_checkpoint", lambda name, data_root=None: published)
    settings = {"dim": 512, "network": "retrievalSfM120k-vgg16-gem", "source": "vgg16", "fingerprint": "f",
                "scales": [1], "image_size": 64}
    whitening = (np.zeros((512, 1)), np.eye(512))
    database = SearchDatabase(tmp_path, np.zeros((512, 1), np.float32), ["a.jpg"], settings, whitening)
    checked = []
    if command == "search":
        from aml.search import query as query_module

        monkeypatch.setattr(search_cli, "open_database", lambda folder: database)
        monkeypatch.setattr(query_module, "describe_images",
                            lambda net, images, *args, **kwargs: checked.append(net) or np.ones((512, len(images))))
        search_cli.main(["query", "q.jpg", "--store", str(tmp_path), "--network", "mobilenet-v2-gem-contr-vgg16"]
                        + COMMON)
    else:
        monkeypatch.setattr(export_cli, "open_database", lambda folder: database)
        monkeypatch.setattr(export_cli, "export_student", lambda net, *args, **kwargs: checked.append(net) or ({}, {}))
        export_cli.main(["--network", "mobilenet-v2-gem-contr-vgg16", "--store", str(tmp_path), "--out",
                         str(tmp_path / "out")])
    assert len(checked) == 1
    settings["network"] = "retrievalSfM120k-resnet101-gem"  # the store of another teacher: still refused
    with pytest.raises(SystemExit) as refused:
        if command == "search":
            search_cli.main(["query", "q.jpg", "--store", str(tmp_path), "--network", "mobilenet-v2-gem-contr-vgg16"]
                            + COMMON)
        else:
            export_cli.main(["--network", "mobilenet-v2-gem-contr-vgg16", "--store", str(tmp_path), "--out",
                             str(tmp_path / "out")])
    said = str(refused.value.code)
    assert "encoded by retrievalSfM120k-resnet101-gem" in said and "not by the student's teacher" in said, said


def test_an_unreadable_query_skipped_gets_no_results(synth_root, tmp_path):
    """With skip_bad, an unreadable query's zero column was searched: the first k database images
    (or, whitened, plausible scores) came back as its answer."""
    from aml.networks.fingerprint import network_fingerprint
    from aml.search import query_database

    torch.manual_seed(0)
    student = build_network("resnet18", pretrained=False).eval()
    jpg = sorted((synth_root / "test" / "synth-oxford" / "jpg").glob("*.jpg"))[:6]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    config = ExtractionConfig(workers=0, device="cpu", progress=False)
    vecs = describe_images(student, [str(p) for p in jpg], 48, (1,), config=config)
    settings = {"dim": 512, "image_size": 48, "scales": [1], "fingerprint": network_fingerprint(student)}
    database = SearchDatabase(tmp_path, vecs, [str(p) for p in jpg], settings)
    results = query_database(database, student, [str(bad), str(jpg[2])], k=3, config=config.but(skip_bad=True))
    assert results[0] == {"query": str(bad), "results": []}
    assert results[1]["query"] == str(jpg[2]) and results[1]["results"][0]["image"] == str(jpg[2])
    assert query_database(database, student, [str(bad)], k=3, config=config.but(skip_bad=True)) == [
        {"query": str(bad), "results": []}]


def test_an_image_changed_after_indexing_is_said_when_the_store_opens(teacher, synth_root, tmp_path, capsys):
    """A file replaced in place was searched by its old descriptor without a word."""
    from PIL import Image

    images = tmp_path / "photos"
    images.mkdir()
    for k in range(3):
        Image.fromarray(np.full((48, 64, 3), 60 * k, np.uint8)).save(images / f"{k}.png")
    search_cli.main(["index", str(images), "--store", str(tmp_path / "store"), "--teacher", str(teacher[0]),
                     "-imsize", "48", "--data-root", str(synth_root)] + COMMON)
    capsys.readouterr()
    open_database(tmp_path / "store")  # the command's logging (to stdout) is in place
    assert "since they were indexed" not in capsys.readouterr().out
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(images / "1.png")
    open_database(tmp_path / "store")
    said = capsys.readouterr().out
    assert "1 of its shards hold images changed, moved or removed since they were indexed (the first: images 1 " \
           f"to 3 of its list; one of {images / '0.png'} and the images after it): searches find them by their old " \
           "descriptors; index the images again" in said
    (images / "2.png").unlink()  # a removed image is named, with the flag its indexing needs
    open_database(tmp_path / "store")
    said = capsys.readouterr().out
    assert f"(the first: images 1 to 3 of its list; {images / '2.png'} is gone)" in said and "with --replace where" in said


def test_query_database_refuses_a_store_of_another_teacher_and_no_results_asked(tmp_path):
    """In Python, query_database searched any store with any student of its dimension (only the
    command line checked the teacher), and SearchDatabase.search gave k=0 no results without a
    word and k=-1 numpy's error."""
    from aml.search import query_database

    student = build_network("resnet18", pretrained=False, teacher="other-teacher.pth.tar", teacher_dim=512).eval()
    settings = {"dim": 512, "network": "teacher", "source": "teacher.pth.tar", "fingerprint": "f",
                "image_size": 48, "scales": [1]}
    database = SearchDatabase(tmp_path, np.eye(512, 3, dtype=np.float32), ["0.jpg", "1.jpg", "2.jpg"], settings)
    with pytest.raises(StoreError, match=r"encoded by teacher, not by the student's teacher other-teacher.pth.tar"):
        query_database(database, student, ["q.jpg"])
    with pytest.raises(StoreError, match=r"encoded by teacher, not by the student's teacher elsewhere/x.pth.tar"):
        query_database(database, student, ["q.jpg"], teacher="elsewhere/x.pth.tar")
    queries = np.eye(512, 1, dtype=np.float32)
    assert database.search(queries, 1)[1].tolist() == [[0]]
    for k in (0, -1, 1.5, True):
        with pytest.raises(StoreError, match=rf"k {k!r}: the results per query are a whole number > 0"):
            database.search(queries, k)


def test_a_loop_of_queries_checks_the_student_once_until_its_weights_change(tmp_path, monkeypatch):
    """query_database hashed the student's weights at every call (7 to 50 ms on a CPU, more than
    a query's encoding on a GPU); the check is kept for the same student, weights and teacher."""
    from aml.networks.fingerprint import network_fingerprint
    from aml.search import query as query_module
    from aml.search import query_database

    student = build_network("resnet18", pretrained=False).eval()
    settings = {"dim": 512, "network": "s", "source": "s.pth", "fingerprint": network_fingerprint(student),
                "image_size": 48, "scales": [1]}
    database = SearchDatabase(tmp_path, np.eye(512, 3, dtype=np.float32), ["0.jpg", "1.jpg", "2.jpg"], settings)
    checks, real = [], query_module.check_teacher
    monkeypatch.setattr(query_module, "check_teacher", lambda *args: checks.append(args) or real(*args))
    monkeypatch.setattr(query_module, "describe_images",
                        lambda net, images, *args, **kwargs: np.eye(512, len(images), dtype=np.float32))
    for _ in range(3):
        query_database(database, student, ["q.jpg"], k=1)
    assert len(checks) == 1
    with torch.no_grad():
        next(student.parameters()).add_(1.0)  # trained on in place: no longer the store's own network
    with pytest.raises(StoreError, match="the student does not record its teacher"):
        query_database(database, student, ["q.jpg"], k=1)
    with pytest.raises(StoreError, match="the student does not record its teacher"):  # another network: checked
        query_database(database, build_network("resnet18", pretrained=False).eval(), ["q.jpg"], k=1)
    assert len(checks) == 3


def test_index_goes_around_unreadable_photos_with_a_flag_and_names_it_without(teacher, synth_root, tmp_path, capsys):
    """One unreadable photo stopped `index` of a folder, with a fix ("re-download it") that does
    not fit a user's own photos and no flag to skip it (only Python's ExtractionConfig had one)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for image in sorted((synth_root / "test" / "synth-paris" / "jpg").glob("*.jpg"))[:6]:
        shutil.copy(image, photos / image.name)
    (photos / "zz.jpg").write_bytes(b"not a jpeg")
    flags = ["--store", str(tmp_path / "store"), "--teacher", str(teacher[0]), "-imsize", "48",
             "--data-root", str(synth_root)] + COMMON
    with pytest.raises(SystemExit, match=r"zz.jpg .*; or leave it out of the images, or index around it with "
                                         r"--skip-bad-images"):
        search_cli.main(["index", str(photos), *flags])
    capsys.readouterr()
    search_cli.main(["index", str(photos), *flags, "--skip-bad-images"])
    out, err = capsys.readouterr()
    assert ">> 6 images indexed by " in out and "; 1 unreadable, never found (listed in" in out
    # the list where it stays, not in the staging folder renamed into the store
    assert f"1 unreadable images skipped, listed in {tmp_path / 'store' / 'skipped.txt'}" in out + err
    assert ".indexing" not in out + err
    database = open_database(tmp_path / "store")
    assert len(database.images) == 6 and str(photos / "zz.jpg") not in database.images


def test_an_ivfpq_search_probes_more_lists_until_each_query_has_k_results(tmp_path, monkeypatch, caplog):
    """A query whose 16 probed lists held 18 images got 18 results for -k 50, without a word."""
    from aml.search import database as database_module

    pytest.importorskip("faiss")
    rng = np.random.default_rng(2)
    vecs = rng.normal(size=(16, 300)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=0)
    images = [f"{i}.jpg" for i in range(300)]
    build_ivfpq(SearchDatabase(tmp_path, vecs, images, {"dim": 16}), nlist=128, m=4)  # about 2 images per list
    store = SearchDatabase(tmp_path, vecs, images, {"dim": 16})
    scores, indices = store.search(vecs[:, :3], k=200)
    assert indices.shape == (3, 200) and (indices >= 0).all() and store.index.nprobe == 16
    assert all(len(set(row)) == 200 for row in indices.tolist())
    # without faiss, the index is not used: searched exactly, said
    monkeypatch.setattr(database_module, "faiss_or_none", lambda: None)
    with caplog.at_level("WARNING", logger="aml.search.database"):
        SearchDatabase(tmp_path, vecs, images, {"dim": 16}).search(vecs[:, :1], k=5)
    assert "holds an IVF-PQ index, but faiss is not installed: the store is searched exactly" in caplog.text


def test_a_small_ivfpq_training_set_is_said_once_not_by_faiss_per_sub_quantiser(tmp_path, capfd, caplog):
    """300 images printed 65 lines of faiss's clustering warnings before aml's own."""
    pytest.importorskip("faiss")
    vecs = np.random.default_rng(3).normal(size=(16, 300)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=0)
    with caplog.at_level("WARNING", logger="aml.search.faiss_index"):
        build_ivfpq(SearchDatabase(tmp_path, vecs, [f"{i}.jpg" for i in range(300)], {"dim": 16}), nlist=16, m=4)
    assert "please provide at least" not in capfd.readouterr().err
    assert caplog.text.count("300 images train the IVF-PQ codebooks (faiss advises 9984 or more") == 1


def test_files_left_out_of_a_folder_by_extension_are_named(tmp_path, caplog):
    """A phone's folder was indexed without its HEIC photos, and without a word."""
    import logging

    from aml.search import list_images

    for name in ("IMG_0001.jpg", "IMG_0002.HEIC", "anim.gif"):
        (tmp_path / name).touch()
    caplog.set_level(logging.WARNING, logger="aml")
    assert [os.path.basename(p) for p in list_images(tmp_path, name_left_out=True)] == ["IMG_0001.jpg"]
    assert f"2 files of {tmp_path} are left out: not images by their extension" in caplog.text
    assert "e.g. IMG_0002.HEIC" in caplog.text


def test_exact_search_without_faiss_copies_nothing_and_scores_a_few_queries_at_a_time(monkeypatch):
    """It made a contiguous copy of the store (a view of rows) and one Q x N score matrix: 16.5 GB
    for 1,000 queries of a 1M x 512 store."""
    from aml.search import faiss_index

    monkeypatch.setattr(faiss_index, "faiss_or_none", lambda: None)
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(300, 16)).astype(np.float32)
    vecs = rows.T  # D x N, as a store holds its descriptors
    queries = np.ascontiguousarray(rng.normal(size=(9, 16)).astype(np.float32))
    whole = faiss_index.ExactIndex(vecs).search(queries, 5)
    monkeypatch.setattr(faiss_index, "SCORE_VALUES", 600)  # two queries' scores at a time
    index = faiss_index.ExactIndex(vecs)
    assert index.rows.data_ptr() == rows.ctypes.data  # the store's own memory
    scored = []
    products = faiss_index.padded_products
    monkeypatch.setattr(faiss_index, "padded_products", lambda q, r: scored.append(q.shape[1]) or products(q, r))
    chunked = index.search(queries, 5)
    assert scored == [1, 2, 2, 2, 2]  # even parts: no part of one query at the end
    np.testing.assert_array_equal(chunked[1], whole[1])
    np.testing.assert_allclose(chunked[0], whole[0], rtol=1e-6)  # BLAS may round other numbers of queries otherwise
    # one query scores as in the evaluation, whatever the layout of the store (gemv rounded by it)
    from aml.evaluation.ranking import rank_database

    single = index.search(queries[:1], 300)[1][0]
    np.testing.assert_array_equal(single, rank_database(np.ascontiguousarray(vecs), queries[:1].T.copy())[:, 0])


def test_query_expansion_gathers_the_neighbours_of_a_few_queries_at_a_time(tmp_path, monkeypatch):
    """αQE and SuperGlobal gathered every query's K neighbours at once, unbounded (test.py bounds
    them): the queries go by groups that fit, and a K past what one query may keep is refused."""
    from aml.evaluation import ranking
    from aml.evaluation.reranking import Reranking
    from aml.search import database as database_module

    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(16, 400)).astype(np.float32)
    store = SearchDatabase(tmp_path, vecs / np.linalg.norm(vecs, axis=0), [f"{i}.jpg" for i in range(400)], {"dim": 16})
    queries = store.vecs[:, :10] + 0.1 * rng.normal(size=(16, 10)).astype(np.float32)
    whole = store.search(queries, 3, reranking=Reranking(qe=40))
    monkeypatch.setattr(ranking, "NEIGHBOUR_VALUES", 16 * 200)  # 200 neighbours: 5 queries of 40 at a time
    expand = database_module.search_with_expansion
    groups = []
    monkeypatch.setattr(database_module, "search_with_expansion",
                        lambda db, part, *args, **kwargs: groups.append(part.shape[1]) or expand(db, part, *args, **kwargs))
    grouped = store.search(queries, 3, reranking=Reranking(qe=40))
    assert groups == [5, 5]
    np.testing.assert_array_equal(grouped[1], whole[1])
    np.testing.assert_array_equal(grouped[0], whole[0])
    monkeypatch.setattr(ranking, "NEIGHBOUR_VALUES", 16 * 20)
    with pytest.raises(StoreError, match=r"--qe 40: a query's 40 nearest 16-d descriptors would take more than a "
                                         r"search is given; give --qe 20 or less"):
        store.search(queries, 3, reranking=Reranking(qe=40))


@pytest.mark.parametrize("moved_bytes", [64 << 20, 32])  # one block; two rows at a time
def test_skipped_columns_are_dropped_in_place(moved_bytes, monkeypatch):
    """Opening a store with one skipped image took a second copy of the whole store."""
    from aml.search import store as store_module

    monkeypatch.setattr(store_module, "MOVED_ROWS_BYTES", moved_bytes)
    rows = np.arange(40, dtype=np.float32).reshape(10, 4)
    kept = np.array([0, 2, 3, 7, 9])
    expected = rows.T[:, kept].copy()
    vecs = store_module._kept_columns(rows.T, kept)
    np.testing.assert_array_equal(vecs, expected)
    assert np.shares_memory(vecs, rows)


def test_query_expansion_and_superglobal_hold_their_neighbours_together(tmp_path, monkeypatch):
    """The group of queries was sized for the larger of K and M, while both were held at once."""
    from aml.evaluation import ranking
    from aml.evaluation.reranking import Reranking
    from aml.evaluation.superglobal import SuperGlobal
    from aml.search import database as database_module

    rng = np.random.default_rng(1)
    vecs = rng.normal(size=(16, 300)).astype(np.float32)
    store = SearchDatabase(tmp_path, vecs / np.linalg.norm(vecs, axis=0), [f"{i}.jpg" for i in range(300)], {"dim": 16})
    monkeypatch.setattr(ranking, "NEIGHBOUR_VALUES", 16 * 100)  # 100 neighbours of one query at once
    assert store._queries_at_once(Reranking(qe=10, superglobal=SuperGlobal(m=40))) == 2
    assert store._queries_at_once(Reranking()) == database_module.EVERY_QUERY
    with pytest.raises(StoreError, match=r"--qe 70 with --superglobal 40: a query's 110 nearest 16-d descriptors"):
        store._queries_at_once(Reranking(qe=70, superglobal=SuperGlobal(m=40)))


def test_a_numpy_integer_k_searches_as_an_int(tmp_path):
    """k=np.int64(2), accepted by the checks, reached faiss, which refused it with a TypeError
    (also Reranking(qe=np.int64(2)))."""
    from aml.evaluation import Reranking

    store = SearchDatabase(tmp_path, np.eye(5, dtype=np.float32), [f"{i}.jpg" for i in range(5)], {"dim": 5})
    query = np.array([[0.0], [0.6], [0.8], [0.0], [0.0]], dtype=np.float32)
    scores, found = store.search(query, k=np.int64(2))
    assert found.tolist() == [[2, 1]] and np.allclose(scores, [[0.8, 0.6]])
    assert store.search(query, k=2, reranking=Reranking(qe=np.int64(2)))[1].tolist() == [[2, 1]]
