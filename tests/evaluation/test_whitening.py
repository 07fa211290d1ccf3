"""Whitening against the original's numbers and its defining properties."""

import numpy as np
import pytest
import torch

from aml.evaluation.whitening import cholesky, pcawhitenlearn, whitenapply, whitenlearn

X = np.array([[1, 0, 0.6, 0.9, 0.1, 0.3], [0, 1, 0.8, 0.1, 0.9, 0.7], [0.2, 0.1, 0.3, 0.5, 0.4, 0.6]])
QIDXS, PIDXS = [0, 1, 2], [3, 4, 5]


def test_whitenlearn_matches_original_numbers():
    m, P = whitenlearn(X, QIDXS, PIDXS)
    assert m.ravel() == pytest.approx([0.5333333, 0.6, 0.2], abs=1e-6)
    first = whitenapply(X, m, P)[:, 0]
    assert np.abs(first) == pytest.approx([0.99620, 0.07929, 0.03599], abs=1e-4)


def test_whitening_makes_pair_differences_isotropic():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(4, 200))
    q, p = list(range(0, 100)), list(range(100, 200))
    m, P = whitenlearn(data, q, p)
    diff = P @ (data[:, q] - data[:, p])
    assert diff @ diff.T / 100 == pytest.approx(np.eye(4), abs=1e-8)


def test_whitenapply_keeps_first_dimensions_and_normalises():
    m, P = whitenlearn(X, QIDXS, PIDXS)
    out = whitenapply(X, m, P, dimensions=2)
    assert out.shape == (2, 6)
    assert np.linalg.norm(out, axis=0) == pytest.approx(np.ones(6), abs=1e-5)


def test_cholesky_adds_ridge_to_singular_matrix():
    """The first ridge that makes it positive definite (1e-10), not a larger one."""
    L = cholesky(np.zeros((2, 2)))
    np.testing.assert_allclose(L @ L.T, np.eye(2) * 1e-10, rtol=1e-6, atol=0)
    L = cholesky(np.array([[1.0, 1.0], [1.0, 1.0]]))  # singular: one ridge of 1e-10 makes it definite
    np.testing.assert_allclose(L @ L.T, np.array([[1.0, 1.0], [1.0, 1.0]]) + 1e-10 * np.eye(2), rtol=0, atol=1e-15)


def test_pca_whitening_gives_identity_covariance():
    rng = np.random.default_rng(1)
    data = rng.normal(size=(3, 500)) * np.array([[5.0], [1.0], [0.2]])
    m, P = pcawhitenlearn(data)
    y = P @ (data - m)
    assert y @ y.T / 500 == pytest.approx(np.eye(3), abs=1e-8)


CHECKS = [
    (np.zeros((4, 1)), np.full((4, 4), np.nan), r"lw.pth holds 16 NaN or infinite values \(in float32\): it is damaged"),
    # finite in float64, infinite in the float32 that whitens (the export blamed the pooling)
    (np.zeros((4, 1)), np.eye(4) * 1e300, r"lw.pth holds 4 NaN or infinite values \(in float32\)"),
    (torch.zeros(4, 1), torch.eye(4).to_sparse(), r"m and P are Tensor, Tensor, not arrays of numbers"),
    (np.array([[0.0], [np.inf], [0.0], [0.0]]), np.eye(4), r"lw.pth holds 1 NaN or infinite values"),
    (np.zeros((3, 1)), np.eye(3), r"lw.pth: m of shape \(3, 1\) and P of shape \(3, 3\) do not whiten 4-d descriptors"),
    (np.zeros((4, 1)), np.eye(4)[:, :2], r"P of shape \(4, 2\) do not whiten 4-d"),
    (np.zeros((4, 1)), np.zeros((5, 4)), r"P of shape \(5, 4\) do not whiten 4-d"),
    (np.zeros(4), np.zeros(4), r"P of shape \(4,\) do not whiten"),
    ("garbage", np.eye(4), r"lw.pth is not a whitening: m and P are str, ndarray, not arrays of numbers"),
    (np.zeros((4, 1)), np.array([["a"] * 4] * 4), r"m and P are ndarray, ndarray, not arrays of numbers"),
    (None, {"P": 1}, r"m and P are NoneType, dict"),
    # all-zero rows whiten every descriptor to zero there (an export folded one in without a word)
    (np.zeros((4, 1)), np.zeros((4, 4)), r"lw.pth: 4 of P's 4 rows are all zero, so every whitened descriptor"),
    (np.zeros((4, 1)), np.diag([1.0, 1.0, 0.0, 1.0]), r"1 of P's 4 rows are all zero"),
]


def test_a_whitening_of_torch_tensors_is_taken():
    from aml.evaluation.whitening import check_whitening

    m, P = check_whitening(torch.zeros(4, 1), torch.eye(4), 4, "lw.pth")
    assert isinstance(P, np.ndarray) and np.array_equal(P, np.eye(4))
    m, P = check_whitening(torch.zeros(4, 1, dtype=torch.bfloat16), torch.eye(4, dtype=torch.bfloat16), 4, "lw.pth")
    assert np.array_equal(P, np.eye(4))  # bfloat16, which numpy lacks: a TypeError


@pytest.mark.parametrize("m, P, message", CHECKS)
def test_a_whitening_that_is_not_one_is_refused_by_name(m, P, message):
    from aml.evaluation.whitening import WhiteningError, check_whitening

    with pytest.raises(WhiteningError, match=message):
        check_whitening(m, P, 4, "lw.pth")


def test_a_checked_whitening_applies_as_before_and_a_non_finite_result_is_refused():
    from aml.evaluation.whitening import WhiteningError, check_whitening, whitened

    rng = np.random.default_rng(0)
    X, m, P = rng.normal(size=(4, 6)), rng.normal(size=4), rng.normal(size=(2, 4))  # m of D values: a column
    checked = check_whitening(m, P, 4, "lw.pth")
    assert np.array_equal(whitened(X, checked, "test"), whitenapply(X, m[:, None], P))
    with pytest.raises(WhiteningError, match="whitening made 1 of the 6 test descriptors NaN or infinite"):
        whitened(np.where(np.arange(6) == 2, np.nan, X), checked, "test")


def test_a_store_is_whitened_a_block_at_a_time_into_float32_as_all_at_once(monkeypatch):
    """Opening a whitened search store of N descriptors held float64 copies of 4 x N x D: the
    blocks give each column the values of the whole array's whitening, and count every bad one."""
    import aml.evaluation.whitening as whitening
    from aml.evaluation.whitening import WhiteningError, check_whitening, whitened_float32

    monkeypatch.setattr(whitening, "WHITENING_BLOCK", 3)
    rng = np.random.default_rng(1)
    X = rng.normal(size=(4, 10)).astype(np.float32)
    checked = check_whitening(rng.normal(size=4), rng.normal(size=(3, 4)), 4, "lw.pth")
    Y = whitened_float32(X, checked, "store")
    assert Y.dtype == np.float32 and Y.shape == (3, 10) and Y.T.flags.c_contiguous
    assert np.array_equal(Y, whitenapply(X, *checked).astype(np.float32))
    X[:, [1, 7]] = np.inf
    with np.errstate(all="raise"):  # refused by aml's error alone, not numpy's warning before it
        with pytest.raises(WhiteningError, match="whitening made 2 of the 10 store descriptors NaN or infinite"):
            whitened_float32(X, checked, "store")


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def test_rows_whitened_in_float64_by_torch_equal_whitenapply():
    """The arithmetic a CUDA device runs on distractor blocks (`whitenapply_rows`), here on the
    CPU: the same float64 values as numpy's, a reduced projection (d < D) included."""
    from aml.evaluation.whitening import whitenapply_rows

    rng = np.random.default_rng(1)
    X, m, P = rng.normal(size=(8, 40)).astype(np.float32), rng.normal(size=(8, 1)), rng.normal(size=(5, 8))
    rows = whitenapply_rows(torch.from_numpy(X.T.copy()), m, P)
    assert rows.dtype == torch.float64 and rows.shape == (40, 5)
    np.testing.assert_allclose(rows.numpy().T, whitenapply(X, m, P), rtol=0, atol=1e-12)


def test_a_whitening_is_put_on_the_device_once_for_all_blocks_of_distractors(monkeypatch):
    """On CUDA each block of distractors copied the mean and the D x D projection from the host
    again (32 MiB and a wait per block at 2048-d): the database puts them there once
    (`whitening_on`), and every block uses those tensors, with the arrays' values."""
    import aml.evaluation.database as database_module
    from aml.evaluation.database import Distractors, TestDatabase
    from aml.evaluation.whitening import whitenapply_rows, whitening_on

    rng = np.random.default_rng(2)
    m, P = rng.normal(size=(8, 1)), rng.normal(size=(5, 8))
    assert whitening_on((m, P), "cpu")[1] is P  # the host's whitenapply takes the arrays
    tensors = tuple(torch.as_tensor(part, dtype=torch.float64) for part in (m, P))  # what CUDA gets, on the CPU
    calls = []
    monkeypatch.setattr(database_module, "whitening_on", lambda w, device: calls.append(device) or tensors)
    distractors = Distractors(lambda: iter(()), 0)
    whitened = TestDatabase(np.eye(8, 3), distractors=distractors, device="cuda").whitened((m, P), "set")
    assert calls == ["cuda"] and whitened.distractors.transform.keywords["whitening"] is tensors
    block = torch.from_numpy(rng.normal(size=(6, 8)).astype(np.float32))
    np.testing.assert_array_equal(whitenapply_rows(block, *tensors).numpy(), whitenapply_rows(block, m, P).numpy())


@pytest.mark.parametrize("device", DEVICES)
def test_rows_are_whitened_on_their_device_as_on_the_host_and_non_finite_ones_refused(device):
    from aml.evaluation.whitening import WhiteningError, check_whitening, whitened, whitened_rows, whitening_on

    rng = np.random.default_rng(2)
    X = rng.normal(size=(6, 50)).astype(np.float32)
    checked = check_whitening(rng.normal(size=6), rng.normal(size=(6, 6)), 6, "lw.pth")
    placed = whitening_on(checked, device)  # as the +1M test's database gives it (tensors on CUDA)
    rows = whitened_rows(torch.from_numpy(X.T.copy()).to(device), placed, "distractor")
    assert rows.device.type == device and rows.dtype == torch.float32
    host = whitened(X, checked, "distractor").astype(np.float32)
    if device == "cpu":  # the host's own arithmetic: bit for bit
        np.testing.assert_array_equal(rows.numpy().T, host)
    else:
        np.testing.assert_allclose(rows.cpu().numpy().T, host, rtol=0, atol=1e-6)
    X[3, 7] = np.nan
    with pytest.raises(WhiteningError, match="whitening made 1 of the 50 distractor descriptors NaN or infinite"):
        whitened_rows(torch.from_numpy(X.T.copy()).to(device), placed, "distractor")


def test_an_unreadable_image_of_the_whitening_set_is_left_out_with_its_pairs(tmp_path):
    """With --skip-bad-images its zero descriptor went into the mean and the pairs' scatter,
    and the whitening so learned was cached."""
    from types import SimpleNamespace

    from PIL import Image

    from aml.descriptors import ExtractionConfig, describe_images
    from aml.evaluation.whitening_store import WhiteningRequest, learn_whitening
    from aml.networks import build_network

    rng = np.random.default_rng(3)
    images = []
    for i in range(12):
        path = tmp_path / f"{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(path)
        images.append(str(path))
    (tmp_path / "5.jpg").write_bytes(b"truncated")
    torch.manual_seed(0)
    net = build_network("squeezenet1_1", pretrained=False).eval()
    db = {"images": images, "qidxs": [0, 2, 4, 6, 8, 10], "pidxs": [1, 3, 5, 7, 9, 11]}
    config = ExtractionConfig(workers=0, device="cpu", skip_bad=True)
    m, P = learn_whitening(SimpleNamespace(net=net, name="net"), WhiteningRequest("set", 32, extraction=config), db)
    good = [p for p in images if not p.endswith("5.jpg")]  # the pair (4, 5) goes with it
    vecs = describe_images(net, good, 32, config=config)
    m_good, P_good = whitenlearn(vecs, [0, 2, 5, 7, 9], [1, 3, 6, 8, 10])
    np.testing.assert_allclose(m, m_good, atol=1e-6)
    np.testing.assert_allclose(P, P_good, rtol=1e-4, atol=1e-4)


def test_a_whitening_of_fewer_pairs_than_dimensions_is_said(monkeypatch, caplog):
    """Learned from 900 pairs for 1280 dimensions, the synthetic teacher's whitening was nearly
    singular and lowered every mAP, with an info line about a ridge as its only trace."""
    from types import SimpleNamespace

    from aml.evaluation import whitening_store
    from aml.evaluation.whitening_store import WhiteningRequest, learn_whitening

    rng = np.random.default_rng(0)
    db = {"images": [f"{i}.jpg" for i in range(40)], "qidxs": list(range(20)), "pidxs": list(range(20, 40))}
    encoder = SimpleNamespace(net=None, name="net")
    for dim, said in ((32, True), (8, False)):
        monkeypatch.setattr(whitening_store, "describe_images", lambda *a, dim=dim, **k: rng.normal(size=(dim, 40)))
        caplog.clear()
        with caplog.at_level("WARNING", logger="aml.evaluation.whitening_store"):
            learn_whitening(encoder, WhiteningRequest("mine", 32), db)
        assert ("mine: 20 pairs for 32-d descriptors: with fewer pairs than dimensions the whitening is nearly "
                "singular" in caplog.text) == said


def test_a_published_students_whitening_file_serves_only_the_set_it_was_learned_on(tmp_path, monkeypatch):
    """It served any -w SET (the original's too): `-w synth-sfm` printed `+ whiten` lines and
    recorded synth-sfm for a whitening learned on retrieval-SfM-120k."""
    from aml.evaluation.whitening_store import WhiteningRequest, known_whitening
    from aml.networks import build_network, loading
    from aml.networks.loading import LoadedNetwork, NetworkSpec
    from aml.utils.plain_files import save_plain_file

    downloads = []

    def download(url, path, progress=True):
        downloads.append(url)
        save_plain_file({"m": np.zeros((512, 1)), "P": np.eye(512)}, path)
        return path

    monkeypatch.setattr(loading, "download_file", download)
    student = LoadedNetwork(build_network("mobilenet_v2", pretrained=False, teacher_dim=512),
                            NetworkSpec.parse("mobilenet-v2-gem-contr-vgg16"))
    assert known_whitening(student, WhiteningRequest("synth-sfm", 64, data_root=tmp_path)) is None and not downloads
    m, P = known_whitening(student, WhiteningRequest("retrieval-SfM-120k", 64, data_root=tmp_path))
    assert downloads[0].endswith("mobilenet_v2_gem_contr_vgg16_whitening.pth") and np.array_equal(P, np.eye(512))
    # the set's name in another case is the set (-w retrieval-sfm-120k learned a whitening on 120k images)
    m, P = known_whitening(student, WhiteningRequest("RETRIEVAL-SFM-120K", 64, data_root=tmp_path))
    assert np.array_equal(P, np.eye(512)) and WhiteningRequest("Synth-SfM", 64).whitening_set == "synth-sfm"
    student.net.meta["Lw"] = {"synth-sfm": {"ss": {"m": np.ones((512, 1)), "P": 2 * np.eye(512)}}}
    m, P = known_whitening(student, WhiteningRequest("SYNTH-SFM", 64, data_root=tmp_path))
    assert np.array_equal(P, 2 * np.eye(512))


def test_whitening_arguments_of_the_wrong_shape_are_refused():
    """X.T was an IndexError (learn) or a broadcast error (apply); a mean of shape (D,) with as
    many images as dimensions was broadcast along the images. A PCA whitening of fewer images
    than dimensions stays allowed (its leading rows whiten)."""
    from aml.utils.errors import ConfigError

    rng = np.random.default_rng(0)
    X = rng.normal(size=(16, 60))
    X /= np.linalg.norm(X, axis=0)
    m, P = whitenlearn(X, range(20), range(20, 40))
    square = X[:, :16]
    np.testing.assert_allclose(whitenapply(square, m.ravel(), P), whitenapply(square, m, P), atol=1e-12)
    with pytest.raises(ConfigError, match=r"whitenlearn takes D x N .* got \(60, 16\)"):
        whitenlearn(X.T, range(20), range(20, 40))
    with pytest.raises(ConfigError, match=r"3 queries and 4 positives"):
        whitenlearn(X, range(3), range(4))
    with pytest.raises(ConfigError, match=r"whitenapply takes D x N .* got X \(60, 16\)"):
        whitenapply(X.T, m, P)
    with pytest.raises(ConfigError, match=r"pcawhitenlearn takes D x N descriptors, one column per image: got \(60,\)"):
        pcawhitenlearn(X[0])
    m, P = pcawhitenlearn(X[:, :10])  # 10 images, 16 dimensions: the 9 leading rows whiten them
    Y = P[:9] @ (X[:, :10] - m)
    np.testing.assert_allclose(Y @ Y.T / 10, np.eye(9), atol=1e-6)


def _images_and_encoder(folder, count):
    """``count`` random photos and a random SqueezeNet read from its checkpoint, in ``folder``."""
    from PIL import Image

    from aml.networks import build_network
    from aml.networks.checkpoint import checkpoint_state, save_checkpoint
    from aml.networks.loading import load_named_or_file

    rng = np.random.default_rng(4)
    images = []
    for i in range(count):
        images.append(str(folder / f"{i}.jpg"))
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(images[-1])
    torch.manual_seed(0)
    encoder = load_named_or_file(save_checkpoint(checkpoint_state(build_network("squeezenet1_1", pretrained=False),
                                                                  1, 0.0), folder / "net.pth.tar"))
    return images, encoder


def test_the_whitening_cache_is_keyed_by_its_pairs_and_never_holds_one_learned_without_images(tmp_path, caplog,
                                                                                              lock):
    """The cache's key covered the images, not the query/positive pairs: a whitening db whose
    pairs were edited alone read the old whitening. And one learned with --skip-bad-images was
    cached, so a later run without the flag read it without a word of the image it lacks."""
    from aml.descriptors import DescriptorKey, ExtractionConfig
    from aml.evaluation.whitening_store import WhiteningRequest, learned_whitening

    images, encoder = _images_and_encoder(tmp_path, 12)
    config = ExtractionConfig(workers=0, device="cpu")
    request = WhiteningRequest("set", 32, extraction=config)
    key = DescriptorKey.of(encoder.net, 32, (1.0,), config)
    db = {"images": images, "qidxs": [0, 2, 4, 6, 8, 10], "pidxs": [1, 3, 5, 7, 9, 11]}
    first = learned_whitening(encoder, request, db, key)
    cache = tmp_path / "net.pth.tar_set_whiten_32.pth"
    assert cache.is_file()
    fewer = dict(db, qidxs=[0, 2, 4, 6], pidxs=[1, 3, 5, 7])  # the pairs edited, the images as they were
    with caplog.at_level("INFO", logger="aml.evaluation.whitening_store"):
        second = learned_whitening(encoder, request, fewer, key)
    assert "learning it again" in caplog.text and not np.allclose(first[1], second[1])
    lock(cache)  # another user's cache in a shared data root: optional, learned again (NoAccess stopped test.py)
    caplog.clear()
    with caplog.at_level("INFO", logger="aml.evaluation.whitening_store"):
        np.testing.assert_allclose(learned_whitening(encoder, request, fewer, key)[1], second[1], rtol=1e-5)
    assert "the whitening cache cannot be used, learning it again" in caplog.text and "Permission denied" in caplog.text
    cache.unlink()
    (tmp_path / "5.jpg").write_bytes(b"truncated")
    skipping = WhiteningRequest("set", 32, extraction=config.but(skip_bad=True))
    learned_whitening(encoder, skipping, db, DescriptorKey.of(encoder.net, 32, (1.0,), skipping.extraction))
    assert not cache.exists()  # learned without an image: not for a run that stops at it


def test_a_cache_saved_under_another_case_of_the_sets_name_is_read(tmp_path, caplog):
    """An older aml saved -w SYNTH-SFM's whitening as <ckpt>_SYNTH-SFM_whiten_..., which the
    registry's spelling (synth-sfm) no longer named: it was learned again (hours for
    retrieval-SfM-120k) and the old file left beside the new one."""
    from aml.descriptors import DescriptorKey, ExtractionConfig
    from aml.evaluation.whitening_store import WhiteningRequest, learned_whitening

    images, encoder = _images_and_encoder(tmp_path, 8)
    config = ExtractionConfig(workers=0, device="cpu")
    key = DescriptorKey.of(encoder.net, 32, (1.0,), config)
    db = {"images": images, "qidxs": [0, 2, 4, 6], "pidxs": [1, 3, 5, 7]}
    first = learned_whitening(encoder, WhiteningRequest("synth-sfm", 32, extraction=config), db, key)
    (tmp_path / "net.pth.tar_synth-sfm_whiten_32.pth").rename(tmp_path / "net.pth.tar_SYNTH-SFM_whiten_32.pth")
    with caplog.at_level("INFO", logger="aml.evaluation.whitening_store"):
        again = learned_whitening(encoder, WhiteningRequest("SYNTH-SFM", 32, extraction=config), db, key)
    assert "whitening read from" in caplog.text and "Learning whitening" not in caplog.text
    assert np.array_equal(first[1], again[1]) and not (tmp_path / "net.pth.tar_synth-sfm_whiten_32.pth").exists()


def test_a_numpy_array_given_as_a_whitening_file_is_told_what_to_give(tmp_path):
    """The fix named was a checkpoint's ("give the checkpoint or weights file")."""
    from aml.evaluation.whitening_store import read_whitening_file
    from aml.networks.checkpoint import CheckpointError

    np.save(tmp_path / "lw.npy", np.eye(4))
    with pytest.raises(CheckpointError, match=r"lw.npy is a numpy array \(.npy\), not a PyTorch file; give a whitening "
                                              r"file \(torch.save of \{'m': ..., 'P': ...\}"):
        read_whitening_file(tmp_path / "lw.npy", 4)
