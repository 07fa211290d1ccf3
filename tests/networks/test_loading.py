"""Loading a network by what the user typed: a LoadedNetwork says where it came from, which
decides where its whitening is cached."""

import pytest
import torch

from aml.evaluation.whitening_store import whitening_cache_path
from aml.networks import build_network
from aml.networks.checkpoint import checkpoint_state, save_checkpoint
from aml.networks.fingerprint import network_fingerprint
from aml.networks.loading import LoadedNetwork, NetworkSpec, load_named_or_file, load_teacher, load_test_network


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    net = build_network("squeezenet1_1", pretrained=False)
    return save_checkpoint(checkpoint_state(net, 1, 0.0), tmp_path_factory.mktemp("run") / "model_best.pth.tar")


def test_a_checkpoint_loads_with_its_path_name_and_fingerprint(checkpoint):
    for loaded in (load_named_or_file(checkpoint), load_test_network(str(checkpoint)), load_teacher(str(checkpoint))):
        assert loaded.name == "model_best" and loaded.path == checkpoint and not loaded.named
        assert not loaded.net.training
        assert loaded.fingerprint == network_fingerprint(loaded.net)


def test_where_the_whitening_of_each_provenance_is_cached(checkpoint, tmp_path):
    from_file = load_named_or_file(checkpoint)
    assert whitening_cache_path(from_file, "synth-sfm", False, 64, str(tmp_path)) == checkpoint.with_name(
        "model_best.pth.tar_synth-sfm_whiten_64.pth")
    named = LoadedNetwork(from_file.net, NetworkSpec.parse("retrievalSfM120k-vgg16-gem"))
    assert whitening_cache_path(named, "synth-sfm", True, 64, str(tmp_path)) == (
        tmp_path / "whiten" / "retrievalSfM120k-vgg16-gem_synth-sfm_whiten_ms_64.pth")
    assert whitening_cache_path(LoadedNetwork.in_memory(from_file.net, "run_epoch3"), "synth-sfm", False, 64,
                                str(tmp_path)) is None


def test_a_missing_network_and_two_sources_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a file nor a name of the pretrained list"):
        load_named_or_file(tmp_path / "nothing.pth")
    with pytest.raises(ValueError, match="exactly one of --network-path and --network-offtheshelf"):
        load_test_network("a", "resnet18-gem")


def test_what_the_user_typed_is_told_apart_once(checkpoint, tmp_path):
    from aml.networks.loading import Source

    alias = NetworkSpec.parse("resnet101")
    assert (alias.source, alias.name, alias.label, alias.dimension()) == (
        Source.PUBLISHED, "retrievalSfM120k-resnet101-gem", "resnet101", 2048)
    published = NetworkSpec.parse("retrievalSfM120k-vgg16-gem")
    assert (published.source, published.label, published.dimension(), published.local_file) == (
        Source.PUBLISHED, "retrievalSfM120k-vgg16-gem", 512, None)
    here = NetworkSpec.parse(str(checkpoint))
    assert (here.source, here.name, here.path, here.local_file, here.dimension()) == (
        Source.CHECKPOINT, "model_best", checkpoint, checkpoint, 512)
    elsewhere = NetworkSpec.parse(str(tmp_path / "gone" / "teacher.pth.tar"))
    assert (elsewhere.name, elsewhere.label, elsewhere.local_file, elsewhere.dimension()) == (
        "teacher", "teacher", None, None)
    assert NetworkSpec.parse("resnet18-gem", offtheshelf=True).named and not here.named
    # a published name in another case is that name, as aml.cli.download reads it (it was a missing file)
    for typed, label, name in (("VGG16", "vgg16", "retrievalSfM120k-vgg16-gem"),
                               ("RetrievalSfM120k-ResNet101-GeM", "retrievalSfM120k-resnet101-gem",
                                "retrievalSfM120k-resnet101-gem")):
        spelt = NetworkSpec.parse(typed)
        assert (spelt.source, spelt.given, spelt.label, spelt.name) == (Source.PUBLISHED, label, label, name)
    own = tmp_path / "VGG16"  # a file of that name is the file
    own.write_bytes(b"x")
    assert NetworkSpec.parse(str(own)).source == Source.CHECKPOINT


def test_a_network_of_any_precision_has_a_fingerprint_and_float32_ones_keep_theirs():
    """numpy has no bfloat16: fingerprinting a .bfloat16() network (a teacher halved to save
    GPU memory) raised a TypeError in every cache, store and search."""
    net = torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.BatchNorm1d(2))
    with torch.no_grad():
        net[0].weight.copy_(torch.arange(8.0).reshape(2, 4) / 8)
        net[0].bias.fill_(0.5)
    prints = [network_fingerprint(net), network_fingerprint(net.half()), network_fingerprint(net.bfloat16())]
    assert prints[:2] == ["389d1cfa94ea1cae", "4d110fdc342f98b6"]  # as before: every store and cache keeps its key
    assert len(set(prints)) == 3


def test_the_fingerprint_follows_weights_changed_through_data_and_is_not_hashed_again_otherwise(checkpoint,
                                                                                                monkeypatch):
    """Changes through ``.data`` advance no version counter: the fingerprint stayed that of the
    first weights, and every cache keyed by it served their descriptors."""
    from aml.networks import loading

    loaded = load_named_or_file(checkpoint)
    hashed = []
    monkeypatch.setattr(loading, "network_fingerprint", lambda net: hashed.append(1) or network_fingerprint(net))
    seen = [loaded.fingerprint, loaded.fingerprint]
    assert len(hashed) == 1  # unchanged: hashed once
    weight = loaded.net.pool.p
    weight.data.fill_(6.0)  # in place, through .data
    seen.append(loaded.fingerprint)
    weight.data = torch.full_like(weight, 5.0)  # a new tensor behind the same parameter
    seen.append(loaded.fingerprint)
    assert len(set(seen)) == 3 and seen[-1] == network_fingerprint(loaded.net) and len(hashed) == 3
    weight.data.fill_(float("nan"))  # a NaN is not equal to itself: it was hashed again at every access
    assert loaded.fingerprint == loaded.fingerprint and len(hashed) == 4
