"""test.py -d NAME+DISTRACTORS: the +1M protocol on a generated distractor set, equal to the
full in-memory ranking, encoded once per network, with unreadable distractors named or skipped."""

import functools
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from aml.descriptors import ExtractionConfig
from aml.cli import test as test_cli
from aml.data.distractors import DISTRACTOR_SETS, revisitop1m_urls, split_test_name
from aml.data.images import ImageLoadError
from aml.data.synthetic import SyntheticDistractorConfig, SyntheticTestConfig, generate_distractor_set, generate_test_set
from aml.data.testsets import configdataset, query_and_database_paths
from aml.descriptors import describe_images
from aml.descriptors.store import open_store
from aml.evaluation.metrics import evaluate_ranks
from aml.evaluation.reranking import alpha_query_expansion
from aml.evaluation.superglobal import SuperGlobal, superglobal_rerank
from aml.evaluation.ranking import rank_database
from aml.networks import build_network
from aml.networks.checkpoint import checkpoint_state, load_network, save_checkpoint
from aml.training.batchnorm import calibrate_batchnorm
from aml.utils.errors import DataError

# Trains networks or starts processes for tens of seconds: started early (conftest).
pytestmark = pytest.mark.long

SMALL_DISTRACTORS = SyntheticDistractorConfig(images=150, image_size=64)
COMMON = ["-imsize", "64", "-j", "0", "--device", "cpu", "--shard-size", "64", "-q"]
WITHOUT_DISTRACTORS = COMMON[:6] + COMMON[8:]  # --shard-size is a distractor set's (refused without one)


def network(path, seed):
    torch.manual_seed(seed)
    net = build_network("resnet18", pretrained=False)
    calibrate_batchnorm(net, [torch.rand(8, 3, 64, 64)])  # descriptors that differ between images
    return save_checkpoint(checkpoint_state(net, 0, 0.0), path)


@pytest.fixture(scope="module")
def root(synth_root):
    generate_distractor_set(synth_root, "synth-1m", SMALL_DISTRACTORS)
    return synth_root


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("nets")
    return [network(folder / f"net{seed}.pth.tar", seed) for seed in range(3)]


def stores(root):
    folder = root / "features" / "distractors"
    return sorted(folder.iterdir()) if folder.is_dir() else []


@functools.cache
def reference_parts(root: Path, dataset: str, student: Path, teacher: Path):
    """The reference's own encoding (once per module: the networks' files do not change): the
    test set's config, the teacher's test database and the student's queries."""
    cfg = configdataset(dataset, root / "test")
    images, queries, bbxs = query_and_database_paths(cfg)
    config = ExtractionConfig(workers=0)
    database = describe_images(load_network(teacher), images, 64, config=config)
    return cfg, database, describe_images(load_network(student), queries, 64, bbxs=bbxs, config=config)


def full_ranking_maps(root, dataset, student, teacher, store):
    """The reference: the test database and all distractors ranked together in memory."""
    cfg, database, qvecs = reference_parts(root, dataset, student, teacher)
    database = np.concatenate([database, store.load()], axis=1)
    return evaluate_ranks(rank_database(database, qvecs), cfg["gnd"], cfg["protocol"])


def test_names_and_the_revisitop_files():
    assert split_test_name("roxford5k+1m") == ("roxford5k", "1m") and split_test_name("rparis6k") == ("rparis6k", None)
    with pytest.raises(ValueError, match="unknown distractor set '2m'.*'1m'"):
        split_test_name("roxford5k+2m")
    urls = revisitop1m_urls()
    assert len(urls) == 101 and urls[0].endswith("/revisitop1m/jpg/revisitop1m.1.tar.gz")
    assert urls[99].endswith("/jpg/revisitop1m.100.tar.gz") and urls[100].endswith("/revisitop1m/revisitop1m.txt")
    assert set(DISTRACTOR_SETS) == {"1m", "synth1m"}


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_map_with_distractors_equals_the_full_ranking_and_distractors_are_encoded_once(root, nets, dtype, capsys):
    student, other, teacher = nets
    before = set(stores(root)) if (root / "features" / "distractors").exists() else set()
    datasets = "synth-oxford+synth1m,synth-paris+synth1m"
    args = ["-d", datasets, "--asym", "--teacher", str(teacher), "--data-root", str(root), "--distractor-dtype", dtype]
    results = test_cli.main(["-npath", str(student)] + args + COMMON)
    (new,) = set(stores(root)) - before  # one store: the teacher's, shared by both test sets
    shards = {p: p.stat().st_mtime_ns for p in new.glob("shard_*.npy")}
    assert len(shards) == 3 and capsys.readouterr().out.count("150 distractors added") == 2
    manifest_store = open_store(new)
    for name in datasets.split(","):
        dataset = split_test_name(name)[0]
        reference = full_ranking_maps(root, dataset, student, teacher, manifest_store)
        for level in ("easy", "medium", "hard"):
            assert results[name]["plain"][level]["map"] == reference[level]["map"]  # exactly
            assert results[name]["plain"][level]["mp@k"] == reference[level]["mp@k"]
        assert results[name]["plain"]["medium"]["map"] < test_cli.main(
            ["-npath", str(student), "-d", dataset, "--asym", "--teacher", str(teacher), "--data-root", str(root)]
            + WITHOUT_DISTRACTORS)[dataset]["plain"]["medium"]["map"] + 1e-12  # distractors only push positives down
    # another student against the same teacher: the distractors are not encoded again
    test_cli.main(["-npath", str(other)] + args + COMMON)
    assert set(stores(root)) - before == {new}
    assert {p: p.stat().st_mtime_ns for p in new.glob("shard_*.npy")} == shards


def reranked_with_distractors(root, nets, flags):
    """test.py's asymmetric entries on synth-oxford+synth1m with the re-ranking ``flags``, and the
    reference's parts: the teacher's test database followed by the distractors in memory, the
    student's queries, the ground truth and the test database's size."""
    student, _, teacher = nets
    name = "synth-oxford+synth1m"
    results = test_cli.main(["-npath", str(student), "-d", name, "--asym", "--teacher", str(teacher), "--data-root",
                             str(root)] + flags + COMMON)[name]
    store = open_store(Path(results["distractors"]["store"]))
    cfg, database, qvecs = reference_parts(root, "synth-oxford", student, teacher)
    return results, np.concatenate([database, store.load()], axis=1), qvecs, cfg, database.shape[1]


def test_query_expansion_with_distractors_equals_the_in_memory_expansion_over_the_concatenation(root, nets):
    """αQE's neighbours come from the blocked search over database + distractor shards (merged
    shard by shard), then the expanded queries are searched block by block again: exactly the
    in-memory αQE over the concatenation."""
    results, database, qvecs, cfg, size = reranked_with_distractors(root, nets, ["--qe", "5"])
    first = rank_database(database, qvecs)
    assert (first[:5] >= size).any()  # distractors among the neighbours: the shards' merge is exercised
    expanded = alpha_query_expansion(qvecs, database, first, 5, alpha=3)
    reference = evaluate_ranks(rank_database(database, expanded), cfg["gnd"], cfg["protocol"])
    for level in ("easy", "medium", "hard"):
        assert results["plain + αqe5"][level]["map"] == reference[level]["map"]  # exactly
        assert results["plain + αqe5"][level]["mp@k"] == reference[level]["mp@k"]
    assert results["plain + αqe5"]["medium"]["map"] != results["plain"]["medium"]["map"]


def test_superglobal_with_distractors_equals_it_over_the_concatenation(root, nets):
    """SuperGlobal's first M, with their descriptors, come from the blocked search over database +
    distractor shards; the test images' places, with the re-ranked first M in front, give
    exactly the metrics of the in-memory re-ranking of the concatenation's full ranking."""
    results, database, qvecs, cfg, size = reranked_with_distractors(root, nets, ["--superglobal", "60", "--sg-k", "4"])
    ranks = rank_database(database, qvecs)
    assert (ranks[:60] >= size).any() and (ranks[:60] < size).any()  # distractors and test images among the 60
    reference = evaluate_ranks(superglobal_rerank(database, qvecs, ranks, SuperGlobal(60, 4)), cfg["gnd"],
                               cfg["protocol"])
    for level in ("easy", "medium", "hard"):
        assert results["plain + sg60(k=4)"][level]["map"] == reference[level]["map"]  # exactly
        assert results["plain + sg60(k=4)"][level]["mp@k"] == reference[level]["mp@k"]
    assert results["plain + sg60(k=4)"]["medium"]["map"] != results["plain"]["medium"]["map"]


def test_query_expansion_with_distractors_is_bounded_before_anything_is_encoded(root, nets, monkeypatch, capsys):
    """--qe K with distractors keeps Q x K x D descriptors: K = 21,002 took 23.9 GB before the
    kernel killed it. The bound (here lowered to 4 neighbours of 30 queries) is checked first."""
    from aml.evaluation import ranking as search

    student, _, teacher = nets
    monkeypatch.setattr(search, "NEIGHBOUR_VALUES", 30 * 512 * 4)
    with pytest.raises(SystemExit) as info:
        test_cli.main(["-npath", str(student), "-d", "synth-oxford+synth1m", "--asym", "--teacher", str(teacher),
                       "--data-root", str(root), "--qe", "5"] + COMMON)
    printed = capsys.readouterr()
    assert info.value.code == 2 and "Extracting" not in printed.out
    assert ("error: --qe 5 with synth-oxford+synth1m: its 30 queries would keep their 5 nearest 512-d descriptors "
            "(0.000286 GiB) while the database is searched, more than a search is given; give --qe 4 or "
            "less") in printed.err


@pytest.fixture
def broken_root(tmp_path):
    """A data root whose distractor set holds one corrupt image."""
    generate_test_set(tmp_path, "synth-oxford", SyntheticTestConfig(landmarks=4, queries_per_landmark=1, easy=2, hard=2,
                                                                   junk=1, distractor_landmarks=2, distractor_views=2,
                                                                   image_size=64))
    folder = generate_distractor_set(tmp_path, "synth-1m", SyntheticDistractorConfig(images=40, image_size=64))
    bad = folder / "jpg" / (folder / "synth-1m.txt").read_text().split()[17]
    bad.write_bytes(b"not a jpeg")
    return tmp_path, bad


def test_an_unreadable_distractor_is_named_or_skipped_and_listed(broken_root, nets, capsys):
    root, bad = broken_root
    args = ["-npath", str(nets[0]), "-d", "synth-oxford+synth1m", "--data-root", str(root)] + COMMON
    with pytest.raises(ImageLoadError, match=str(bad)):
        test_cli.main(args)
    results = test_cli.main(args + ["--skip-bad-images"])
    (store,) = stores(root)
    assert (store / "skipped.txt").read_text().split() == [str(bad)]
    assert results["synth-oxford+synth1m"]["distractors"] == {"count": 40, "skipped": 1, "store": str(store)}
    assert "1 unreadable ones skipped" in capsys.readouterr().out
    with pytest.raises(DataError, match=rf"was encoded around 1 images that could not be read \({re.escape(str(bad))}, "
                                        r"\.\.\.; listed in .*skipped.txt\): .*pass --skip-bad-images"):
        test_cli.main(args)  # the same command as the first: it stops, whatever ran since


def test_report_with_distractors_is_refused(root, nets, capsys):
    with pytest.raises(SystemExit):
        test_cli.main(["-npath", str(nets[0]), "-d", "synth-oxford+synth1m", "--report", "r", "--data-root", str(root)]
                      + COMMON)
    assert "--report draws full rankings" in capsys.readouterr().err


def test_a_distractor_shard_replaced_by_another_stores_is_named(root, nets):
    """A shard of the same shape from another store was searched silently; the manifest's sha256 names it."""
    student = nets[0]
    args = ["-npath", str(student), "-d", "synth-oxford+synth1m", "--data-root", str(root)] + COMMON
    folder = Path(test_cli.main(args)["synth-oxford+synth1m"]["distractors"]["store"])
    shard = folder / "shard_00001.npy"
    kept = shard.read_bytes()
    np.save(shard, np.roll(np.load(shard), 1, axis=0))
    try:
        with pytest.raises(DataError, match=r"^descriptor store .*: shard_00001.npy is not the shard this store "
                                            r"wrote .*; delete it and run the same command again"):
            test_cli.main(args)
    finally:
        shard.write_bytes(kept)


def test_the_distractors_of_a_network_in_memory_are_deleted_once_searched(root, nets, tmp_path):
    """main.py --test-freq with a +1M set left a store per tested epoch that no later test reads
    (8 GB each for the 1M at 2048-d); a network loaded from its file keeps its store, and a
    store that was there before (test.py of the saved epoch) is never deleted."""
    from aml.evaluation import TestSettings, evaluate
    from aml.networks.loading import LoadedNetwork, load_named_or_file

    settings = TestSettings(datasets=("synth-oxford+synth1m",), image_size=64, data_root=root, shard_size=64,
                            extraction=ExtractionConfig(workers=0, progress=False))
    net = load_network(nets[2]).eval()
    net.meta["seed"] = 12345  # other descriptors' key: a store of its own
    before = stores(root)
    result = evaluate(LoadedNetwork.in_memory(net, "run_epoch3"), settings)["synth-oxford+synth1m"]
    assert stores(root) == before and result.record()["distractors"]["store"] is None
    assert ">> synth-oxford+synth1m: 150 distractors added; their descriptors encoded for this test alone" in result.lines()
    kept = evaluate(load_named_or_file(str(save_checkpoint(checkpoint_state(net, 3, 0.0), tmp_path / "e3.pth.tar"))),
                    settings)["synth-oxford+synth1m"]
    assert kept.plain.map("medium") == result.plain.map("medium") and kept.distractors.kept
    assert [path for path in stores(root) if path not in before] == [Path(kept.distractors.store)]
    cut_short = Path(result.distractors.store)  # a failed test's deletion cut short by another rank's shard
    cut_short.mkdir()
    (cut_short / "shard_00001.npy").write_bytes(b"half")
    assert not evaluate(LoadedNetwork.in_memory(net, "run_epoch3"), settings)["synth-oxford+synth1m"].distractors.kept
    assert not cut_short.exists()  # "holds shards but no manifest" refused every later test of the network
    Path(result.distractors.store).mkdir()  # there before the test (another run's): never deleted
    again = evaluate(LoadedNetwork.in_memory(net, "run_epoch3"), settings)["synth-oxford+synth1m"]
    assert again.distractors.kept and (Path(again.distractors.store) / "manifest.json").is_file()


def test_the_distractors_of_a_network_in_memory_go_also_when_its_test_fails(root, nets, monkeypatch):
    from aml.evaluation import TestSettings, evaluate, testing
    from aml.networks.loading import LoadedNetwork

    def damaged(*args):
        raise DataError("a whitening of NaN")

    monkeypatch.setattr(testing, "_search", damaged)
    settings = TestSettings(datasets=("synth-oxford+synth1m",), image_size=64, data_root=root, shard_size=64,
                            extraction=ExtractionConfig(workers=0, progress=False))
    net = load_network(nets[1]).eval()
    net.meta["seed"] = 54321
    before = stores(root)
    with pytest.raises(DataError, match="a whitening of NaN"):
        evaluate(LoadedNetwork.in_memory(net, "run_epoch4"), settings)
    assert stores(root) == before
    # a failure while it is encoded (a full disk): its first shards went with it
    from aml.descriptors import store as store_module
    from aml.utils.atomic import DiskFull

    encoded = []
    real = store_module.describe_images

    def fills_the_disk(*args, **kwargs):
        if encoded:
            raise DiskFull("no space left on the device")
        encoded.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(store_module, "describe_images", fills_the_disk)
    with pytest.raises(DiskFull):
        evaluate(LoadedNetwork.in_memory(net, "run_epoch4"), settings)
    assert encoded and stores(root) == before


def test_the_skipped_distractors_of_a_temporary_store_are_named_not_their_list(tmp_path, monkeypatch, caplog):
    """The warning named the store's skipped.txt, which goes with the store once searched."""
    from types import SimpleNamespace

    from aml.evaluation import testing
    from aml.networks.loading import Source

    store = SimpleNamespace(images=["d0.jpg", "d1.jpg", "d2.jpg"], skipped=lambda: [1, 2], folder=tmp_path / "store")
    monkeypatch.setattr(testing, "encode_into_store", lambda *args: store)
    encoder = SimpleNamespace(name="run_epoch3", net=None, spec=SimpleNamespace(source=Source.MEMORY))
    planned = SimpleNamespace(name="synth1m", images=store.images, folder=store.folder, key=None, extraction=None)
    temporary = []
    with caplog.at_level("WARNING", logger="aml"):
        testing._store(SimpleNamespace(database_encoder=encoder, distractors={"synth1m": planned}), "synth1m",
                       temporary)
    assert temporary == [store.folder]
    assert "2 unreadable distractors skipped (the first: d1.jpg)" in caplog.text and "skipped.txt" not in caplog.text
