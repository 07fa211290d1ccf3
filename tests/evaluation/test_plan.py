"""A test's settings resolved before anything is encoded (`TestPlan`): every file they name is
read first, and one key serves the database cache, the distractor store and the whitening."""

import pytest
import torch

from aml.data.safe_pickle import DatasetFileError, save_pickle
from aml.data.synthetic import SyntheticDistractorConfig, generate_distractor_set
from aml.descriptors import ExtractionConfig
from aml.evaluation import Reranking, TestSettings, evaluate
from aml.evaluation.plan import TestPlan
from aml.networks import build_network


@pytest.fixture
def root(synth_root, tmp_path):
    """A data root with synth_root's sets, a synthetic distractor set and nothing encoded."""
    generate_distractor_set(synth_root, "synth-1m", SyntheticDistractorConfig(images=150, image_size=64))
    root = tmp_path / "data"
    (root / "test").mkdir(parents=True)
    for name in ("synth-oxford", "synth-paris", "synth-1m"):
        (root / "test" / name).symlink_to(synth_root / "test" / name, target_is_directory=True)
    (root / "train").symlink_to(synth_root / "train", target_is_directory=True)
    return root


@pytest.fixture
def network(tmp_path):
    """A network read from its checkpoint (one in memory alone has nothing cached)."""
    from aml.networks.checkpoint import checkpoint_state, save_checkpoint
    from aml.networks.loading import load_named_or_file

    torch.manual_seed(0)
    return load_named_or_file(save_checkpoint(checkpoint_state(build_network("resnet18", pretrained=False), 1, 0.0),
                                              tmp_path / "net.pth.tar"))


def _settings(root, **changes):
    return TestSettings(datasets=("synth-oxford", "synth-paris+synth1m"), image_size=32, data_root=root,
                        extraction=ExtractionConfig(workers=0, device="cpu"), **changes)


def test_every_file_is_read_before_the_first_image_is_encoded(root, network, monkeypatch):
    """A damaged second test set stops the test before the first set is encoded."""
    import aml.descriptors.extraction as extraction

    monkeypatch.setattr(extraction, "extract_vectors", lambda *a, **k: pytest.fail("an image was encoded"))
    (root / "test" / "mine" / "jpg").mkdir(parents=True)
    save_pickle([1, 2], root / "test" / "mine" / "gnd_mine.pkl")
    with pytest.raises(DatasetFileError, match=r"gnd_mine\.pkl: its entries hold"):
        evaluate(network, _settings(root).but(datasets=("synth-oxford", "mine")))


def test_one_key_serves_the_cache_the_distractor_store_and_the_whitening(root, network):
    settings = _settings(root, whitening="synth-sfm", reranking=Reranking(qe=2))
    plan = TestPlan.of(network, settings)
    assert [test.name for test in plan.sets] == ["synth-oxford", "synth-paris+synth1m"]
    assert [test.distractors for test in plan.sets] == [None, "synth1m"] and list(plan.distractors) == ["synth1m"]
    store = plan.distractors["synth1m"]
    assert store.key.descriptors == plan.key and len(store.images) == 150
    assert plan.cache_dir == root.resolve() / "features" / "cache" and plan.device == "cpu"
    assert plan.whitening is not None and plan.whitening.known is None and len(plan.whitening.db["images"]) > 0
    results = evaluate(network, settings)
    assert results["synth-paris+synth1m"].distractors.store == str(store.folder)
    cached = sorted(path.name for path in plan.cache_dir.iterdir())
    assert cached == [f"{test.dataset}_{plan.key.digest(test.images)}.npy" for test in plan.sets]


def test_test_sets_given_as_one_string_are_split_at_commas():
    """TestSettings(datasets="synth-oxford") was read a letter at a time ("unknown dataset: s")."""
    from aml.evaluation import TestSettings

    assert TestSettings(datasets="synth-oxford").datasets == ("synth-oxford",)
    assert TestSettings(datasets="synth-oxford,synth-paris+synth1m").datasets == ("synth-oxford", "synth-paris+synth1m")


@pytest.mark.parametrize("fields, message", [
    (dict(report_top=50), "report_top=50 is read only with report_dir"),
    (dict(datasets="roxford5k", distractor_dtype="float16"), "distractor_dtype='float16' is read only with a distractor set"),
    (dict(datasets=("roxford5k", "rparis6k"), shard_size=64), "shard_size=64 is read only with a distractor set"),
])
def test_settings_a_test_would_ignore_are_refused_as_test_pys_flags_are(fields, message):
    """A report's size without a report, a distractor store's without a distractor set: test.py
    refuses the flags, and Python took the fields without a word."""
    from aml.evaluation import TestSettings
    from aml.utils.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        TestSettings(**fields)
    assert TestSettings(datasets="roxford5k+1m,rparis6k", shard_size=64, report_dir="out", report_top=5).shard_size == 64
