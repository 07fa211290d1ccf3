"""PIL's LANCZOS arithmetic on tensors: the bytes of ``thumbnail`` for every size it resizes in one step."""

import numpy as np
import pytest
import torch
from PIL import Image

from aml.data.images import resized_shape
import aml.data.resampling as resampling
from aml.data.resampling import LanczosResize, lanczos_taps, reduces_first

# the tall ones: Pillow 13 resizes them along the height first
SOURCES = [(160, 120), (120, 160), (97, 61), (333, 500), (1024, 768), (301, 900), (137, 1100), (900, 301)]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SIZES = [1000, 724, 362, 300, 160, 129, 96, 64, 41]


def thumbnail(array: np.ndarray, imsize: int) -> np.ndarray:
    image = Image.fromarray(array)
    image.thumbnail((imsize, imsize), Image.Resampling.LANCZOS)
    return np.asarray(image)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("source", SOURCES)
def test_every_one_step_shrink_gives_pils_bytes(source, device):
    """Noise and a 0/255 checkerboard (the kernel's negative lobes push sums past 0..255)."""
    width, height = source
    rng = np.random.default_rng(width * height)
    checker = ((np.indices((height, width)).sum(axis=0) % 2) * 255).astype(np.uint8)
    images = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8), np.repeat(checker[..., None], 3, axis=2)]
    resize = LanczosResize(torch.device(device))
    checked = 0
    for imsize in SIZES:
        shape = resized_shape(source, imsize)
        if reduces_first(source, shape):
            continue
        for array in images:
            out = resize(torch.from_numpy(array).permute(2, 0, 1)[None].to(device), shape)
            assert out.dtype == torch.float32 and tuple(out.shape) == (1, 3) + shape
            np.testing.assert_array_equal(out[0].permute(1, 2, 0).cpu().numpy(), thumbnail(array, imsize))
            checked += 1
    assert checked >= 6


def test_the_taps_of_one_axis():
    index, weight = lanczos_taps(1024, 362)
    assert index.shape == weight.shape == (362, 19)  # support 3 x 1024/362, both sides, and the centre
    assert np.all(np.abs(weight.sum(axis=1) - (1 << 22)) <= 19)  # weights sum to 1, each rounded
    assert index.min() == 0 and index.max() == 1023
    same, kept = lanczos_taps(5, 5)
    assert np.array_equal(kept.sum(axis=1), [1 << 22] * 5) and np.array_equal(same[:, 0], [0, 0, 0, 1, 2])


def test_the_taps_of_a_pair_of_lengths_are_computed_once_and_copied_without_waiting(monkeypatch):
    """Every extraction made a new resizer, which computed each pair's taps again (milliseconds
    of Python) and copied them with a blocking copy (a host sync on CUDA)."""
    computed, copied = [], []
    compute, copy = resampling.lanczos_taps, resampling.to_device
    monkeypatch.setattr(resampling, "lanczos_taps", lambda n, m: computed.append((n, m)) or compute(n, m))
    monkeypatch.setattr(resampling, "to_device", lambda t, device: copied.append(t.shape) or copy(t, device))
    resampling._host_taps.cache_clear()
    images = torch.randint(0, 256, (2, 3, 37, 53), dtype=torch.uint8)
    resized = [LanczosResize(torch.device("cpu"))(images, (20, 29)) for _ in range(2)]
    assert sorted(computed) == [(37, 20), (53, 29)]
    assert len(copied) == 8  # index and weight, of 2 axes, for each resizer
    assert torch.equal(resized[0], resized[1])
    monkeypatch.setattr(LanczosResize, "_pass", lambda *args: pytest.fail("an image of the output's shape resized"))
    assert torch.equal(LanczosResize(torch.device("cpu"))(images, (37, 53)), images.float())


@pytest.mark.parametrize("size, shape, reduces", [
    ((1024, 768), (272, 362), False),  # 2.8 times: one step
    ((1024, 768), (192, 256), True),   # 4 times: reduced by 2 first
    ((4000, 3000), (768, 1024), False),
    ((4000, 900), (225, 1000), True),
    ((160, 120), (30, 40), True),
    ((160, 120), (31, 41), False),
])
def test_a_source_four_times_the_output_is_reduced_first(size, shape, reduces):
    assert resized_shape(size, max(shape)) == shape and reduces_first(size, shape) is reduces
    array = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    if max(size) <= 1024 and not reduces:
        out = LanczosResize(torch.device("cpu"))(torch.from_numpy(array).permute(2, 0, 1)[None], shape)
        np.testing.assert_array_equal(out[0].permute(1, 2, 0).numpy(), thumbnail(array, max(shape)))
