import numpy as np
import pytest
import torch
from PIL import Image

from aml.data.images import (
    ImageLoadError,
    PixelNormalizer,
    image_pixels,
    image_size,
    image_transform,
    imresize,
    load_and_resize,
    load_image,
    resized_shape,
)


@pytest.mark.parametrize("size, imsize, expected", [((1000, 700), 362.7, (362, 253)), ((701, 333), 500, (500, 238)),
                                                    ((1000, 700), 1024, (1000, 700)), ((300, 900), 450, (150, 450))])
def test_imresize_only_shrinks_the_longer_side(size, imsize, expected):
    assert imresize(Image.new("RGB", size), imsize).size == expected


def test_query_crop_gets_the_full_image_scale_factor(tmp_path):
    path = tmp_path / "q.png"
    Image.new("RGB", (1000, 500)).save(path)
    crop = load_and_resize(path, 500, bbx=(100.4, 50.0, 500.6, 250.0))
    # crop 401 x 200 (PIL rounds 100.4 -> 100, 500.6 -> 501), scaled by 500/1000
    assert crop.size == (200, 100)
    assert load_and_resize(path, 2000, bbx=(0, 0, 400, 200)).size == (400, 200)


@pytest.mark.parametrize("read", [load_image, image_size])
def test_missing_and_corrupt_images_are_named(tmp_path, read):
    with pytest.raises(ImageLoadError, match="missing.jpg is missing"):
        read(tmp_path / "missing.jpg")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ImageLoadError, match="bad.jpg is corrupt"):
        read(bad)


def test_truncated_jpeg_is_reported(tmp_path):
    path = tmp_path / "cut.jpg"
    Image.effect_noise((64, 64), 50).convert("RGB").save(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ImageLoadError, match="cut.jpg"):
        load_image(path)


@pytest.mark.parametrize("size, imsize", [((1000, 700), 362.7), ((701, 333), 500), ((1000, 700), 1024),
                                          ((300, 900), 450), ((160, 120), 96), ((120, 160), 96), ((160, 107), 96),
                                          ((500, 500), 99.5), ((3, 1000), 10), ((1000, 3), 10)])
def test_resized_shape_predicts_imresize_exactly(size, imsize):
    width, height = imresize(Image.new("RGB", size), imsize).size
    assert resized_shape(size, imsize) == (height, width)
    assert resized_shape(size, None) == (size[1], size[0])


def test_resized_shape_matches_pil_over_many_sizes():
    rng = np.random.default_rng(0)
    for _ in range(300):
        size = tuple(int(v) for v in rng.integers(1, 1500, size=2))
        imsize = float(rng.uniform(8, 1200))
        width, height = imresize(Image.new("L", size), imsize).size
        assert resized_shape(size, imsize) == (height, width), (size, imsize)


def test_image_size_reads_the_header(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (37, 21)).save(path)
    assert image_size(path) == (37, 21)


def test_only_regular_image_files_are_read(tmp_path):
    import os

    from aml.data.encoded_images import read_payload

    fifo = tmp_path / "query.jpg"
    os.mkfifo(fifo)  # opening it would block for ever
    device = tmp_path / "zero.jpg"
    device.symlink_to("/dev/zero")  # reading it would never end
    for path in (fifo, device):
        with pytest.raises(ImageLoadError, match=f"image {path} is not a regular file"):
            load_and_resize(path, 64)
        with pytest.raises(ImageLoadError, match=f"image {path} is not a regular file"):
            read_payload(path, 64)


def test_a_decompression_bomb_is_named(tmp_path, monkeypatch):
    from PIL import Image

    path = tmp_path / "bomb.png"
    Image.new("RGB", (100, 100)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 10,000 pixels: more than twice the limit
    with pytest.raises(ImageLoadError, match=r"image .*bomb.png is refused: .*decompression bomb"):
        load_and_resize(path, 64)
    from aml.data.images import exif_orientation, turned_images

    # read before any encoding (search index/query): its error was a traceback, --skip-bad-images or not
    assert exif_orientation(path) == 1 and turned_images([path]) == []


def test_a_format_variant_pil_does_not_read_is_named(tmp_path):
    """A DDS texture named .jpg (pixel format flags PIL does not know): PIL's NotImplementedError
    was a traceback from loading, the size and the EXIF orientation."""
    import struct

    from aml.data.images import exif_orientation, image_size

    path = tmp_path / "texture.jpg"
    header = struct.pack("<7I", 124, 0x1007, 4, 4, 0, 0, 0) + bytes(44)
    pixel_format = struct.pack("<2I4s5I", 32, 0x80000, bytes(4), 0, 0, 0, 0, 0)
    path.write_bytes(b"DDS " + header + pixel_format + bytes(84))
    for read in (lambda: load_and_resize(path, 64), lambda: image_size(path)):
        with pytest.raises(ImageLoadError, match=r"texture.jpg is corrupt or not an image \(Unknown pixel format"):
            read()
    assert exif_orientation(path) == 1


def test_a_small_box_on_a_large_image_keeps_a_pixel_and_an_empty_box_is_named(tmp_path):
    from PIL import Image

    path = tmp_path / "panorama.jpg"
    Image.new("RGB", (6000, 40), (200, 10, 10)).save(path)
    crop = load_and_resize(path, 64, (0, 0, 5, 5))  # 64 * 5 / 6000 px: less than one
    assert min(crop.size) >= 1
    with pytest.raises(ImageLoadError, match=r"panorama.jpg: the box \(3, 3, 3, 9\) is empty"):
        load_and_resize(path, 64, (3, 3, 3, 9))


@pytest.mark.parametrize("box, message", [
    ((float("nan"),) * 4, r"the box \(nan, nan, nan, nan\) holds NaN or infinite numbers"),
    ((0, 0, float("inf"), 10), r"the box \(0, 0, inf, 10\) holds NaN or infinite numbers"),
    ((1000, 1000, 2000, 2000), r"the box \(1000, 1000, 2000, 2000\) lies outside its 40x30 image \(none of it"),
    ((0, 0, 1e300, 1e300), r"the box \(0, 0, 1e\+300, 1e\+300\) lies mostly outside its 40x30 image \(less than 1% "
                           r"of it on the image, PIL would fill the rest with black\)"),
    ((-100, 0, 20, 30), r"the box \(-100, 0, 20, 30\) lies mostly outside its 40x30 image \(17% of it on the image"),
])
def test_a_box_that_is_not_on_its_image_is_named(tmp_path, box, message):
    """A NaN box or a huge one ended in a traceback (ValueError, DecompressionBombError), and a box
    outside the image described black padding with rc 0."""
    path = tmp_path / "q.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(path)
    with pytest.raises(ImageLoadError, match=r"image .*q.png: " + message):
        load_and_resize(path, 64, box)


def test_a_box_mostly_on_its_image_is_cropped_as_given(tmp_path):
    path = tmp_path / "q.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(path)
    assert load_and_resize(path, None, (-5, 0, 40, 31)).size == (45, 31)  # PIL pads what is outside


@pytest.mark.kernels
@pytest.mark.parametrize("mean, std", [([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]), ([0.5] * 3, [0.5] * 3)])
def test_pixels_normalised_in_a_batch_equal_the_transform_of_each_image(mean, std):
    """Every grey level, odd sizes, a channels_last batch: the very float32 values of ToTensor and Normalize."""
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, size=(37, 53, 3), dtype=np.uint8)) for _ in range(3)]
    images.append(Image.fromarray(np.arange(256, dtype=np.uint8).repeat(3).reshape(16, 16, 3)))  # all 256 levels
    images = [image.resize((53, 37)) for image in images]
    transform, normalise = image_transform(mean, std), PixelNormalizer(mean, std, torch.device("cpu"))
    pixels = torch.stack([image_pixels(image) for image in images])
    assert pixels.dtype == torch.uint8 and pixels.shape == (4, 3, 37, 53)
    expected = torch.stack([transform(image) for image in images])
    assert torch.equal(normalise(pixels), expected)
    assert torch.equal(normalise(pixels.contiguous(memory_format=torch.channels_last)), expected)
    assert torch.equal(normalise(pixels.float()), expected)  # resized pixels arrive as float integers


def test_the_normalisation_divides_by_tensors_on_the_device_never_by_a_python_number():
    """CUDA divides a tensor by a Python number (a CPU scalar) as a multiplication by its
    reciprocal rounded to float32, which is not ToTensor's division on the CPU for 126 of
    the 256 grey levels; a divisor on the device is a true division there too."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Divisions(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.divisors = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket is torch.ops.aten.div:
                self.divisors.append(args[1])
            return func(*args, **(kwargs or {}))

    normalise = PixelNormalizer([0.485, 0.456, 0.406], [0.229, 0.224, 0.225], torch.device("cpu"))
    with Divisions() as seen:
        normalise(torch.zeros(1, 3, 2, 2, dtype=torch.uint8))
    assert len(seen.divisors) == 2 and all(isinstance(d, torch.Tensor) for d in seen.divisors)
    grey = np.arange(256, dtype=np.float32)
    assert np.count_nonzero(grey / np.float32(255) != grey * np.float32(1 / 255)) == 126  # the reciprocal's toll


def test_the_exif_orientation_of_a_phone_photo_is_read_and_named_when_queried(tmp_path, caplog):
    """A photo stored turned (EXIF orientation 6) was searched turned, and boxed in the stored grid,
    without a word: a viewer shows it upright."""
    import logging

    from aml.data.images import exif_orientation
    from aml.search.query import _warn_turned

    exif = Image.Exif()
    exif[0x0112] = 6
    turned, plain = tmp_path / "turned.jpg", tmp_path / "plain.jpg"
    Image.new("RGB", (40, 10)).save(turned, exif=exif)
    Image.new("RGB", (40, 10)).save(plain)
    (tmp_path / "broken.jpg").write_bytes(b"not a photo")
    assert [exif_orientation(p) for p in (turned, plain, tmp_path / "broken.jpg")] == [6, 1, 1]
    with caplog.at_level(logging.WARNING, logger="aml"):
        _warn_turned([str(plain)])
        assert not caplog.records
        _warn_turned([str(plain), str(turned)])
    assert f"1 query image(s) carry an EXIF orientation (first: {turned})" in caplog.text


def test_image_files_enter_linked_folders_once_and_skip_hidden_ones(tmp_path):
    from aml.data.images import image_files

    trip = tmp_path / "elsewhere" / "trip2019"
    trip.mkdir(parents=True)
    for name in ("x.jpg", "y.jpg", ".hidden.jpg"):
        (trip / name).touch()
    landmark = tmp_path / "set" / "bridge"
    landmark.mkdir(parents=True)
    (landmark / "1.jpg").touch()
    (landmark / "trip").symlink_to(trip, target_is_directory=True)  # a folder of photos linked in
    (landmark / "loop").symlink_to(landmark, target_is_directory=True)  # a link back up: listed once
    (landmark / ".cache").mkdir()
    (landmark / ".cache" / "z.jpg").touch()
    found = [str(path.relative_to(tmp_path / "set")) for path in image_files(tmp_path / "set")]
    assert found == ["bridge/1.jpg", "bridge/trip/x.jpg", "bridge/trip/y.jpg"]


def test_a_folder_reached_by_its_path_and_by_a_link_is_listed_under_its_own_path(tmp_path):
    """Which of two paths was listed depended on the order the file system returns names."""
    from aml.data.images import image_files

    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "x.jpg").touch()
    (tmp_path / "album").symlink_to(tmp_path / "photos", target_is_directory=True)  # sorts before photos/
    assert [str(p.relative_to(tmp_path)) for p in image_files(tmp_path)] == ["photos/x.jpg"]


@pytest.mark.parametrize("suffix, dtype", [(".png", np.uint16), (".tif", np.uint16), (".tif", np.int32)],
                         ids=["png-16", "tiff-16", "tiff-32-holding-16"])
def test_a_16_bit_grey_image_is_read_as_a_viewer_shows_it_not_clipped_to_white(tmp_path, suffix, dtype):
    """PIL's conversion (the original's) clipped every 16-bit value above 255 to white."""
    grey = np.random.default_rng(0).integers(0, 256, (12, 16))
    path = tmp_path / f"scan{suffix}"
    Image.fromarray((grey * 257).astype(dtype)).save(path)
    pixels = np.asarray(load_image(path))
    assert pixels.shape == (12, 16, 3) and np.array_equal(pixels[..., 1], grey)
    assert np.array_equal(np.asarray(load_and_resize(path, 8))[..., 0], np.asarray(
        Image.fromarray(grey.astype(np.uint8)).resize((8, 6), Image.LANCZOS)))


@pytest.mark.parametrize("values, message", [
    (np.full((4, 4), 0.5, np.float32), "floating-point pixels"),
    (np.full((4, 4), 70000, np.int32), "from 70000 to 70000, outside 16 bits"),
])
def test_pixels_of_an_unknown_range_are_refused_naming_the_file(tmp_path, values, message):
    path = tmp_path / "odd.tif"
    Image.fromarray(values).save(path)
    with pytest.raises(ImageLoadError, match=f"odd.tif has .*{message}"):
        load_image(path)


@pytest.mark.parametrize("size", [(1, 1), (5, 1), (1, 5), (4, 3)])
def test_pixels_are_a_writable_copy_whatever_the_image_shape(monkeypatch, size):
    """A 1 x 1 image needs no reordering: its tensor was PIL's read-only array (torch warns that
    writing to it is undefined)."""
    arrays = []
    from_numpy = torch.from_numpy
    monkeypatch.setattr(torch, "from_numpy", lambda array: arrays.append(array) or from_numpy(array))
    image = Image.new("RGB", size, (10, 20, 30))
    pixels = image_pixels(image)
    assert [a.flags.writeable and a.flags.c_contiguous for a in arrays] == [True]
    assert pixels.shape == (3, size[1], size[0]) and pixels[:, 0, 0].tolist() == [10, 20, 30]


@pytest.mark.parametrize("mode, kind", [("RGB", "JPEG"), ("L", "JPEG"), ("CMYK", "JPEG"), ("RGB", "MPO")])
def test_a_jpeg_cut_short_then_ended_is_named_in_a_warning(tmp_path, caplog, mode, kind):
    """Cut in the middle with its end marker put back (a copy or download stopped short, then
    "repaired"), a JPEG decoded without a word, its lower part a flat grey; a phone's MPO and a
    CMYK JPEG (grey 127: stored inverted) went unwarned after the fix for the others."""
    import io

    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).resize((300, 200)).convert(mode)
    files = {}
    kinds = [("baseline", False)] + [("progressive", True)] * (mode != "CMYK")  # a cut progressive CMYK: refused
    for name, progressive in kinds:
        data = io.BytesIO()
        frames = {"save_all": True, "append_images": [photo]} if kind == "MPO" else {}  # a phone's pair
        photo.save(data, kind, quality=90, progressive=progressive, **frames)
        whole = data.getvalue()
        files[name] = tmp_path / f"{name}.jpg"
        files[name].write_bytes(whole)
        files[f"{name}-cut"] = tmp_path / f"{name}-cut.jpg"
        cut = len(whole) // (4 if kind == "MPO" else 2)  # an MPO: in its first image
        files[f"{name}-cut"].write_bytes(whole[:cut] + b"\xff\xd9")
    with caplog.at_level("WARNING", logger="aml.data.images"):
        for path in files.values():
            load_and_resize(path, 100)
    # the cut progressive file decodes blurred, not grey: a usable image, not warned of
    assert caplog.messages == [f">> image {files['baseline-cut']}: its last row is uniform mid-grey, what a "
                               "JPEG file cut short decodes to, the lost part grey; if it is cut short, copy or "
                               "download it again"]
    cut = Image.open(files["baseline-cut"])
    assert cut.format == kind and len(set(np.asarray(cut)[-1].ravel().tolist()) - {127, 128}) == 0


def test_a_fifo_among_images_is_named_not_waited_on(tmp_path):
    """exif_orientation (search query's first look at its images) and image_size (training's
    shapes) opened a FIFO and waited for a writer for ever; loading named it."""
    import os

    from aml.data.images import ImageLoadError, exif_orientation, image_size

    fifo = tmp_path / "q.jpg"
    os.mkfifo(fifo)
    assert exif_orientation(fifo) == 1  # its loading names it
    with pytest.raises(ImageLoadError, match=r"q.jpg is not a regular file \(a device, FIFO or folder\)"):
        image_size(fifo)


def test_a_dangling_link_is_listed_and_named_when_read(tmp_path):
    """A git-annex photo whose content was dropped (a link to nothing) was left out of the
    listing without a word: `search index` indexed 2 of 4 photos and said nothing."""
    from aml.data.images import image_files

    Image.new("RGB", (8, 8)).save(tmp_path / "kept.jpg")
    (tmp_path / "dropped.jpg").symlink_to(".git/annex/objects/gone")
    assert [p.name for p in image_files(tmp_path)] == ["dropped.jpg", "kept.jpg"]
    with pytest.raises(ImageLoadError, match=r"dropped.jpg is a link to .git/annex/objects/gone, which is missing"):
        load_image(tmp_path / "dropped.jpg")


def test_folders_that_cannot_be_read_are_named_not_left_out_silently(tmp_path, monkeypatch, caplog):
    """A sub-folder that could not be read was left out without a word; the folder given, when it
    cannot be read, is refused; a file system's lost+found (root's alone) is no photo folder."""
    import logging
    import os

    from aml.data.images import image_files
    from aml.utils.errors import DataError

    for name in ("a/1.jpg", "b/2.jpg", "lost+found/3.jpg"):
        (tmp_path / name).parent.mkdir()
        (tmp_path / name).touch()
    scandir = os.scandir
    refused = {str(tmp_path / "b")}

    def refusing(path):
        if str(path) in refused:
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    caplog.set_level(logging.WARNING, logger="aml")
    assert [p.name for p in image_files(tmp_path)] == ["1.jpg"]
    assert f"1 folder(s) below {tmp_path} cannot be read, and their images are left out (first: {tmp_path / 'b'}, " \
           "Permission denied)" in caplog.text
    refused.add(str(tmp_path))
    with pytest.raises(DataError, match=rf"folder {tmp_path} cannot be read \(Permission denied\); check its permissions"):
        image_files(tmp_path)
    assert image_files(tmp_path / "missing") == []  # callers check the folder they were given


def test_an_image_that_cannot_be_read_is_not_called_corrupt(tmp_path, monkeypatch):
    import builtins

    path = tmp_path / "locked.jpg"
    Image.new("RGB", (8, 8)).save(path)
    opened = builtins.open

    def refusing(name, *args, **kwargs):
        if str(name) == str(path):
            raise PermissionError(13, "Permission denied")
        return opened(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refusing)
    with pytest.raises(ImageLoadError, match=r"locked.jpg cannot be read \(Permission denied\); check its permissions"):
        load_image(path)


def test_a_32_bit_integer_tiff_of_8_bit_values_is_refused_not_turned_black(tmp_path):
    """Its 8-bit values were divided by 257 as 16-bit ones: a black image, copied so by make_testset
    (a 32-bit TIFF of 16-bit values is read as 16 bits: test_a_16_bit_grey_image_is_read_...)."""
    path = tmp_path / "scan.tif"
    Image.fromarray((np.arange(64 * 48) % 256).reshape(48, 64).astype(np.int32), "I").save(path)
    with pytest.raises(ImageLoadError, match=f"image {path} has 32-bit integer pixels from 0 to 255: 8-bit values, "
                                             "or dark 16-bit ones"):
        load_image(path)
    sixteen = tmp_path / "scan16.tif"
    Image.fromarray((np.arange(64 * 48) * 20).reshape(48, 64).astype(np.uint16)).save(sixteen)
    assert np.asarray(load_image(sixteen)).max() > 200  # 16 bits still scaled


def test_a_jpeg_cut_short_and_zero_filled_is_warned_of(tmp_path, caplog):
    """A copy that stopped with the rest of the file left zeros decoded partly as noise, without a word."""
    import io
    import logging

    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) * 9 // 10] + bytes(len(data)))
    padded = tmp_path / "padded.jpg"  # zeros after the end marker: a whole file
    padded.write_bytes(data + bytes(4096))
    caplog.set_level(logging.WARNING, logger="aml")
    load_image(padded)
    assert "zero bytes" not in caplog.text
    load_image(cut)
    assert f"image {cut} ends in {len(data)} zero bytes and no JPEG end marker before them" in caplog.text


def test_a_heif_photo_is_named_as_such_not_corrupt(tmp_path):
    path = tmp_path / "IMG_0002.HEIC"
    path.write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(200))
    with pytest.raises(ImageLoadError, match=r"is a HEIF photo \(a phone's HEIC\), which PIL does not read: convert"):
        load_image(path)
