"""Decoding on the device: what travels as bytes, what PIL decodes, and how close the pixels are.

Parametrised over the devices present: the CPU always (libjpeg through torchvision), CUDA
(nvJPEG) where there is one."""

import numpy as np
import pytest
import torch
from PIL import Image

import aml.data.encoded_images as encoded_images
from aml.data.encoded_images import EncodedImagesFromList, decode_batch, read_payload
from aml.data.images import ImageLoadError, image_transform, load_and_resize

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def smooth_image(rng, width: int, height: int) -> Image.Image:
    small = rng.integers(0, 256, size=(max(1, height // 8), max(1, width // 8), 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """One file of every kind the device path must handle."""
    folder = tmp_path_factory.mktemp("kinds")
    rng = np.random.default_rng(1)
    out = {}

    def save(name, image, **options):
        out[name] = folder / name
        image.save(out[name], **options)

    save("landscape.jpg", smooth_image(rng, 160, 120), quality=92)
    save("portrait.jpg", smooth_image(rng, 120, 160), quality=92)
    save("progressive.jpg", smooth_image(rng, 150, 100), quality=90, progressive=True)
    save("gray.jpg", smooth_image(rng, 160, 120).convert("L"), quality=90)
    save("cmyk.jpg", smooth_image(rng, 160, 120).convert("CMYK"), quality=90)
    save("image.png", smooth_image(rng, 160, 120))
    save("small.jpg", smooth_image(rng, 40, 30), quality=92)  # never enlarged
    good = out["landscape.jpg"].read_bytes()
    out["truncated.jpg"] = folder / "truncated.jpg"
    out["truncated.jpg"].write_bytes(good[:len(good) // 2])
    out["not_an_image.jpg"] = folder / "not_an_image.jpg"
    out["not_an_image.jpg"].write_bytes(b"hello, not a jpeg")
    return out


@pytest.mark.parametrize("name, encoded", [("landscape.jpg", True), ("progressive.jpg", True), ("gray.jpg", True),
                                           ("cmyk.jpg", False), ("image.png", False), ("small.jpg", True)])
def test_jpegs_travel_as_bytes_everything_else_as_pil_pixels(files, name, encoded):
    payload = read_payload(files[name], 96)
    assert payload.encoded is encoded
    expected = load_and_resize(files[name], 96)
    assert payload.shape == (expected.height, expected.width)
    if not encoded:
        assert payload.data.dtype == torch.uint8 and tuple(payload.data.shape) == (3, expected.height, expected.width)


def test_a_crop_is_decoded_by_pil(files):
    payload = read_payload(files["landscape.jpg"], 96, bbx=(10, 10, 90, 70))
    expected = load_and_resize(files["landscape.jpg"], 96, (10, 10, 90, 70))
    assert not payload.encoded and payload.shape == (expected.height, expected.width)
    assert torch.equal(payload.data, torch.from_numpy(np.array(expected)).permute(2, 0, 1))


@pytest.mark.parametrize("name", ["truncated.jpg", "not_an_image.jpg", "missing.jpg"])
def test_bad_files_are_named_in_the_worker(files, tmp_path, name):
    path = files.get(name, tmp_path / name)
    with pytest.raises(ImageLoadError, match=name):
        EncodedImagesFromList([path], 96)[0]


def grey_levels(batch: torch.Tensor) -> np.ndarray:
    """Normalised images back to 0..255 (H x W x 3 per image)."""
    pixels = batch * torch.tensor(STD).view(1, 3, 1, 1) * 255 + torch.tensor(MEAN).view(1, 3, 1, 1) * 255
    return pixels.round().permute(0, 2, 3, 1).numpy().astype(np.int64)


@pytest.mark.kernels
@pytest.mark.parametrize("imsize", [160, 96, 57])
def test_device_pixels_on_the_cpu_are_pils_own(files, imsize):
    """libjpeg through torchvision and PIL's LANCZOS arithmetic on tensors: PIL's bytes (nvJPEG's
    distance to them: benchmarks/decoding.py on a GPU), normalised to the very float32 values
    of the PIL path's ToTensor and Normalize."""
    names = ["landscape.jpg", "portrait.jpg", "progressive.jpg", "gray.jpg", "cmyk.jpg", "image.png", "small.jpg"]
    transform = image_transform(MEAN, STD)
    for name in names:
        payload = read_payload(files[name], imsize)
        batch = decode_batch([payload], torch.device("cpu"), MEAN, STD)
        reference = load_and_resize(files[name], imsize)
        assert np.array_equal(grey_levels(batch)[0], np.asarray(reference, dtype=np.int64)), (name, imsize)
        assert torch.equal(batch[0], transform(reference)), (name, imsize)
        assert payload.encoded is (name.endswith(".jpg") and name != "cmyk.jpg")


@pytest.mark.kernels
@pytest.mark.parametrize("device", DEVICES)
def test_workers_pixels_are_the_pil_paths_tensors(files, device):
    """decode="workers": PIL decodes in the worker, uint8 travels, the device normalises to
    the values the PIL path's transform gives in the worker (on CUDA too: true divisions)."""
    names = ["landscape.jpg", "portrait.jpg", "gray.jpg", "cmyk.jpg", "image.png"]
    payloads = [read_payload(files[name], 96, pil_only=True) for name in names]
    assert not any(p.encoded for p in payloads) and all(p.data.dtype == torch.uint8 for p in payloads)
    transform = image_transform(MEAN, STD)
    for name, payload in zip(names, payloads, strict=True):
        expected = transform(load_and_resize(files[name], 96))
        assert torch.equal(decode_batch([payload], torch.device(device), MEAN, STD)[0].cpu(), expected), name


def test_a_jpeg_that_pil_reduces_before_resizing_is_decoded_by_pil(files):
    """thumbnail first reduces a source 4 times the output or more (reducing_gap 2): those
    pixels come from PIL in the worker, not from the device."""
    shrunk = read_payload(files["landscape.jpg"], 40)  # 160 x 120 to 40 x 30: 4 times
    assert not shrunk.encoded and shrunk.shape == (30, 40)
    expected = np.asarray(load_and_resize(files["landscape.jpg"], 40), dtype=np.int64)
    assert np.array_equal(shrunk.data.permute(1, 2, 0).numpy(), expected)
    assert read_payload(files["landscape.jpg"], 41).encoded  # less than 4 times: the device's


def test_sources_of_two_sizes_resize_into_one_batch(tmp_path):
    rng = np.random.default_rng(4)
    paths = []
    for k, size in enumerate([(320, 240), (160, 120), (320, 240)]):
        paths.append(tmp_path / f"{k}.jpg")
        smooth_image(rng, *size).save(paths[-1], quality=90)
    payloads = [read_payload(path, 96) for path in paths]
    assert {p.shape for p in payloads} == {(72, 96)} and all(p.encoded for p in payloads)
    batch = decode_batch(payloads, torch.device("cpu"), MEAN, STD)
    expected = np.stack([np.asarray(load_and_resize(path, 96), dtype=np.int64) for path in paths])
    assert np.array_equal(grey_levels(batch), expected)


@pytest.mark.parametrize("device", DEVICES)
def test_a_batch_of_one_shape_decodes_together(files, device):
    payloads = [read_payload(files[n], 96) for n in ("landscape.jpg", "gray.jpg", "cmyk.jpg")]
    assert len({p.shape for p in payloads}) == 1
    batch = decode_batch(payloads, torch.device(device), MEAN, STD)
    alone = torch.cat([decode_batch([p], torch.device(device), MEAN, STD) for p in payloads])
    assert torch.allclose(batch, alone, atol=1e-5)


def test_a_file_the_device_refuses_goes_through_pil_or_is_named(files, monkeypatch, tmp_path):
    good = read_payload(files["landscape.jpg"], 96)
    calls = []

    def refuse_batches(data, device):
        calls.append(len(data))
        if len(data) > 1:
            raise RuntimeError("nvjpeg refused one file")
        return real(data, device)

    real = encoded_images._decode_jpegs
    monkeypatch.setattr(encoded_images, "_decode_jpegs", refuse_batches)
    twice = decode_batch([good, good], torch.device("cpu"), MEAN, STD)
    assert calls == [2, 1, 1] and twice.shape[0] == 2

    # bytes the device cannot decode, and a file on disk that PIL cannot decode either
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really")
    bad = encoded_images.ImagePayload(str(broken), good.shape, good.data, True, 96)
    monkeypatch.setattr(encoded_images, "_decode_jpegs", lambda data, device: (_ for _ in ()).throw(RuntimeError("x")))
    with pytest.raises(ImageLoadError, match="broken.jpg"):
        decode_batch([bad], torch.device("cpu"), MEAN, STD)
    failed = []
    pixels = encoded_images.ImagePayload(str(files["landscape.jpg"]), good.shape,
                                         torch.zeros(3, *good.shape, dtype=torch.uint8), False, 96)
    out = decode_batch([bad, pixels], torch.device("cpu"), MEAN, STD, failed)
    assert failed == [0] and out.shape[0] == 1
    assert decode_batch([bad], torch.device("cpu"), MEAN, STD, []) is None


def test_the_loaders_pinning_copies_a_payloads_pixels_and_keeps_the_rest(files, monkeypatch):
    """What the loader's pinning thread does with a batch of payloads, on the CPU: each payload's
    pixels are pinned (here: recorded and copied), its path, shape and kind kept."""
    from torch.utils.data._utils.pin_memory import pin_memory

    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *args, **kwargs: pinned.append(self) or self.clone())
    payload = read_payload(files["landscape.jpg"], 96, pil_only=True)  # pixels: what the loader pins
    [copy] = pin_memory([payload])
    assert len(pinned) == 1 and pinned[0] is payload.data and copy.data is not payload.data
    assert torch.equal(copy.data, payload.data) and copy.data.dtype == torch.uint8 and copy.data.shape[0] == 3
    assert (copy.path, copy.shape, copy.encoded, copy.imsize) == (payload.path, payload.shape, False, 96)


def test_payloads_pin_for_cuda(files):
    payload = read_payload(files["landscape.jpg"], 96)
    if not torch.cuda.is_available():
        pytest.skip("pinning needs CUDA")
    assert payload.pin_memory().data.is_pinned()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the stream ordering of nvJPEG's output needs CUDA")
def test_cuda_decoding_never_writes_memory_that_queued_kernels_still_read(files):
    """torchvision's decoder writes its output from a stream of its own; allocated on the
    compute stream, that output could take a block freed while queued kernels still read it
    (pytorch/vision#9606). Blocks of the decoded images' size are freed with reductions of
    them queued behind a long kernel, then a batch is decoded: every reduction sees its
    values, and the images come out as decoded alone."""
    device = torch.device("cuda")
    decoder = encoded_images.DeviceDecoder(device, MEAN, STD)
    payloads = [read_payload(files["landscape.jpg"], None)] * 8
    expected = decoder.batch(payloads).cpu()
    shape = tuple(expected.shape[1:])
    for _ in range(10):
        blocks = [torch.full(shape, k, dtype=torch.uint8, device=device) for k in range(1, 17)]
        slow = torch.randn(2048, 2048, device=device)
        for _ in range(30):
            slow = slow @ slow / 2048
        sums = [block.sum() for block in blocks]  # queued behind the slow kernels
        del blocks
        got = decoder.batch(payloads)
        torch.cuda.synchronize()
        assert [int(s) for s in sums] == [k * 3 * shape[1] * shape[2] for k in range(1, 17)]
        assert torch.allclose(got.cpu(), expected)


def test_an_image_size_below_one_pixel_gives_a_one_pixel_side(files):
    """As load_and_resize: never a side of 0 (a multi-scale of a tiny size)."""
    payload = read_payload(files["landscape.jpg"], 0.5)
    expected = load_and_resize(files["landscape.jpg"], 0.5)
    assert payload.shape == (expected.height, expected.width) == (1, 1)


def test_one_decoding_stream_serves_every_extraction_on_a_device(monkeypatch):
    """Each extraction took a CUDA stream of its own: the allocator reuses a freed block only on
    the stream it was allocated on, so every call's decoded images stayed reserved until CUDA's
    32 streams came round again."""
    from aml.data import encoded_images

    made = []
    monkeypatch.setattr(torch.cuda, "Stream", lambda device: made.append(device) or object())
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    encoded_images._decoding_stream.cache_clear()
    try:
        streams = [encoded_images._DecodeStream(torch.device(name)).stream for name in ("cuda", "cuda:0", "cuda:0")]
        assert len(made) == 1 and streams[0] is streams[1] is streams[2]
        encoded_images._DecodeStream(torch.device("cuda:1"))
        assert made == [torch.device("cuda", 0), torch.device("cuda", 1)]  # one per device
        assert encoded_images._DecodeStream(torch.device("cpu")).stream is None
    finally:
        encoded_images._decoding_stream.cache_clear()  # no stub left for the other tests
