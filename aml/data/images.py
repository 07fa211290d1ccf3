"""The one image loader: open, check, crop (queries), shrink to the image size, to tensor.

Resizing follows the original: PIL ``thumbnail`` with LANCZOS, so the longer side becomes
at most ``imsize`` and images are never enlarged. A query is cropped to its bounding box
first and then shrunk by the factor the full image would get.
"""

import contextlib
from dataclasses import dataclass
import logging
import math
import numbers
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, List, Optional, Sequence, Set, Tuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from aml.utils.errors import AmlError, ConfigError, DataError, path_problem
from aml.utils.text_files import check_line_names
from aml.utils.types import PathLike

log = logging.getLogger(__name__)
BBox = Sequence[float]


def check_image_list(images: Any) -> None:
    """Refuse one path, or an iterator, where a list of image paths belongs (a string was
    read a character at a time: "image / is not a regular file").

    Args:
        images: what was given as the images.

    Raises:
        ConfigError: naming what was given and the fix.

    Examples:
        >>> from aml.data.images import check_image_list
        >>> check_image_list(["a.jpg", "b.jpg"])
        >>> check_image_list("a.jpg")
        Traceback (most recent call last):
        ...
        aml.utils.errors.ConfigError: images must be a list of image paths, got one str ('a.jpg'): give ['a.jpg']
    """
    if isinstance(images, (str, bytes, os.PathLike)):
        raise ConfigError(
            f"images must be a list of image paths, got one {type(images).__name__} ({images!r}): give [{images!r}]"
        )
    if not hasattr(images, "__len__") or not hasattr(images, "__getitem__"):
        raise ConfigError(f"images must be a list of image paths, got a {type(images).__name__}: give list(...) of it")


def check_boxes(count: int, bbxs: Optional[Sequence[Optional[BBox]]]) -> None:
    """Refuse crop boxes that are not one (or None) per image.

    Args:
        count: the images.
        bbxs: their boxes, or None (no crops).

    Raises:
        ConfigError: for another number of boxes.

    Examples:
        >>> from aml.data.images import check_boxes
        >>> check_boxes(2, [None, (0, 0, 10, 10)])
        >>> check_boxes(2, [None])
        Traceback (most recent call last):
        ...
        aml.utils.errors.ConfigError: 1 boxes for 2 images: give one box (or None) per image
    """
    if bbxs is not None and len(bbxs) != count:
        raise ConfigError(f"{len(bbxs)} boxes for {count} images: give one box (or None) per image")


class ImageLoadError(AmlError, RuntimeError):
    """An image file is missing or cannot be decoded."""


#: what PIL raises for a file it cannot decode (NotImplementedError: a variant of a format its
#: plugin does not read, e.g. a DDS texture's pixel format)
UNREADABLE = (OSError, SyntaxError, ValueError, NotImplementedError)


@contextlib.contextmanager
def errors_naming(path: PathLike) -> Iterator[None]:
    """Turn a missing or undecodable ``path`` into an ImageLoadError that names it."""
    try:
        yield
    except FileNotFoundError:
        if os.path.islink(path):  # e.g. a git-annex photo whose content was dropped
            raise ImageLoadError(
                f"image {path} is a link to {os.readlink(path)}, which is missing; restore its target (git annex get)"
            ) from None
        raise ImageLoadError(
            f"image {path} is missing; check its path (an image of a data set: download the set again or fix its list)"
        ) from None
    except PermissionError as err:
        raise ImageLoadError(f"image {path} cannot be read ({err.strerror}); check its permissions") from None
    except Image.DecompressionBombError as err:
        raise ImageLoadError(f"image {path} is refused: {err}; shrink it first") from None
    except (UnidentifiedImageError,) + UNREADABLE as err:
        if isinstance(err, OSError) and path_problem(err):  # a name too long: not the image's fault
            raise ImageLoadError(f"image {path_problem(err)}") from None
        if isinstance(err, UnidentifiedImageError) and _heif(path):
            raise ImageLoadError(
                f"image {path} is a HEIF photo (a phone's HEIC), which PIL does not read: convert it to JPEG"
            ) from None
        raise ImageLoadError(f"image {path} is corrupt or not an image ({err}); replace or re-download it") from err


#: the brands of HEIF files (an ISO media file's ``ftyp`` box), which PIL does not read
HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"})


def _heif(path: PathLike) -> bool:
    """Whether ``path`` starts as a HEIF file does."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(12)
    except OSError:
        return False
    return head[4:8] == b"ftyp" and head[8:12] in HEIF_BRANDS


def check_images_exist(images: Sequence[PathLike], what: str) -> None:
    """Refuse a list of images of which some are missing, before any is encoded (a stat each):
    a command then stops at once, not after hours of encoding of the images before it.

    Args:
        images: the image paths.
        what: what they are, for the error (e.g. ``"synth-paris"``).

    Raises:
        ImageLoadError: naming the first missing image and how many are.

    Examples:
        >>> from aml.data.images import check_images_exist
        >>> check_images_exist(["no/such.jpg", "nor/this.jpg"], "mine")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        aml.data.images.ImageLoadError: image no/such.jpg is missing (2 of the 2 images of mine): ...
    """
    missing = [image for image in images if not os.path.isfile(image)]
    if missing:
        raise ImageLoadError(
            f"image {missing[0]} is missing ({len(missing)} of the {len(images)} images of {what}): check its path "
            "(an image of a data set: download the set again or fix its list), or pass --skip-bad-images"
        )


# No photograph of the benchmarks comes near this: a larger "image" is a device, a stream or
# something else that is not one (a database image linked to /dev/zero was read whole).
#: what counts as an image when a folder is listed (case-insensitive)
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


def image_files(folder: PathLike) -> List[Path]:
    """The image files below ``folder`` (by extension), sorted; hidden files and folders
    (``.thumbnails/``, ``._IMG.jpg``) and other files (``Thumbs.db``, a CSV) are left out.
    A name with a line break is refused (`aml.utils.text_files.check_line_names`).

    Examples:
        >>> import pathlib, tempfile
        >>> from aml.data.images import image_files
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     for name in ("b.jpg", "a.PNG", "notes.txt", ".thumbnails/b.jpg"):
        ...         (pathlib.Path(folder) / name).parent.mkdir(exist_ok=True)
        ...         (pathlib.Path(folder) / name).touch()
        ...     [path.name for path in image_files(folder)]
        ['a.PNG', 'b.jpg']
    """
    return listed_files(folder).images


@dataclass(frozen=True)
class FolderListing:
    """A folder's visible files (`visible_files`), split by extension.

    Attributes:
        images: the image files (`IMAGE_EXTENSIONS`), sorted.
        others: the other files, sorted (a phone's HEIC photos, ``Thumbs.db``, a CSV).
    """

    images: List[Path]
    others: List[Path]


def listed_files(folder: PathLike) -> FolderListing:
    """The visible files below ``folder``, listed once and split into images and others (a name
    with a line break among the images is refused, `aml.utils.text_files.check_line_names`).

    Args:
        folder: the folder.

    Returns:
        Its `FolderListing`.

    Examples:
        >>> import pathlib, tempfile
        >>> from aml.data.images import listed_files
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     for name in ("b.jpg", "IMG_2.HEIC"):
        ...         (pathlib.Path(folder) / name).touch()
        ...     listing = listed_files(folder)
        ...     [p.name for p in listing.images], [p.name for p in listing.others]
        (['b.jpg'], ['IMG_2.HEIC'])
    """
    every = visible_files(folder)
    images = [path for path in every if path.suffix.lower() in IMAGE_EXTENSIONS]
    check_line_names(str(path) for path in images)  # refused before hours of encoding, not when the list is written
    return FolderListing(images, [path for path in every if path.suffix.lower() not in IMAGE_EXTENSIONS])


def visible_files(folder: PathLike) -> List[Path]:
    """The files below ``folder``, sorted, but hidden files and those in hidden folders
    (``.thumbnails/``, ``.DS_Store``) and a file system's ``lost+found``: `image_files` without
    the extension test, for sets whose images have none (cirtorch's ``ims/`` layout). Linked
    folders are entered (a folder of photos linked into a set belongs to it), each real folder
    once: the tree itself first, then the linked folders by name, so a folder reached both ways
    is listed under the same path on every machine. A link whose target is missing is listed
    (reading it names it); sub-folders that cannot be read are named in a warning, and
    ``folder`` itself, when it cannot be read, is refused."""
    seen: Set[str] = set()
    found: List[Path] = []
    unreadable: List[OSError] = []
    pending = [Path(folder)]
    while pending:
        top = pending.pop(0)
        for parent, folders, files in os.walk(top, onerror=unreadable.append):  # links to folders: listed, not entered
            real = os.path.realpath(parent)
            if real in seen:  # a link back up the tree, or a folder already listed
                folders.clear()
                continue
            seen.add(real)
            visible = sorted(name for name in folders if not name.startswith(".") and name != LOST_AND_FOUND)
            linked = [name for name in visible if os.path.islink(os.path.join(parent, name))]
            pending.extend(Path(parent) / name for name in linked)
            folders[:] = [name for name in visible if name not in linked]
            found.extend(Path(parent) / name for name in files if not name.startswith("."))
    _say_unreadable(folder, unreadable)
    return sorted((path for path in found if path.is_file() or path.is_symlink()), key=str)


#: the folder fsck fills at the root of a file system, readable by root alone
LOST_AND_FOUND = "lost+found"


def _say_unreadable(folder: PathLike, errors: List[OSError]) -> None:
    """Refuse a ``folder`` that cannot be listed; name its sub-folders that cannot be, whose
    images are left out (one that is not there, or has gone, holds none: callers check the
    folder they were given)."""
    errors = [err for err in errors if not isinstance(err, FileNotFoundError)]
    if not errors:
        return
    if os.path.realpath(errors[0].filename) == os.path.realpath(folder):
        raise DataError(f"folder {folder} cannot be read ({errors[0].strerror}); check its permissions")
    log.warning(
        ">> %d folder(s) below %s cannot be read, and their images are left out (first: %s, %s); check their "
        "permissions",
        len(errors),
        folder,
        errors[0].filename,
        errors[0].strerror,
    )


MAX_IMAGE_BYTES = 256 << 20


def open_image_file(path: PathLike) -> BinaryIO:
    """``open(path, 'rb')`` of a regular file of at most MAX_IMAGE_BYTES; an ImageLoadError
    names anything else (a FIFO would block, a device never ends)."""
    with errors_naming(path):
        info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        raise ImageLoadError(f"image {path} is not a regular file (a device, FIFO or folder); list image files only")
    if info.st_size > MAX_IMAGE_BYTES:
        raise ImageLoadError(
            f"image {path} has {info.st_size} bytes, more than the {MAX_IMAGE_BYTES} accepted; shrink it first"
        )
    with errors_naming(path):
        return open(path, "rb")


def load_image(path: PathLike) -> Image.Image:
    """Open ``path`` as an RGB PIL image, with an error naming the file when that fails, and a
    warning naming it when it looks cut short (`cut_short`, `zero_filled`)."""
    with open_image_file(path) as handle, errors_naming(path):
        image = Image.open(handle)
        image.load()
        zeros = zero_filled(handle) if image.format in ("JPEG", "MPO") else 0
    if zeros:  # a warning, as for cut_short: a trailer of the camera's own could end so
        log.warning(
            ">> image %s ends in %d zero bytes and no JPEG end marker before them, what a copy or download cut "
            "short and filled with zeros leaves (its lost part decodes as noise); if it is, copy or download it again",
            path,
            zeros,
        )
    if cut_short(image):  # every process, for the images of its share
        log.warning(
            ">> image %s: its last row is uniform mid-grey, what a JPEG file cut short decodes to, the lost "
            "part grey; if it is cut short, copy or download it again",
            path,
        )
    return rgb_image(image, path)


#: the JPEG end-of-image marker
JPEG_END = b"\xff\xd9"
#: trailing zero bytes from which a JPEG without an end marker before them was cut short and zero-filled
ZERO_FILL = 64


def zero_filled(handle: BinaryIO) -> int:
    r"""How many zero bytes end a JPEG file whose data before them lacks the end marker: a copy
    or download that stopped, the rest of the file left zeros (libjpeg decodes the zeros as
    data, without a word); 0 for any other file (fewer than `ZERO_FILL`, or the marker there).

    Args:
        handle: the file, opened for reading in binary.

    Returns:
        The length of the zero run, or 0.

    Examples:
        >>> import io
        >>> from aml.data.images import zero_filled
        >>> cut, whole = b"\xff\xd8data" + bytes(100), b"\xff\xd8data\xff\xd9" + bytes(100)
        >>> zero_filled(io.BytesIO(cut)), zero_filled(io.BytesIO(whole))
        (100, 0)
    """
    end = position = handle.seek(0, os.SEEK_END)
    while position > 0:  # backwards, a block at a time, to the last byte that is not zero
        start = max(0, position - (1 << 16))
        handle.seek(start)
        kept = handle.read(position - start).rstrip(b"\0")
        if kept:
            position = start + len(kept)
            break
        position = start
    zeros = end - position
    if zeros < ZERO_FILL:
        return 0
    handle.seek(max(0, position - len(JPEG_END)))
    return 0 if handle.read(len(JPEG_END)) == JPEG_END else zeros


def cut_short(image: Image.Image) -> bool:
    """Whether a decoded baseline JPEG looks cut short: libjpeg (PIL's decoder) decodes a file
    whose data ends early, then an end marker, without a word, every block it lacks a flat
    grey of 128, so its last row is 128 throughout (127 in a CMYK file stored inverted, as
    Adobe's are; a phone's MPO is a JPEG too). (A file cut without the marker is refused by
    PIL; a progressive one cut short decodes blurred, not grey. An image whose last row is a
    flat mid-grey of its own matches too: hence a warning, not a refusal.)

    Args:
        image: the decoded image, as PIL opened it.

    Returns:
        True when it looks cut short.

    Examples:
        >>> from PIL import Image
        >>> from aml.data.images import cut_short
        >>> grey = Image.new("RGB", (4, 3), (128, 128, 128))
        >>> grey.format = "JPEG"
        >>> cut_short(grey), cut_short(Image.new("RGB", (4, 3), (128, 128, 127)))
        (True, False)
    """
    if image.format not in ("JPEG", "MPO") or image.info.get("progressive") or image.mode not in CUT_SHORT_GREYS:
        return False
    width, height = image.size
    extrema = image.crop((0, height - 1, width, height)).getextrema()
    bands = [extrema] if image.mode == "L" else list(extrema)
    return any(all(band == (grey, grey) for band in bands) for grey in CUT_SHORT_GREYS[image.mode])


#: per JPEG mode, the values libjpeg fills the blocks of a file cut short with
CUT_SHORT_GREYS = {"L": (128,), "RGB": (128,), "CMYK": (128, 127)}  # CMYK: also stored inverted (Adobe)


SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})  # "I": 32-bit, from a 16-bit file
# (older Pillows open 16-bit PNGs so), or a TIFF of 32-bit integers within 16 bits


def rgb_image(image: Image.Image, path: PathLike) -> Image.Image:
    """``image`` (read from ``path``) as 8-bit RGB, as a viewer shows it.

    A 16-bit grey image (a scanner's or a camera's PNG or TIFF) is scaled to 8 bits: PIL's
    own conversion, the original's, clips every value above 255 to white. Floating-point
    pixels and integers beyond 16 bits are refused, their range being unknown.

    Raises:
        ImageLoadError: naming ``path``, for pixels that have no 8-bit reading.

    Examples:
        >>> import numpy as np
        >>> from PIL import Image
        >>> from aml.data.images import rgb_image
        >>> grey = Image.fromarray(np.array([[0, 32896, 65535]], dtype=np.uint16))
        >>> np.asarray(rgb_image(grey, "scan.png"))[0, :, 0].tolist()
        [0, 128, 255]
    """
    if image.mode == "F":
        raise ImageLoadError(
            f"image {path} has floating-point pixels, whose range is not known; save it as an 8- or 16-bit image"
        )
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.int32)
        if values.size and (values.min() < 0 or values.max() > 0xFFFF):
            raise ImageLoadError(
                f"image {path} has integer pixels from {values.min()} to {values.max()}, outside 16 bits "
                "(0 to 65535); save it as an 8- or 16-bit image"
            )
        if values.size and values.max() <= 0xFF and max(_bits_per_sample(image), default=16) > 16:
            raise ImageLoadError(  # read as 16 bits, 8-bit values turned black
                f"image {path} has 32-bit integer pixels from {values.min()} to {values.max()}: 8-bit values, or "
                "dark 16-bit ones, which cannot be told apart; save it as an 8- or 16-bit image"
            )
        image = Image.fromarray(((values + 128) // 257).astype(np.uint8), "L")  # 65535 / 255 = 257
    with errors_naming(path):
        return image.convert("RGB")


def _bits_per_sample(image: Image.Image) -> Tuple[int, ...]:
    """A TIFF's BitsPerSample (tag 258), () for other files."""
    tags = getattr(image, "tag_v2", None)
    value = tags.get(258, ()) if tags is not None else ()
    return tuple(value) if isinstance(value, (tuple, list)) else (int(value),)


EXIF_ORIENTATION = 0x0112  # 1: as stored; 2 to 8: mirrored and/or turned (6 and 8: a quarter turn)


def exif_orientation(path: PathLike) -> int:
    """The EXIF orientation an image file carries (1: none, or none readable); aml, as
    cirtorch, encodes the pixels as stored, whatever a viewer shows.

    Examples:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> from aml.data.images import exif_orientation
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     exif = Image.Exif()
        ...     exif[0x0112] = 6  # a phone held upright: stored turned a quarter
        ...     Image.new("RGB", (40, 30)).save(pathlib.Path(folder) / "q.jpg", exif=exif)
        ...     exif_orientation(pathlib.Path(folder) / "q.jpg")
        6
    """
    try:
        with open_image_file(path) as handle, Image.open(handle) as image:
            value = image.getexif().get(EXIF_ORIENTATION, 1)
    except UNREADABLE + (Image.DecompressionBombError, ImageLoadError):  # loading names it (a FIFO would block)
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def turned_images(paths: Sequence[PathLike]) -> List[PathLike]:
    """The images of ``paths`` whose EXIF orientation a viewer applies (`exif_orientation`
    not 1): aml encodes, and crops, them as stored, which is not as they are shown."""
    return [path for path in paths if exif_orientation(path) != 1]


def image_size(path: PathLike) -> Tuple[int, int]:
    """(width, height) of an image file, read from its header (nothing is decoded)."""
    with open_image_file(path) as handle, errors_naming(path), Image.open(handle) as image:
        return image.size


def resized_shape(size: Tuple[int, int], imsize: Optional[float]) -> Tuple[int, int]:
    """(height, width) of an image of ``size`` (width, height) after `imresize`: PIL's
    thumbnail rule (the box is floored; the free side is the floor or ceiling of the exact
    one, whichever keeps the aspect ratio closer; never enlarged). Used to group images of
    equal shape before decoding them."""
    width, height = size
    if imsize is None:
        return height, width
    box = max(1, math.floor(imsize))  # as load_and_resize: at least a pixel
    if box >= width and box >= height:
        return height, width
    aspect = width / height
    if aspect >= 1:  # the width fills the box
        new_height = _closest_side(box / aspect, lambda n: 0 if n == 0 else abs(aspect - box / n))
        return new_height, box
    return box, _closest_side(box * aspect, lambda n: abs(aspect - n / box))


def _closest_side(exact: float, error: Callable[[int], float]) -> int:
    return max(min(math.floor(exact), math.ceil(exact), key=error), 1)


def imresize(image: Image.Image, imsize: float) -> Image.Image:
    """Shrink (never enlarge) so that the longer side is at most ``imsize`` (in place)."""
    image.thumbnail((imsize, imsize), Image.Resampling.LANCZOS)
    return image


def checked_box(path: PathLike, bbx: BBox, size: Tuple[int, int]) -> Tuple[float, float, float, float]:
    """A crop box of an image, checked: four finite numbers x1 < x2, y1 < y2, at least half of
    the box on the image (PIL fills the rest with black: a box mostly or wholly outside the
    image would describe black, and a huge one would take gigabytes).

    Args:
        path: the image, for the error.
        bbx: x1, y1, x2, y2 in pixels.
        size: the image's (width, height).

    Returns:
        The box as floats.

    Raises:
        ImageLoadError: naming the image, the box and the image's size.

    Examples:
        >>> from aml.data.images import checked_box
        >>> checked_box("q.jpg", [10, 0, 60, 40], (50, 40))  # 40 of its 50 columns on the image
        (10.0, 0.0, 60.0, 40.0)
        >>> checked_box("q.jpg", [100, 0, 160, 40], (50, 40))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        aml.data.images.ImageLoadError: image q.jpg: the box (100, 0, 160, 40) lies outside its 50x40 image ...
    """
    try:
        x1, y1, x2, y2 = (float(c) for c in bbx)
    except (TypeError, ValueError):
        raise ImageLoadError(f"image {path}: the box {bbx!r} is not four numbers x1, y1, x2, y2") from None
    box = (x1, y1, x2, y2)
    if not all(math.isfinite(c) for c in box):
        raise ImageLoadError(f"image {path}: the box {tuple(bbx)} holds NaN or infinite numbers; give pixels")
    if x1 >= x2 or y1 >= y2:
        raise ImageLoadError(f"image {path}: the box {tuple(bbx)} is empty; give x1 < x2 and y1 < y2")
    width, height = size
    inside = max(0.0, min(x2, width) - max(x1, 0.0)) * max(0.0, min(y2, height) - max(y1, 0.0))
    if inside < (x2 - x1) * (y2 - y1) / 2:
        fraction = inside / ((x2 - x1) * (y2 - y1))
        share = "none" if inside == 0 else f"{fraction:.0%}" if fraction >= 0.01 else "less than 1%"
        where = "outside" if inside == 0 else "mostly outside"
        raise ImageLoadError(
            f"image {path}: the box {tuple(bbx)} lies {where} its {width}x{height} image ({share} of it on the "
            "image, PIL would fill the rest with black); give a box inside the image"
        )
    return box


def check_image_size(image_size: Optional[float]) -> None:
    """Refuse an image size that is not a positive number (None: full size).

    Args:
        image_size: the longer side images are shrunk to.

    Raises:
        ConfigError: for 0, a negative number, infinity, NaN, a bool or a string.

    Examples:
        >>> from aml.data.images import check_image_size
        >>> check_image_size(1024)
        >>> check_image_size(0)
        Traceback (most recent call last):
        ...
        aml.utils.errors.ConfigError: image size 0: the longer side to shrink images to is a number > 0 (or None)
    """
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, numbers.Real) or not 0 < image_size < math.inf
    ):
        raise ConfigError(f"image size {image_size!r}: the longer side to shrink images to is a number > 0 (or None)")


def load_and_resize(path: PathLike, imsize: Optional[float], bbx: Optional[BBox] = None) -> Image.Image:
    """Load an image, crop it to ``bbx`` (x1, y1, x2, y2) if given, and shrink it.

    A crop is shrunk to ``imsize * longer side of crop / longer side of the full image``,
    i.e. by the factor the full image gets.
    """
    image = load_image(path)
    full_side = max(image.size)
    if bbx is not None:
        image = image.crop(checked_box(path, bbx, image.size))
        if min(image.size) < 1:
            raise ImageLoadError(f"image {path}: the box {tuple(bbx)} is empty; give x1 < x2 and y1 < y2")
    if imsize is not None:  # at least a pixel: a small box on a very large image would vanish
        imresize(image, max(1.0, imsize * max(image.size) / full_side))
    return image


class ImagesFromList(Dataset):
    """Images (optionally cropped) -> transformed tensors; item = (tensor, index)."""

    def __init__(
        self,
        images: Sequence[PathLike],
        imsize: Optional[float] = None,
        bbxs: Optional[Sequence[Optional[BBox]]] = None,
        transform: Optional[Callable] = None,
    ):
        check_boxes(len(images), bbxs)
        self.images = list(images)
        self.imsize = imsize
        self.bbxs = bbxs
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Tuple[Any, int]:
        bbx = self.bbxs[index] if self.bbxs is not None else None
        image = load_and_resize(self.images[index], self.imsize, bbx)
        return (self.transform(image) if self.transform is not None else image), index


def image_transform(mean: List[float], std: List[float]) -> Callable:
    """ToTensor then Normalize(mean, std), as every network of the package expects."""
    from torchvision import transforms

    return transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean=mean, std=std)])


def image_pixels(image: Image.Image) -> torch.Tensor:
    """An RGB image as a 3 x H x W uint8 tensor: ToTensor's input, a quarter of its output's bytes.

    Args:
        image: a decoded RGB image.

    Returns:
        Its pixels, channels first.
    """
    # numpy's copy, one thread: a torch copy in a reader thread would start a team of its own; a
    # copy always (a 1 x 1 image needs no reordering, and PIL's array is read-only)
    return torch.from_numpy(np.require(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1), requirements=("C", "W")))


class PixelNormalizer:
    """`image_transform`'s arithmetic on batches of pixels already on the compute device.

    ToTensor divides by 255, Normalize subtracts the mean and divides by the standard
    deviation, all in float32; done in the same order here, every value equals the
    transform's (IEEE division and subtraction round the same on the CPU and on CUDA), so
    images can travel to a GPU as uint8 and be normalised there. Every divisor is a tensor
    on the device: CUDA divides by a Python number (or a one-element CPU tensor) as a
    multiplication by its rounded reciprocal, which moves 126 of the 256 grey levels / 255
    by one unit in the last place. The constants go to ``device`` once: a tensor copied to a
    GPU at every batch would make the host wait for it.

    Args:
        mean: the network's input mean per channel (0..1 scale).
        std: its standard deviation per channel.
        device: where the batches will be.

    Examples:
        >>> import torch
        >>> from PIL import Image
        >>> from aml.data.images import PixelNormalizer, image_pixels, image_transform
        >>> image = Image.new("RGB", (4, 3), (10, 128, 250))
        >>> mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
        >>> normalise = PixelNormalizer(mean, std, torch.device("cpu"))
        >>> torch.equal(normalise(image_pixels(image)[None])[0], image_transform(mean, std)(image))
        True
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device):
        self.levels = torch.full((1, 1, 1, 1), 255.0, dtype=torch.float32).to(device)  # 4-d: never a scalar
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1).to(device)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1).to(device)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """B x 3 x H x W values 0..255 (uint8, or float of integer values) -> normalised float32."""
        return pixels.float().div(self.levels).sub(self.mean).div(self.std)
