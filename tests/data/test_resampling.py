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


# (height, width) sources resized to (30, 40): width first, height first (Pillow 13), one axis
# already at the output's length (PIL skips that pass), both (resized by the loader's workers)
MIXED_SOURCES = [(45, 60), (44, 61), (40, 70), (100, 45), (90, 41), (30, 52), (33, 40), (30, 40)]


def _noise(shapes):
    rng = np.random.default_rng(7)
    return [torch.from_numpy(rng.integers(0, 256, (3,) + shape, dtype=np.uint8)) for shape in shapes]


@pytest.mark.parametrize("device", DEVICES)
def test_images_of_many_source_shapes_resize_together_as_each_alone(device):
    images = [image.to(device) for image in _noise(MIXED_SOURCES)]
    resize = LanczosResize(torch.device(device))
    alone = torch.cat([resize(image[None], (30, 40)) for image in images])
    for together in (resize.mixed(images, (30, 40)), resize.many(images, (30, 40))):
        assert together.dtype == torch.float32 and torch.equal(together, alone)


class _Calls(torch.overrides.TorchFunctionMode):
    """How many torch functions run while active (each at least one kernel on a GPU)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def test_the_calls_of_a_mixed_batch_grow_by_a_few_per_source_shape():
    """Resized one source shape at a time, a batch of photos of many sizes cost a few hundred
    torch calls (each a kernel or more on a GPU) per image; in one pass per axis, a few."""
    resize = LanczosResize(torch.device("cpu"))
    counts = {}
    for n in (2, 6):
        images = _noise([(45 + k, 60 + k) for k in range(n)])  # all width first
        for way in ("mixed", "alone"):
            with _Calls() as calls:
                if way == "mixed":
                    resize.mixed(images, (30, 40))
                else:
                    torch.cat([resize(image[None], (30, 40)) for image in images])
            counts[way, n] = calls.count
    assert counts["mixed", 6] - counts["mixed", 2] <= 4 * 8, counts  # its copy in and its row out: 6 here
    assert counts["alone", 6] - counts["alone", 2] >= 4 * 40, counts


def test_many_hands_several_shapes_to_mixed_off_the_cpu_unless_padding_doubles_the_pixels(monkeypatch):
    resize = LanczosResize(torch.device("cpu"))
    images = _noise(MIXED_SOURCES[:2])
    monkeypatch.setattr(resize, "mixed", lambda images, shape: "mixed")
    assert torch.is_tensor(resize.many(images, (30, 40)))  # the CPU: one source shape at a time
    resize.device = torch.device("cuda")  # its tensors stay on the CPU here
    monkeypatch.setattr(resampling, "to_device", lambda tensor, device: tensor)
    assert resize.many(images, (30, 40)) == "mixed"
    assert torch.is_tensor(resize.many(images[:1] * 2, (30, 40)))  # one source shape: stacked
    assert torch.is_tensor(resize.many(_noise([(31, 41), (32, 42), (110, 150)]), (30, 40)))  # padded: 2.6 times


def test_images_of_other_channel_counts_are_refused_in_either_order():
    gray, colour = torch.zeros((1, 45, 60), dtype=torch.uint8), torch.zeros((3, 44, 61), dtype=torch.uint8)
    for images in ([gray, colour], [colour, gray]):
        for way in ("many", "mixed"):
            with pytest.raises(ValueError, match=r"images of \[1, 3\] channels"):
                getattr(LanczosResize(torch.device("cpu")), way)(images, (30, 40))
