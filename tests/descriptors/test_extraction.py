"""The one extraction function: batching must not change any descriptor."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from aml.data.images import ImageLoadError, image_transform, load_and_resize
from aml.descriptors import extract_vectors
from aml.networks import build_network


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(14):
        w, h = [(80, 60), (60, 80), (70, 70), (90, 41)][i % 4]
        path = folder / f"{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return build_network("resnet18", pretrained=False).eval()


def reference(net, paths, imsize, bbxs=None, scales=(1,), msp=1.0):
    """The one-image-at-a-time loop of the original."""
    transform = image_transform(net.meta["mean"], net.meta["std"])
    columns = []
    with torch.no_grad():
        for i, path in enumerate(paths):
            x = transform(load_and_resize(path, imsize, bbxs[i] if bbxs else None)).unsqueeze(0)
            if list(scales) == [1]:
                columns.append(net(x)[:, 0])
                continue
            v = sum(net(x if s == 1 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)).pow(msp)
                    for s in scales) / len(scales)
            v = v.pow(1 / msp)
            columns.append((v / v.norm())[:, 0])
    return torch.stack(columns, dim=1)


@pytest.fixture
def real_workers(monkeypatch):
    """Use the requested loader workers even on a 2-core machine (exercise that path)."""
    import aml.descriptors.extraction

    monkeypatch.setattr(aml.descriptors.extraction, "effective_workers", lambda workers, device: workers)


def test_batched_equals_one_by_one(images, net, real_workers):
    transform = image_transform(net.meta["mean"], net.meta["std"])
    batched = extract_vectors(net, images, 64, transform, workers=2, batch_size=4)
    assert batched.shape == (512, len(images)) and batched.dtype == torch.float32
    assert torch.allclose(batched, reference(net, images, 64), atol=1e-5)


def test_bbx_crops_are_applied(images, net):
    transform = image_transform(net.meta["mean"], net.meta["std"])
    bbxs = [(5, 5, 40, 30)] * len(images)
    cropped = extract_vectors(net, images, 64, transform, bbxs=bbxs, workers=0)
    assert torch.allclose(cropped, reference(net, images, 64, bbxs), atol=1e-5)
    assert not torch.allclose(cropped, extract_vectors(net, images, 64, transform, workers=0), atol=1e-3)


def test_multiscale_with_gem_power(images, net):
    transform = image_transform(net.meta["mean"], net.meta["std"])
    scales = [1, 1 / 2 ** 0.5, 1 / 2]
    out = extract_vectors(net, images, 64, transform, ms=scales, msp=3.0, workers=0, batch_size=3)
    assert torch.allclose(out, reference(net, images, 64, scales=scales, msp=3.0), atol=1e-5)
    assert torch.allclose(out.norm(dim=0), torch.ones(len(images)), atol=1e-5)


def test_training_mode_is_restored(images, net):
    net.train()
    extract_vectors(net, images[:2], 64, image_transform(net.meta["mean"], net.meta["std"]), workers=0)
    assert net.training
    net.eval()


def test_bad_image_is_named_from_worker(images, net, tmp_path, real_workers):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"garbage")
    with pytest.raises(ImageLoadError, match="broken.jpg"):
        extract_vectors(net, images[:3] + [str(bad)], 64, image_transform(net.meta["mean"], net.meta["std"]), workers=1)


def test_cpu_workers_leave_cores_to_torch():
    from aml.descriptors import effective_workers

    assert effective_workers(8, torch.device("cuda")) == 8
    assert 0 <= effective_workers(8, torch.device("cpu")) <= max(0, (__import__("os").cpu_count() or 1) - torch.get_num_threads())


def test_skip_bad_leaves_a_zero_column_and_reports_it(images, net, tmp_path, real_workers):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"garbage")
    skipped = []
    transform = image_transform(net.meta["mean"], net.meta["std"])
    vecs = extract_vectors(net, images[:3] + [str(bad)] + images[3:5], 64, transform, workers=1, skip_bad=True,
                           skipped=skipped)
    assert skipped == [3] and torch.count_nonzero(vecs[:, 3]) == 0
    expected = extract_vectors(net, images[:5], 64, transform, workers=0)
    assert torch.allclose(vecs[:, [0, 1, 2, 4, 5]], expected, atol=1e-5)


def test_progress_bar_goes_to_stderr_only_when_asked(images, net, capsys):
    transform = image_transform(net.meta["mean"], net.meta["std"])
    extract_vectors(net, images[:4], 48, transform, workers=0, progress=True, desc="db")
    captured = capsys.readouterr()
    assert "db:" in captured.err and "/4 [" in captured.err and "img/s" in captured.err and captured.out == ""
    extract_vectors(net, images[:4], 48, transform, workers=0)
    assert capsys.readouterr().err == ""
