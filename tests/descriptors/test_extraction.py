"""The one extraction function: batching must not change any descriptor."""

import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from aml.descriptors import ExtractionConfig
from aml.data.images import ImageLoadError, image_transform, load_and_resize
from aml.descriptors import extract_vectors
from aml.descriptors.extraction import NonFiniteDescriptors
from aml.utils.errors import ConfigError
from aml.networks import build_network

# Trains networks or starts processes for tens of seconds: started early (conftest).
pytestmark = pytest.mark.long


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
    batched = extract_vectors(net, images, 64, transform, config=ExtractionConfig(workers=2, batch_size=4))
    assert batched.shape == (512, len(images)) and batched.dtype == torch.float32
    assert torch.allclose(batched, reference(net, images, 64), atol=1e-5)


def test_the_descriptors_are_an_ordinary_tensor_as_cirtorchs(images, net):
    """They were an inference tensor: cirtorch-ported code that normalises in place or uses them
    as a loss's target failed ("Inplace update to inference tensor outside InferenceMode")."""
    transform = image_transform(net.meta["mean"], net.meta["std"])
    vecs = extract_vectors(net, images[:2], 64, transform, config=ExtractionConfig(workers=0))
    assert not vecs.is_inference()
    vecs.div_(2)
    weights = torch.ones(vecs.shape[0], requires_grad=True)
    ((weights @ vecs) ** 2).sum().backward()  # a target saved for backward
    assert weights.grad is not None
    for bad, message in ((dict(ms=[]), "no scales"), (dict(ms=[1, float("nan")]), r"scales must be positive"),
                         (dict(bbxs=[None]), r"1 boxes for 2 images")):
        with pytest.raises(ConfigError, match=message):
            extract_vectors(net, images[:2], 64, transform, config=ExtractionConfig(workers=0), **bad)


def test_bbx_crops_are_applied(images, net):
    transform = image_transform(net.meta["mean"], net.meta["std"])
    bbxs = [(5, 5, 40, 30)] * len(images)
    cropped = extract_vectors(net, images, 64, transform, bbxs=bbxs, config=ExtractionConfig(workers=0))
    assert torch.allclose(cropped, reference(net, images, 64, bbxs), atol=1e-5)
    assert not torch.allclose(cropped, extract_vectors(net, images, 64, transform,
                                                       config=ExtractionConfig(workers=0)), atol=1e-3)


def test_multiscale_with_gem_power(images, net):
    transform = image_transform(net.meta["mean"], net.meta["std"])
    scales = [1, 1 / 2 ** 0.5, 1 / 2]
    out = extract_vectors(net, images, 64, transform, ms=scales, msp=3.0,
                          config=ExtractionConfig(workers=0, batch_size=3))
    assert torch.allclose(out, reference(net, images, 64, scales=scales, msp=3.0), atol=1e-5)
    assert torch.allclose(out.norm(dim=0), torch.ones(len(images)), atol=1e-5)


def test_training_mode_is_restored(images, net):
    net.train()
    extract_vectors(net, images[:2], 64, image_transform(net.meta["mean"], net.meta["std"]),
                    config=ExtractionConfig(workers=0))
    assert net.training
    net.eval()


@pytest.mark.parametrize("workers", [0, 1])
def test_an_extraction_leaves_the_global_generator_alone(images, net, workers):
    """The loader drew its workers' base seed from torch's global generator: every call moved a
    caller's random stream on."""
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    extract_vectors(net, images[:2], 64, image_transform(net.meta["mean"], net.meta["std"]),
                    config=ExtractionConfig(workers=workers))
    assert torch.equal(torch.rand(3), expected)


def test_one_path_a_bad_image_size_or_a_loaded_network_is_refused(images, net):
    """A single path was read a character at a time ("image / is not a regular file"), an image
    size of 0 was a ZeroDivisionError inside an error message and NaN shrank every image to one
    pixel, and a LoadedNetwork was an AttributeError."""
    from aml.descriptors import describe_images
    from aml.networks import LoadedNetwork

    transform = image_transform(net.meta["mean"], net.meta["std"])
    with pytest.raises(ConfigError, match=r"images must be a list of image paths, got one str .*: give \['"):
        extract_vectors(net, str(images[0]), 64, transform)
    with pytest.raises(ConfigError, match=r"got a generator: give list\(...\) of it"):
        describe_images(net, (image for image in images), 64)
    for size in (0, float("nan"), "64", -3):
        with pytest.raises(ConfigError, match=r"image size .*: the longer side to shrink images to is a number > 0"):
            describe_images(net, images[:1], size)
    with pytest.raises(ConfigError, match=r"net is a LoadedNetwork: pass its network, net.net"):
        describe_images(LoadedNetwork.in_memory(net, "r18"), images[:1], 64)
    with pytest.raises(ConfigError, match=r"net must be a retrieval network with its meta .* got a Sequential"):
        extract_vectors(torch.nn.Sequential(), images[:1], 64, transform)
    with pytest.raises(ConfigError, match=r"ExtractionConfig\(device='gpu'\) is not a device: give 'cpu', 'cuda'"):
        ExtractionConfig(device="gpu")  # torch's RuntimeError at the first extraction
    assert ExtractionConfig(device=torch.device("cuda:1")).device == torch.device("cuda:1")  # checked when used


def test_bad_image_is_named_from_worker(images, net, tmp_path, real_workers):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"garbage")
    with pytest.raises(ImageLoadError, match="broken.jpg"):
        extract_vectors(net, images[:3] + [str(bad)], 64, image_transform(net.meta["mean"], net.meta["std"]),
                        config=ExtractionConfig(workers=1))


def test_non_finite_descriptors_are_refused_naming_the_first_image(images):
    torch.manual_seed(0)
    broken = build_network("resnet18", pretrained=False).eval()
    with torch.no_grad():
        broken.features[0].weight[0, 0, 0, 0] = float("inf")  # every image: inf - inf somewhere
    with pytest.raises(NonFiniteDescriptors, match=f"for {len(images)} of {len(images)} images \\(the first: "
                                                   f"{images[0]}\\); its weights are damaged \\(it ran in float32\\)"):
        extract_vectors(broken, images, 64, image_transform(broken.meta["mean"], broken.meta["std"]),
                        config=ExtractionConfig(workers=0))
    with pytest.raises(NonFiniteDescriptors, match=r"it overflowed in bfloat16 autocast or its weights are damaged; "
                                                   r"extract in float32 to tell \(--no-amp of main.py"):
        extract_vectors(broken, images[:2], 64, image_transform(broken.meta["mean"], broken.meta["std"]),
                        config=ExtractionConfig(workers=0, amp=True, amp_dtype="bfloat16"))


def test_cpu_workers_leave_cores_to_torch(monkeypatch):
    import os

    from aml.descriptors import effective_workers

    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    cpu = torch.device("cpu")
    for cores, workers in ((8, 5), (4, 1), (3, 0), (2, 0), (None, 0)):  # None: the count is unknown
        monkeypatch.setattr(os, "cpu_count", lambda: cores)
        assert effective_workers(8, cpu) == workers and effective_workers(8, torch.device("cuda")) == 8
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert effective_workers(2, cpu) == 2 and effective_workers(0, cpu) == 0


def test_skip_bad_leaves_a_zero_column_and_reports_it(images, net, tmp_path, real_workers):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"garbage")
    skipped = []
    transform = image_transform(net.meta["mean"], net.meta["std"])
    vecs = extract_vectors(net, images[:3] + [str(bad)] + images[3:5], 64, transform, skipped=skipped,
                           config=ExtractionConfig(workers=1, skip_bad=True))
    assert skipped == [3] and torch.count_nonzero(vecs[:, 3]) == 0
    expected = extract_vectors(net, images[:5], 64, transform, config=ExtractionConfig(workers=0))
    assert torch.allclose(vecs[:, [0, 1, 2, 4, 5]], expected, atol=1e-5)


def test_progress_bar_goes_to_stderr_only_when_asked(images, net, capsys):
    transform = image_transform(net.meta["mean"], net.meta["std"])
    extract_vectors(net, images[:4], 48, transform, config=ExtractionConfig(workers=0, progress=True, desc="db"))
    captured = capsys.readouterr()
    assert "db:" in captured.err and "/4 [" in captured.err and "img/s" in captured.err and captured.out == ""
    extract_vectors(net, images[:4], 48, transform, config=ExtractionConfig(workers=0))
    assert capsys.readouterr().err == ""


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# On the CPU torchvision's libjpeg and PIL's LANCZOS arithmetic give PIL's own pixels, so the
# descriptors differ by float rounding only. nvJPEG's pixels are further from PIL's: on the
# one H200 run (bicubic resizing then), descriptors of device-decoded images came within
# cosine 0.9985 of the PIL path (this test at 64 px).
DEVICE_DECODING_COSINE = {"cpu": 0.999999, "cuda": 0.995}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scales", [(1,), (1, 0.7071, 0.5)])
@pytest.mark.parametrize("amp", [False, None], ids=["fp32", "default-precision"])
def test_device_decoding_is_close_to_pil(images, net, device, scales, amp):
    transform = image_transform(net.meta["mean"], net.meta["std"])
    bbxs = [None, (5, 5, 50, 40)] * (len(images) // 2)
    pil = extract_vectors(net, images, 64, transform, bbxs=bbxs, ms=scales,
                          config=ExtractionConfig(decode="pil", device="cpu", amp=False))
    fast = extract_vectors(net, images, 64, transform, bbxs=bbxs, ms=scales,
                           config=ExtractionConfig(decode="device", device=device, amp=amp))
    cosines = (F.normalize(pil, dim=0) * F.normalize(fast, dim=0)).sum(0)
    assert cosines.min() > DEVICE_DECODING_COSINE[device], cosines
    net.to("cpu")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scales", [(1,), (1, 0.7071, 0.5)])
def test_the_default_path_of_each_device_is_within_cosine_0999_of_the_original(images, net, device, scales):
    """On CUDA: PIL pixels normalised on the GPU, float16 autocast, channels_last, batches."""
    transform = image_transform(net.meta["mean"], net.meta["std"])
    reference = extract_vectors(net, images, 64, transform, ms=scales,
                                config=ExtractionConfig(decode="pil", device="cpu", amp=False, channels_last=False,
                                                        batch_size=1))
    default = extract_vectors(net, images, 64, transform, ms=scales, config=ExtractionConfig(device=device))
    cosines = (F.normalize(reference, dim=0) * F.normalize(default, dim=0)).sum(0)
    assert cosines.min() > 0.999, cosines
    net.to("cpu")


def test_workers_decoding_gives_the_pil_pixels(images, net):
    transform = image_transform(net.meta["mean"], net.meta["std"])
    pil = extract_vectors(net, images, 64, transform, config=ExtractionConfig(decode="pil"))
    workers = extract_vectors(net, images, 64, transform, config=ExtractionConfig(decode="workers"))
    assert torch.equal(pil, workers)  # the same float32 inputs, normalised in the main process


@pytest.mark.parametrize("dtype, floor", [("float16", 0.9995), ("bfloat16", 0.99)])
def test_autocast_dtypes_on_the_cpu(images, net, dtype, floor):
    transform = image_transform(net.meta["mean"], net.meta["std"])
    fp32 = extract_vectors(net, images[:4], 64, transform, config=ExtractionConfig(amp=False))
    autocast = extract_vectors(net, images[:4], 64, transform, config=ExtractionConfig(amp=True, amp_dtype=dtype))
    cosines = (F.normalize(fp32, dim=0) * F.normalize(autocast, dim=0)).sum(0)
    assert cosines.min() > floor and not torch.equal(fp32, autocast)
    with pytest.raises(ValueError, match="unknown autocast dtype 'float8'"):
        extract_vectors(net, images[:1], 64, transform, config=ExtractionConfig(amp=True, amp_dtype="float8"))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_network_converted_to_16_bits_extracts_without_autocast(images, net, dtype):
    """The float32 pixels met 16-bit weights: a dtype error with --no-amp (and on the CPU by
    default), where autocast had hidden it on CUDA; the caller's network stays 16-bit."""
    import copy

    transform = image_transform(net.meta["mean"], net.meta["std"])
    fp32 = extract_vectors(net, images[:4], 64, transform, config=ExtractionConfig(amp=False))
    converted = copy.deepcopy(net).to(dtype)
    low = extract_vectors(converted, images[:4], 64, transform, config=ExtractionConfig(amp=False))
    assert low.dtype == torch.float32 and next(converted.parameters()).dtype == dtype
    assert (F.normalize(fp32, dim=0) * F.normalize(low, dim=0)).sum(0).min() > 0.99


def test_device_decoding_skips_and_names_a_bad_file(images, net, tmp_path, real_workers, caplog):
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(open(images[0], "rb").read()[:300])
    paths = images[:3] + [str(bad)] + images[3:5]
    transform = image_transform(net.meta["mean"], net.meta["std"])
    with pytest.raises(ImageLoadError, match="cut.jpg"):
        extract_vectors(net, paths, 64, transform, config=ExtractionConfig(decode="device", workers=1))
    skipped = []
    vecs = extract_vectors(net, paths, 64, transform, skipped=skipped,
                           config=ExtractionConfig(decode="device", workers=1, skip_bad=True))
    assert skipped == [3] and torch.all(vecs[:, 3] == 0) and torch.all(vecs[:, [0, 1, 2, 4, 5]].norm(dim=0) > 0.99)


def test_device_decodings_workers_are_threads_that_read_in_order_and_skip_a_bad_file(images, net, tmp_path,
                                                                                   monkeypatch, real_workers):
    """Its workers only read files and headers: threads, which start in no time and hand items
    on without messages, where a process costs a copy of this one (benchmarks/call_cost.py)."""
    from aml.descriptors import extraction

    def no_processes(*args, **kwargs):
        raise AssertionError("device decoding started loader processes")

    bad = tmp_path / "cut.jpg"
    bad.write_bytes(open(images[0], "rb").read()[:300])
    paths = images[:9] + [str(bad)] + images[9:]
    transform = image_transform(net.meta["mean"], net.meta["std"])
    pil = extract_vectors(net, images, 64, transform, config=ExtractionConfig(decode="pil", workers=2))
    monkeypatch.setattr(extraction, "DataLoader", no_processes)
    skipped = []
    device = extract_vectors(net, paths, 64, transform, skipped=skipped,
                             config=ExtractionConfig(decode="device", workers=3, skip_bad=True))
    assert skipped == [9]
    torch.testing.assert_close(device[:, [k for k in range(len(paths)) if k != 9]], pil, rtol=0, atol=1e-6)
    with pytest.raises(ImageLoadError, match="cut.jpg"):
        extract_vectors(net, paths, 64, transform, config=ExtractionConfig(decode="device", workers=3))
    assert not [t for t in threading.enumerate() if t.name.startswith("aml-read")]  # stopped with the call


def test_the_network_is_prepared_before_the_loader_workers_start(images, net, monkeypatch, real_workers):
    """A started worker is a copy of the process: every page the main process writes after
    that is copied first (a one-image ResNet101 call with the fold and one worker took 0.49 s
    instead of 0.34 s)."""
    from aml.descriptors import extraction

    events = []

    class Loader(extraction.DataLoader):
        def __iter__(self):
            events.append("workers")
            return super().__iter__()

    prepare = extraction._runner
    monkeypatch.setattr(extraction, "DataLoader", Loader)
    monkeypatch.setattr(extraction, "_runner", lambda *args: events.append("network") or prepare(*args))
    transform = image_transform(net.meta["mean"], net.meta["std"])
    vecs = extract_vectors(net, images[:3], 64, transform, config=ExtractionConfig(workers=1, fold_batchnorm=True))
    assert events == ["network", "workers"] and vecs.shape == (512, 3)


@pytest.mark.parametrize("decode, count, started", [("pil", 3, 3), ("workers", 14, 8)])
def test_no_more_workers_start_than_there_are_images(images, net, monkeypatch, real_workers, decode, count, started):
    """A worker process starts as a copy of this one (tens of ms for a large one) and costs
    that even when it gets nothing to read."""
    from aml.descriptors import extraction

    workers = []

    class Loader(extraction.DataLoader):
        def __iter__(self):
            workers.append(self.num_workers)
            return super().__iter__()

    monkeypatch.setattr(extraction, "DataLoader", Loader)
    transform = image_transform(net.meta["mean"], net.meta["std"])
    extract_vectors(net, images[:count], 64, transform, config=ExtractionConfig(workers=8, decode=decode))
    assert workers == [started]


def test_unknown_decoding_is_refused(images, net):
    transform = image_transform(net.meta["mean"], net.meta["std"])
    with pytest.raises(ValueError, match="unknown decoding 'gpu'.*auto, pil, device"):
        extract_vectors(net, images[:1], 64, transform, config=ExtractionConfig(decode="gpu"))


class ShortOfMemory(torch.nn.Module):
    """A network whose forward runs out of memory above ``limit`` images, as a GPU would."""

    def __init__(self, inner, limit):
        super().__init__()
        self.inner, self.limit, self.meta, self.batches = inner, limit, inner.meta, []

    def descriptors(self, x):
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        self.batches.append(x.shape[0])
        return self.inner.descriptors(x)


def test_out_of_memory_splits_the_batch_and_warns(images, net, caplog):
    transform = image_transform(net.meta["mean"], net.meta["std"])
    same_shape = [p for i, p in enumerate(images) if i % 4 == 0]  # 80x60 images: one bucket
    short = ShortOfMemory(net, limit=1)
    with caplog.at_level("WARNING", logger="aml.descriptors.extraction"):
        # contiguous, as the network is: extraction encodes with the network itself, not a copy
        vecs = extract_vectors(short, same_shape, 64, transform, ms=(1, 0.5),
                               config=ExtractionConfig(batch_size=4, channels_last=False))
    assert short.batches and max(short.batches) == 1
    assert "out of memory at a batch of 4 images" in caplog.text and "batches of 2" in caplog.text
    assert torch.allclose(vecs, extract_vectors(net, same_shape, 64, transform, ms=(1, 0.5),
                                                config=ExtractionConfig(batch_size=1)), atol=1e-5)
    with pytest.raises(torch.OutOfMemoryError):
        extract_vectors(ShortOfMemory(net, limit=0), same_shape[:1], 64, transform)


def test_after_out_of_memory_the_failed_forward_is_freed_before_the_cache_is_released(monkeypatch):
    """The allocator's cache is handed back once the failed forward's tensors are gone (inside
    the except block, its traceback still holds them, and the cache frees nothing)."""
    import weakref

    import aml.descriptors.extraction as extraction

    held, alive_at_release = [], []

    def encode(x):
        activations = torch.ones(len(x), 1000)  # what a failed forward leaves in its frames
        if len(x) > 1:
            held.append(weakref.ref(activations))
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return activations[:, :8]

    monkeypatch.setattr(extraction, "_release_cached_memory",
                        lambda device: alive_at_release.append([ref() is not None for ref in held]))
    out = extraction._BatchCap().describe(encode, torch.zeros(4, 3, 2, 2), (1,), 1.0)
    assert out.shape == (4, 8) and alive_at_release == [[False], [False, False]]


def test_cpu_batches_follow_the_pixel_budget():
    from aml.descriptors.extraction import CPU_PIXEL_BUDGET, default_batch_size

    cpu = torch.device("cpu")
    assert default_batch_size(cpu, (768, 1024)) == 1  # 786,432 pixels: alone
    assert default_batch_size(cpu, (272, 362)) == CPU_PIXEL_BUDGET // (362 * 272) == 2
    assert default_batch_size(cpu, (72, 96)) == 36
    assert default_batch_size(cpu, (2000, 2000)) == 1
    assert default_batch_size(torch.device("cuda"), (768, 1024)) == 32


def test_pixel_path_names_decoding_and_precision():
    """Device decoding on CUDA (nvJPEG) and on the CPU (libjpeg) gave one key to other pixels:
    a cache or store made on one machine of a shared data root answered for the other."""
    assert ExtractionConfig(device="cpu").pixel_path() == "pil-fp32"
    assert ExtractionConfig(device="cuda").pixel_path() == "workers-fp16"
    assert ExtractionConfig(device="cuda", decode="pil", amp=False).pixel_path() == "pil-fp32"
    assert ExtractionConfig(device="cuda", decode="device", amp_dtype="bfloat16").pixel_path() == "nvjpeg-lanczos-bf16"
    assert ExtractionConfig(device="cuda:1", decode="device", amp=False).pixel_path() == "nvjpeg-lanczos-fp32"
    assert ExtractionConfig(device="cpu", decode="device", amp=False).pixel_path() == "device-lanczos-fp32"
    assert ExtractionConfig(device="cpu", decode="device", amp=True, workers=3).pixel_path() == "device-lanczos-fp16"
    # without a device of its own, the network's decides
    assert ExtractionConfig().pixel_path(torch.nn.Linear(1, 1)) == "pil-fp32"


def test_the_extraction_config_refuses_unknown_fields_and_names():
    with pytest.raises(TypeError, match="skip_bda"):
        ExtractionConfig(skip_bda=True)  # a misspelling is an error, not ignored
    with pytest.raises(TypeError, match="'worker'"):
        ExtractionConfig().but(worker=2)
    with pytest.raises(ValueError, match="choose one of auto, pil, device, workers"):
        ExtractionConfig(decode="gpu")
    with pytest.raises(ValueError, match="float8"):
        ExtractionConfig(amp_dtype="float8")
    config = ExtractionConfig(workers=2)
    assert config.but(decode="pil") == ExtractionConfig(workers=2, decode="pil") and config.decode == "auto"


def test_the_cache_keeps_pil_and_device_descriptors_apart(images, net, tmp_path):
    from aml.descriptors import DescriptorKey, cached_descriptors

    def cached(config):
        return cached_descriptors(net, images[:4], DescriptorKey.of(net, 64, (1,), config), tmp_path, "db", config=config)

    pil, device = cached(ExtractionConfig(decode="pil")), cached(ExtractionConfig(decode="device"))
    assert len(list(tmp_path.glob("db_*.npy"))) == 2  # nvJPEG's pixels may differ from PIL's by a grey level
    np.testing.assert_array_equal(pil, device)  # on the CPU, libjpeg and PIL's arithmetic: PIL's very pixels


def test_the_original_amls_workers_argument_is_taken(images, net, monkeypatch):
    """extract_vectors(net, images, size, transform, ..., print_freq, workers) of the original
    aml raised TypeError: the loader's workers are ExtractionConfig's in aml."""
    import aml.descriptors.extraction as extraction

    seen = []
    real = extraction._Plan
    monkeypatch.setattr(extraction, "_Plan", lambda config, *rest: seen.append(config.workers) or real(config, *rest))
    transform = image_transform(net.meta["mean"], net.meta["std"])
    positional = extract_vectors(net, images[:2], 48, transform, None, [1], 1, 10, 0)
    assert seen == [0] and torch.equal(positional, extract_vectors(net, images[:2], 48, transform, workers=0))


def test_folded_batchnorm_gives_the_same_descriptors(images, net):
    transform = image_transform(net.meta["mean"], net.meta["std"])
    folded = extract_vectors(net, images, 64, transform, ms=(1, 0.5), config=ExtractionConfig(fold_batchnorm=True))
    plain = extract_vectors(net, images, 64, transform, ms=(1, 0.5), config=ExtractionConfig(fold_batchnorm=False))
    assert torch.allclose(folded, plain, atol=1e-5) and not any(
        type(m).__name__ == "GraphModule" for m in net.modules())  # the network itself is not folded


def test_batchnorm_is_folded_when_the_call_pays_for_it():
    from aml.descriptors.extraction import FOLD_MIN_PIXELS, _fold

    assert not _fold(None, 10, 96) and _fold(None, 1000, 96)  # 92,160 and 9.2M pixels
    assert _fold(None, FOLD_MIN_PIXELS, 1) and not _fold(None, FOLD_MIN_PIXELS - 1, 1)
    assert _fold(None, 1, None)  # full-size images: assume large
    assert _fold(True, 1, 8) and not _fold(False, 10 ** 6, 1024)


def test_every_torchrun_rank_folds_as_one_process_would(images, net, monkeypatch):
    """Each rank decided from its own share of the images: ranks of one call (and a torchrun
    run against one process) folded differently, and their descriptors differed in rounding."""
    import aml.descriptors.extraction as extraction
    from aml.utils.distributed import World

    folds = []
    monkeypatch.setattr(extraction, "FOLD_MIN_PIXELS", len(images) * 64 ** 2)  # the whole call pays, a half does not
    monkeypatch.setattr(extraction, "current_world", lambda: World(rank=1, size=2))
    monkeypatch.setattr(extraction, "gather_columns", lambda vecs, count, world: vecs)
    monkeypatch.setattr(extraction, "_extract_block", lambda *args: folds.append(args[5].fold) or torch.zeros(512, 1))
    extract_vectors(net, images, 64, image_transform(net.meta["mean"], net.meta["std"]),
                    config=ExtractionConfig(collective=True))
    assert folds == [True]


def test_images_are_decoded_outside_autocast(images, net, monkeypatch):
    """Pixels do not depend on the precision of the forward: decoding runs before autocast."""
    import dataclasses

    import aml.descriptors.extraction as extraction

    states = []
    pil = extraction.DECODINGS["pil"]

    def recording_decoder(device, mean, std):
        inner = pil.decoder(device, mean, std)

        def batch(items, failed):
            states.append(torch.is_autocast_enabled("cpu"))
            return inner(items, failed)
        return batch

    monkeypatch.setitem(extraction.DECODINGS, "pil", dataclasses.replace(pil, decoder=recording_decoder))
    transform = image_transform(net.meta["mean"], net.meta["std"])
    extract_vectors(net, images[:4], 64, transform, config=ExtractionConfig(workers=0, amp=True, amp_dtype="bfloat16"))
    assert states and not any(states)


def test_the_callers_network_keeps_its_memory_format_mode_and_parameters(images):
    torch.manual_seed(0)
    net = build_network("mobilenet_v2", pretrained=False).train()
    before = {name: p for name, p in net.named_parameters()}
    transform = image_transform(net.meta["mean"], net.meta["std"])
    for fold in (False, True):
        extract_vectors(net, images[:3], 64, transform,
                        config=ExtractionConfig(workers=0, channels_last=True, fold_batchnorm=fold))
        assert net.training
        assert all(p is before[name] and p.is_contiguous() and p.device.type == "cpu"
                   for name, p in net.named_parameters())


def _forward_shapes(net, paths, config):
    """The distinct input shapes (batch, channels, height, width) the network met."""
    shapes = set()
    hook = net.features[0].register_forward_pre_hook(lambda m, args: shapes.add(tuple(args[0].shape)))
    try:
        vecs = extract_vectors(net, paths, 64, image_transform(net.meta["mean"], net.meta["std"]), config=config)
    finally:
        hook.remove()
    return shapes, vecs


def test_fixed_batches_meet_one_batch_size_per_image_shape(tmp_path, net):
    """cuDNN prepares kernels anew for every input shape (minutes for a depthwise network on
    an H200): with fixed batches a partial batch is padded to a power of two, and the
    descriptors do not change."""
    rng = np.random.default_rng(1)
    paths = []
    for i in range(22):  # 11 landscape and 11 portrait images: batches of 8, 3 per orientation
        w, h = (80, 60) if i % 2 else (60, 80)
        paths.append(tmp_path / f"{i}.jpg")
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    config = ExtractionConfig(workers=0, batch_size=8, channels_last=False, fold_batchnorm=False)
    loose, expected = _forward_shapes(net, paths, config.but(fixed_batches=False))
    fixed, vecs = _forward_shapes(net, paths, config.but(fixed_batches=True))
    assert sorted(s[0] for s in loose) == [3, 3, 8, 8]
    assert sorted(s[0] for s in fixed) == [4, 4, 8, 8] and {s[2:] for s in fixed} == {s[2:] for s in loose}
    assert torch.allclose(vecs, expected, atol=1e-5)
    assert _forward_shapes(net, paths, config)[0] == loose  # the default on the CPU (fixed on CUDA)


def test_fixed_batch_sizes_are_powers_of_two_up_to_the_full_batch():
    from aml.descriptors.extraction import fixed_batch_size

    sizes = [fixed_batch_size(n, 32) for n in range(1, 33)]
    assert set(sizes) == {1, 2, 4, 8, 16, 32} and all(n <= size < 2 * n for n, size in enumerate(sizes, 1))


def test_many_shapes_are_flushed_in_batches_that_padding_keeps_whole():
    """With more than 128 images waiting, the fullest shape was handed on whole (say 17 images),
    which CUDA padded to the next power of two (32): 1.46 times the images run on a photo set
    of a few common shapes and a long tail."""
    from aml.descriptors.extraction import _batches, fixed_batch_size

    rng = np.random.default_rng(0)
    common = rng.random(40) ** 3  # a few frequent shapes, many rare ones
    shapes = rng.choice(40, size=5000, p=common / common.sum())
    loader = ((int(shape), index) for index, shape in enumerate(shapes))
    batches = list(_batches(loader, lambda key: 32, lambda item: (item,), 128))
    assert sorted(i for _, indices in batches for i in indices) == list(range(5000))  # every image, once
    assert all(len({shape for shape in items}) == 1 and len(items) <= 32 for items, _ in batches)
    padded = sum(fixed_batch_size(len(items), 32) for items, _ in batches)
    assert padded <= 1.05 * 5000  # measured: 1.007 (1.46 when the fullest shape was flushed whole)


@pytest.mark.parametrize("decode", ["pil", "device"])
def test_an_extraction_waits_for_the_device_once_whatever_its_number_of_batches(images, net, monkeypatch, decode):
    """On CUDA every read of a value by the host and every copy to the host waits for the
    queued kernels: the loop reads none per batch, and the descriptors cross in one block."""
    from aml.descriptors import extraction
    from tests.dispatch import HostWaits

    copies = []
    flush = extraction._Columns._flush

    def counted(self):
        copies.append(len(self.pending))
        flush(self)

    monkeypatch.setattr(extraction._Columns, "_flush", counted)
    transform = image_transform(net.meta["mean"], net.meta["std"])
    config = ExtractionConfig(workers=0, batch_size=2, decode=decode)
    counts = []
    for count in (4, 14):  # 2 batches and at least 7 (4 image shapes)
        copies.clear()
        with HostWaits() as reads:
            extract_vectors(net, images[:count], 80, transform, config=config)
        counts.append((reads.count, [n for n in copies if n]))
    (few_reads, few_copies), (many_reads, many_copies) = counts
    # the final check of finiteness, and with worker processes the loader's seed, drawn on the
    # host as they start (no wait for the device)
    assert many_reads == few_reads <= (1 if decode == "device" else 2)
    assert len(few_copies) == len(many_copies) == 1 and many_copies[0] >= 7


def test_a_compiled_extraction_compiles_once_for_every_call(images, net, monkeypatch):
    """A BatchNorm-folded copy is a new torch.fx class at every call, which torch.compile
    compiled anew each time (and after 8 fell back to eager): with compile, nothing is folded."""
    import functools

    import torch._dynamo
    from torch._dynamo.utils import counters

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    transform = image_transform(net.meta["mean"], net.meta["std"])
    torch._dynamo.reset()
    counters.clear()
    config = ExtractionConfig(workers=0, device="cpu", compile=True)
    graphs = []
    for _ in range(3):  # 4 images at 1024 px: large enough that BatchNorm would be folded
        extract_vectors(net, images[:4], 1024, transform, config=config)
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[0] >= 1 and graphs[2] == graphs[1] == graphs[0]  # the first call's graphs serve the next ones
    torch._dynamo.reset()
    with pytest.raises(ConfigError, match="fold_batchnorm=True with compile=True"):
        ExtractionConfig(compile=True, fold_batchnorm=True)


def test_auto_decoding_is_the_table_of_the_device_type():
    from aml.descriptors.extraction import AUTO_DECODING, resolve_decoding

    assert resolve_decoding("auto", torch.device("cpu")).name == "pil"
    assert resolve_decoding("auto", torch.device("cuda")).name == AUTO_DECODING["cuda"] == "workers"
    assert resolve_decoding("auto", torch.device("meta")).name == "pil"  # a device the table does not name
    assert resolve_decoding("device", torch.device("cpu")).key == "device-lanczos"
    with pytest.raises(ValueError, match="choose one of auto, pil, device, workers"):
        resolve_decoding("nvjpeg", torch.device("cuda"))


def test_a_callers_own_transform_is_applied_on_every_decoding_path(images, net, monkeypatch):
    """cirtorch's extract_vectors(net, images, size, transform): on CUDA (decode 'workers' by
    default) the caller's transform was replaced by the network's mean/std, silently."""
    from torchvision import transforms

    from aml.descriptors import extraction

    own = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean=[0.5] * 3, std=[0.25] * 3)])
    pil = extract_vectors(net, images[:3], 48, own, config=ExtractionConfig(workers=0, decode="pil"))
    monkeypatch.setitem(extraction.AUTO_DECODING, "cpu", "workers")  # as CUDA's default
    assert torch.equal(extract_vectors(net, images[:3], 48, own, config=ExtractionConfig(workers=0)), pil)
    with pytest.raises(ConfigError, match="decode='workers' normalises with the network's mean and std, and this "
                                          "transform does something else"):
        extract_vectors(net, images[:3], 48, own, config=ExtractionConfig(workers=0, decode="workers"))
    theirs = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean=net.meta["mean"],
                                                                             std=net.meta["std"])])
    standard = extract_vectors(net, images[:3], 48, theirs, config=ExtractionConfig(workers=0, decode="workers"))
    assert not torch.allclose(standard, pil)  # the network's own normalisation: the device path, as before


def test_an_image_too_small_for_the_network_is_named_and_can_be_skipped(images, net, tmp_path):
    """A 200 x 2 px image at scale 0.5 (or a 12 px one through VGG16's pools) ended the run in
    torch's traceback naming no file, and --skip-bad-images could not skip it."""
    from aml.descriptors import describe_images

    thin = tmp_path / "thin.jpg"
    Image.new("RGB", (200, 2)).save(thin)
    paths = [images[0], str(thin), images[1]]
    with pytest.raises(ImageLoadError, match=r"image .*thin.jpg is too small for the network: 64x1 pixels after "
                                             r"resizing \(image size 64, scales \[1, 0.5\]\); raise the image size "
                                             r"or drop the smallest scales, or leave the image out"):
        describe_images(net, paths, 64, scales=(1, 0.5), config=ExtractionConfig(workers=0))
    # sizes that leave every image under a pixel are refused before any image is read
    with pytest.raises(ConfigError, match=r"image size 10 at scale 0.0625 gives images under one pixel: raise the "
                                          r"image size \(--image-size\) or drop the scales below 0.1"):
        describe_images(net, ["never-read.jpg"], 10, scales=(1, 0.0625), config=ExtractionConfig(workers=0))
    skipped = []
    vecs = describe_images(net, paths, 64, scales=(1, 0.5), config=ExtractionConfig(workers=0, skip_bad=True),
                           skipped=skipped)
    assert skipped == [1] and not vecs[:, 1].any()
    assert np.linalg.norm(vecs[:, [0, 2]], axis=0) == pytest.approx([1, 1], abs=1e-4)
    alone = describe_images(net, [images[0]], 64, scales=(1, 0.5), config=ExtractionConfig(workers=0))
    np.testing.assert_allclose(vecs[:, 0], alone[:, 0], atol=1e-6)


def test_cached_and_stored_databases_are_encoded_with_the_networks_own_multiscale_power(images, net, tmp_path):
    """The key rounds GeM's p to 6 decimals to name the descriptors; the cached test database
    and the stores were encoded with that rounded power, the queries with the network's own."""
    import copy

    from aml.descriptors import DescriptorKey, cached_descriptors, describe_images
    from aml.descriptors.extraction import multiscale_power
    from aml.descriptors.store import StoreKey, encode_into_store

    odd = copy.deepcopy(net)
    odd.pool.p.data.fill_(2.8734521865844727)
    scales = (1, 2 ** -0.5)
    key = DescriptorKey.of(odd, 64, scales)
    assert key.msp != multiscale_power(odd, list(scales))  # what the key records differs
    queries = describe_images(odd, images[:3], 64, scales)
    cached = cached_descriptors(odd, images[:3], key, tmp_path / "cache", "db")
    stored = encode_into_store(odd, images[:3], tmp_path / "store", StoreKey(key, "odd", "float32", 2)).load()
    assert np.array_equal(cached, queries) and np.array_equal(stored, queries)
