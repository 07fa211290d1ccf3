"""evaluate as a library call: typed results, and the networks it is lent come back as they
went in (device, train/eval mode, memory format)."""

import numpy as np
import pytest
import torch

from aml.data.testsets import configdataset, query_and_database_paths
from aml.descriptors import ExtractionConfig, describe_images
from aml.evaluation import DatasetResult, Reranking, TestSettings, evaluate, evaluate_ranks, rank_database
from aml.networks import LoadedNetwork, build_network

SIZE = 32


def _state(net):
    """Each parameter (the object itself) with where and how its values lie, each buffer's, each module's mode."""
    return ([(p, p.data_ptr(), p.device, p.dtype, p.stride()) for p in net.parameters()],
            [(b.data_ptr(), b.device, b.stride()) for b in net.buffers()], [m.training for m in net.modules()])


def _settings(root, **changes):
    return TestSettings(datasets=("synth-oxford",), image_size=SIZE, data_root=root, cache=False,
                        extraction=ExtractionConfig(workers=0, device="cpu"), **changes)


def test_evaluate_leaves_the_networks_as_they_were(synth_root):
    torch.manual_seed(0)
    student = build_network("resnet18", pretrained=False).train()  # in training, contiguous weights
    teacher = build_network("resnet18", pretrained=False).eval().to(memory_format=torch.channels_last)
    before = {"student": _state(student), "teacher": _state(teacher)}
    results = evaluate(LoadedNetwork.in_memory(student, "student"), _settings(synth_root),
                       LoadedNetwork.in_memory(teacher, "teacher"))
    assert isinstance(results["synth-oxford"], DatasetResult)
    after = {"student": _state(student), "teacher": _state(teacher)}
    for name in before:
        assert all(a[0] is b[0] for a, b in zip(before[name][0], after[name][0])), f"{name}: a parameter was replaced"
        assert before[name] == after[name], f"{name}: moved, laid out anew or switched to another mode"
    assert student.training and not teacher.training
    assert student.features[0].weight.is_contiguous()
    assert teacher.features[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_evaluate_gives_the_numbers_of_a_ranking_of_its_descriptors(synth_root):
    """A plain test's numbers are those of ranking the descriptors by hand; αQE adds one search
    under its own key, DBA another."""
    torch.manual_seed(1)
    net = build_network("resnet18", pretrained=False).eval()
    reranking = Reranking(qe=2, dba=3)
    result = evaluate(LoadedNetwork.in_memory(net, "net"), _settings(synth_root, reranking=reranking))["synth-oxford"]
    cfg = configdataset("synth-oxford", synth_root / "test")
    images, queries, bbxs = query_and_database_paths(cfg)
    config = ExtractionConfig(workers=0, device="cpu")
    vecs = describe_images(net, images, SIZE, config=config)
    qvecs = describe_images(net, queries, SIZE, bbxs=bbxs, config=config)
    expected = evaluate_ranks(rank_database(vecs, qvecs), cfg["gnd"], cfg["protocol"])
    assert result.plain.map("medium") == pytest.approx(expected["medium"]["map"], abs=1e-12)
    assert result.plain.metrics["hard"]["aps"] == pytest.approx(expected["hard"]["aps"], abs=1e-12)
    assert [search.key for search in result.searches] == ["plain", "plain + dba3", "plain + dba3 + αqe2"]
    assert list(result.record()) == ["plain", "plain + dba3", "plain + dba3 + αqe2"]
    assert result.search(reranking=reranking).metrics == result.record()["plain + dba3 + αqe2"]
    lines = result.lines()
    assert lines[0].startswith(">> synth-oxford: mAP E: ") and lines[2].startswith(">> synth-oxford + dba3: mAP")
    assert np.isfinite(result.search(reranking=reranking).map("hard"))


def test_under_torchrun_rank_0_alone_searches_and_hands_its_results_on(synth_root, monkeypatch):
    """Every rank searched every test set (the +1M store read once per process) to print and
    write nothing: rank 0 searches, the others get its results."""
    from aml.evaluation import testing
    from aml.utils.distributed import World

    searched, handed = [], []
    monkeypatch.setattr(testing, "current_world", lambda: World(rank=1, size=2))
    monkeypatch.setattr(testing, "_search", lambda *args: searched.append(args) or "rank 1's own")
    monkeypatch.setattr(testing, "from_main", lambda value, world: handed.append(value) or "rank 0's")
    monkeypatch.setattr(testing.TestPlan, "of", classmethod(lambda cls, *args: _one_set_plan(synth_root)))
    monkeypatch.setattr(testing, "_encode", lambda plan, test: None)
    results = evaluate(LoadedNetwork.in_memory(build_network("resnet18", pretrained=False), "net"),
                       _settings(synth_root))
    assert searched == [] and handed == [None] and results == {"synth-oxford": "rank 0's"}


def test_rank_0s_error_in_a_search_ends_every_rank_alike(monkeypatch):
    """Rank 0 alone searches: its error about the data (a damaged store) left the others
    waiting for its results until torchrun or the timeout stopped them."""
    from aml.evaluation import testing
    from aml.utils.distributed import World
    from aml.utils.errors import DataError

    sent = []

    def from_main(value, world):
        sent.append(value)
        return DataError("shard_00003.npy is damaged") if world.rank else value  # as rank 0 sent it

    def damaged():
        raise DataError("shard_00003.npy is damaged")

    monkeypatch.setattr(testing, "from_main", from_main)
    for rank in (0, 1):
        with pytest.raises(DataError, match="shard_00003.npy is damaged"):
            testing._searched_by_main(World(rank=rank, size=2), damaged)
    assert isinstance(sent[0], DataError) and sent[1] is None  # rank 0 sent its error; rank 1 searched nothing


def _one_set_plan(root):
    """A plan of one test set without distractors or whitening (what `evaluate` reads of it)."""
    from types import SimpleNamespace

    return SimpleNamespace(whitening=None, sets=[SimpleNamespace(name="synth-oxford", distractors=None)])


def test_a_network_changed_in_place_is_not_served_its_old_cached_descriptors(synth_root, tmp_path):
    """A network fine-tuned in place between two evaluate calls kept the fingerprint of its first
    weights: the database cache served the old descriptors with the new queries (mAP 0.151 where
    0.355 was right). And a network in memory alone had its database cached, though nothing
    finds it again."""
    from aml.networks.checkpoint import checkpoint_state, save_checkpoint
    from aml.networks.loading import load_named_or_file

    torch.manual_seed(0)
    loaded = load_named_or_file(save_checkpoint(checkpoint_state(build_network("resnet18", pretrained=False), 1, 0.0),
                                                tmp_path / "net.pth.tar"))
    settings = _settings(synth_root).but(cache=True)
    first = loaded.fingerprint
    evaluate(loaded, settings)
    with torch.no_grad():  # fine-tuned in place (a step of an optimizer)
        first_conv = next(loaded.net.parameters())
        first_conv.add_(0.5 * torch.randn_like(first_conv) * first_conv.std())
    assert loaded.fingerprint != first
    fresh = LoadedNetwork(loaded.net, loaded.spec)
    assert loaded.fingerprint == fresh.fingerprint
    again = evaluate(loaded, settings)["synth-oxford"].plain.map("medium")
    assert again == evaluate(fresh, _settings(synth_root))["synth-oxford"].plain.map("medium")
    cache = synth_root / "features" / "cache"
    before = sorted(cache.iterdir()) if cache.is_dir() else []
    evaluate(LoadedNetwork.in_memory(build_network("resnet18", pretrained=False), "epoch3"), settings)
    assert (sorted(cache.iterdir()) if cache.is_dir() else []) == before
