"""The compatibility matrix on the synthetic test sets, with the learning tests' trained teacher
and random students: each cell is test.py's number for its pair, a pair of other dimensions has
no search, the marks are those of the numbers, and each network encodes each database once."""

import collections

import numpy as np
import pytest
import torch

from aml.cli import test as test_cli
from aml.compat import CompatibilityMatrix, compatibility_matrix
from aml.descriptors import ExtractionConfig, cache
from aml.evaluation import TestSettings
from aml.networks import LoadedNetwork, build_network, load_named_or_file
from aml.networks.checkpoint import checkpoint_state, save_checkpoint
from aml.utils.errors import ConfigError

# Uses the learning tests' trained teacher (trained once per session): started early (conftest).
pytestmark = pytest.mark.long

SIZE = 64
DATASETS = ("synth-oxford", "synth-paris")


@pytest.fixture(scope="module")
def files(tmp_path_factory, trained_teacher):
    """The trained 512-d teacher, a random 512-d student and a random 256-d network, as checkpoint files."""
    folder = tmp_path_factory.mktemp("compat")
    paths = {"teacher": trained_teacher}
    for seed, (name, arch, dim) in enumerate((("student", "resnet18", 512), ("narrow", "resnet18", 256))):
        torch.manual_seed(seed)
        net = build_network(arch, pretrained=False, teacher_dim=dim)
        paths[name] = save_checkpoint(checkpoint_state(net, 0, 0.0), folder / f"{name}.pth.tar")
    return paths


@pytest.fixture
def root(tmp_path, synth_root):
    """A data root of its own (an empty descriptor cache) with the session's synthetic test sets."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "test").symlink_to(synth_root / "test")
    return tmp_path / "data"


def _settings(root) -> TestSettings:
    return TestSettings(datasets=DATASETS, image_size=SIZE, data_root=root,
                        extraction=ExtractionConfig(workers=0, device="cpu"))


def _test_py(root, network, teacher=None, datasets=DATASETS):
    """test.py's numbers for a network (asymmetric against ``teacher``), encoding its database anew."""
    asym = ["--asym", "--teacher", str(teacher)] if teacher is not None else []
    return test_cli.main(["-npath", str(network), "-d", ",".join(datasets), "-imsize", str(SIZE), "-j", "0",
                          "--device", "cpu", "--data-root", str(root), "--no-cache", *asym])


def test_each_cell_is_test_pys_number_for_its_pair_and_each_database_is_encoded_once(files, root, monkeypatch):
    encoded = collections.Counter()
    describe = cache.describe_images

    def counting(net, images, *args, **kwargs):
        encoded[id(net), str(images[0])] += 1  # network, test set
        return describe(net, images, *args, **kwargs)

    monkeypatch.setattr(cache, "describe_images", counting)
    networks = {name: load_named_or_file(path) for name, path in files.items()}
    pairs = []
    matrix = compatibility_matrix(networks, _settings(root), on_pair=lambda q, d, results: pairs.append((q, d)))
    # 3 networks x 2 test sets: each database encoded once, the 7 other searches of a column read the cache
    assert sorted(encoded.values()) == [1] * 6 and len({key[0] for key in encoded}) == 3
    assert pairs == [("teacher", "teacher"), ("student", "teacher"), ("teacher", "student"),
                     ("student", "student"), ("narrow", "narrow")]
    assert matrix.labels == ["teacher", "student", "narrow"] and [n.dim for n in matrix.networks] == [512, 512, 256]
    monkeypatch.undo()

    for dataset in DATASETS:
        assert matrix.searches(dataset) == ["plain"] and matrix.levels(dataset) == ["medium", "hard"]
        for level in ("medium", "hard"):
            maps = matrix.maps[dataset, "plain", level]
            no_search = np.isnan(maps)
            assert no_search.tolist() == [[False, False, True], [False, False, True], [True, True, False]]
            better, bct = matrix.marks(dataset, "plain", level)
            assert not (better[no_search].any() or bct[no_search].any() or better[0, 0] or np.diag(bct).any())
        # the trained teacher finds more than a random student, alone or with the teacher's database:
        # the student's row beats no teacher, nor is its query compatible with the teacher's database
        medium = matrix.maps[dataset, "plain", "medium"]
        assert medium[0, 0] > medium[1, 1] + 0.05 and medium[0, 0] > medium[1, 0] + 0.05
        better, bct = matrix.marks(dataset, "plain", "medium")
        assert not better[1].any() and not bct[1, 0]
        assert better.tolist() == (medium > medium[0, 0]).tolist()
    for index, name in enumerate(files):
        alone = _test_py(root, files[name])
        for dataset in DATASETS:
            for level in ("medium", "hard"):
                assert matrix.maps[dataset, "plain", level][index, index] == alone[dataset]["plain"][level]["map"]
    asymmetric = _test_py(root, files["student"], teacher=files["teacher"], datasets=("synth-oxford",))
    for level in ("medium", "hard"):
        assert matrix.maps["synth-oxford", "plain", level][1, 0] == asymmetric["synth-oxford"]["plain"][level]["map"]
    assert CompatibilityMatrix.from_record(matrix.record()) == matrix


def test_a_column_is_searched_with_its_network_as_the_database_on_the_diagonal_too(files, root, monkeypatch):
    """With whitening, test.py alone applies a published network's whitening file while a pair
    learns one: the diagonal cell is evaluated as a pair of the network with itself, so that
    every cell of a column uses the same whitening and the marks compare like with like."""
    from aml.compat import matrix as matrix_module

    calls = []
    monkeypatch.setattr(matrix_module, "evaluate", lambda query, settings, database=None: calls.append(
        (query, database)) or {})
    networks = {name: load_named_or_file(path) for name, path in files.items()}
    compatibility_matrix(networks, _settings(root).but(whitening="synth-sfm"))
    teacher, student, narrow = networks.values()
    assert calls == [(teacher, teacher), (student, teacher), (teacher, student), (student, student), (narrow, narrow)]


def test_no_network_or_a_ranking_report_is_refused(root, tmp_path):
    with pytest.raises(ConfigError, match="at least one network"):
        compatibility_matrix({}, _settings(root))
    network = LoadedNetwork.in_memory(build_network("resnet18", pretrained=False), "resnet18")
    with pytest.raises(ConfigError, match="ranking report"):
        compatibility_matrix({"resnet18": network}, _settings(root).but(report_dir=tmp_path))
    # a list, or a bare network, was an AttributeError ("'list' object has no attribute 'values'")
    with pytest.raises(ConfigError, match="networks must map a label to each LoadedNetwork, got a list"):
        compatibility_matrix([network], _settings(root))
    with pytest.raises(ConfigError, match=r"network 'r18' must be a LoadedNetwork .* LoadedNetwork.in_memory"):
        compatibility_matrix({"r18": network.net}, _settings(root))
    # one network under two labels (two spellings of one file, a copy, vgg16 and its published name)
    twice = LoadedNetwork.in_memory(network.net, "copy")
    with pytest.raises(ConfigError, match=r"networks 'a' and 'b' are one network \(the same weights, fingerprint "
                                          r"\w{8}\): its rows and columns would repeat; give it once"):
        compatibility_matrix({"a": network, "b": twice}, _settings(root))
    # a timm network under two spellings of its name (its default readout written out)
    pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = LoadedNetwork.in_memory(build_network("timm:test_vit", pretrained=False), "vit")
    torch.manual_seed(0)
    spelled = LoadedNetwork.in_memory(build_network("timm:test_vit+patch", pretrained=False), "vit+patch")
    with pytest.raises(ConfigError, match=r"networks 'vit' and 'vit\+patch' are one network"):
        compatibility_matrix({"vit": vit, "vit+patch": spelled}, _settings(root))


def test_networks_in_memory_alone_are_said_to_encode_their_database_for_every_cell(root, monkeypatch, caplog):
    """The docs promised each database encoded once per network; a network in memory alone has
    nothing cached, and encoded it N times (a +1M store too) without a word."""
    from aml.compat import matrix as matrix_module

    monkeypatch.setattr(matrix_module, "evaluate", lambda query, settings, database=None: {})

    def network(name, dim):
        return LoadedNetwork.in_memory(build_network("resnet18", pretrained=False, teacher_dim=dim), name)

    networks = {"a": network("a", 8), "b": network("b", 8), "c": network("c", 9)}
    with caplog.at_level("WARNING", logger="aml.compat.matrix"):
        compatibility_matrix(networks, _settings(root))
        compatibility_matrix(networks, _settings(root).but(cache=False))  # nothing cached for any: nothing to say
    assert caplog.text.count("in memory alone") == 1
    assert ("a, b: in memory alone, nothing is cached for them: each encodes its database once per query network "
            "of its dimension (2, 2 times); load them from checkpoint files") in caplog.text  # c searches nothing
