"""Images for decoding on the compute device: loader workers read file bytes, the device
decodes them in batches (nvJPEG on CUDA, libjpeg on the CPU) and resizes them.

What a worker does with a file:

- a JPEG in RGB or grayscale that ends with its end-of-image marker, without a crop, less than
  4 times its resized size along each side: it reads the header (for the size after
  resizing) and hands the bytes on, undecoded;
- anything else (PNG, CMYK, a query's crop, a JPEG without its end marker, which libjpeg
  would decode half, a JPEG 4 times its resized size or more, which ``thumbnail`` reduces by
  an integer factor first): it decodes the file by the exact PIL path of `aml.data.images`
  and hands on uint8 pixels.

With ``pil_only`` (extraction's ``decode="workers"``) every file takes the second way: the
original's pixels, a quarter of the bytes of normalised float tensors.

On the device an image is resized to the shape PIL's thumbnail gives (``resized_shape``) by
PIL's own LANCZOS arithmetic (`aml.data.resampling`): the same bytes as PIL from the same
decoded pixels; then normalised by `aml.data.images.PixelNormalizer`, the same float32
values as the PIL path's ToTensor and Normalize. A file the device fails to decode is
decoded alone by the PIL path; a file that fails there too raises `ImageLoadError` naming it.
"""

import io
import logging
import warnings
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, List, Optional, Sequence, Tuple

import torch
from PIL import Image
from torch.utils.data import Dataset

from aml.data.images import (
    BBox,
    check_boxes,
    ImageLoadError,
    JPEG_END,
    PathLike,
    PixelNormalizer,
    errors_naming,
    image_pixels,
    load_and_resize,
    open_image_file,
    resized_shape,
)
from aml.data.resampling import LanczosResize, reduces_first

log = logging.getLogger(__name__)

DEVICE_MODES = ("RGB", "L")  # JPEG colour modes that torchvision's decoder turns into RGB


@dataclass
class ImagePayload:
    """One image on its way to the device: file bytes (``encoded``) or uint8 3 x H x W pixels."""

    path: str
    shape: Tuple[int, int]  # (height, width) after resizing
    data: torch.Tensor
    encoded: bool
    imsize: Optional[float] = None

    def pin_memory(self) -> "ImagePayload":
        """A copy in page-locked memory (DataLoader's pin_memory calls this)."""
        return replace(self, data=self.data.pin_memory())


def _decodable_on_device(header: Image.Image, raw: bytes, shape: Tuple[int, int]) -> bool:
    """Whether the device gives PIL's pixels of this file at ``shape`` (height, width)."""
    return (
        header.format == "JPEG"
        and header.mode in DEVICE_MODES
        and raw.rstrip(b"\0").endswith(JPEG_END)
        and not reduces_first(header.size, shape)
    )


def read_payload(
    path: PathLike, imsize: Optional[float], bbx: Optional[BBox] = None, pil_only: bool = False
) -> ImagePayload:
    """The payload of ``path``: its bytes when the device can decode it (never with
    ``pil_only``), else PIL's pixels (resized, cropped to ``bbx``). Raises
    `ImageLoadError` naming a missing or unreadable file."""
    if pil_only:
        image = load_and_resize(path, imsize, bbx)
        return ImagePayload(str(path), (image.height, image.width), image_pixels(image), False, imsize)
    with open_image_file(path) as handle, errors_naming(path):
        raw = handle.read()
    if bbx is None:
        with errors_naming(path):
            header = Image.open(io.BytesIO(raw))
            shape = resized_shape(header.size, imsize)
            if _decodable_on_device(header, raw, shape):
                data = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
                return ImagePayload(str(path), shape, data, True, imsize)
    image = load_and_resize(path, imsize, bbx)
    return ImagePayload(str(path), (image.height, image.width), image_pixels(image), False, imsize)


class EncodedImagesFromList(Dataset):
    """Item i = (`ImagePayload` of image i, i); the counterpart of ImagesFromList
    (``pil_only``: every image decoded by PIL in the worker, handed on as uint8 pixels)."""

    def __init__(
        self,
        images: Sequence[PathLike],
        imsize: Optional[float] = None,
        bbxs: Optional[Sequence[Optional[BBox]]] = None,
        pil_only: bool = False,
    ):
        check_boxes(len(images), bbxs)
        self.images, self.imsize, self.bbxs, self.pil_only = list(images), imsize, bbxs, pil_only

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Tuple[ImagePayload, int]:
        bbx = self.bbxs[index] if self.bbxs is not None else None
        return read_payload(self.images[index], self.imsize, bbx, self.pil_only), index


def _decode_jpegs(data: List[torch.Tensor], device: torch.device) -> List[torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():  # torchvision >= 0.29 marks its decoders as deprecated
        warnings.simplefilter("ignore", category=UserWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    return decoded if isinstance(decoded, list) else [decoded]


def _indexed(device: torch.device) -> torch.device:
    """A CUDA device with its index (``cuda`` is the current one)."""
    return device if device.index is not None else torch.device(device.type, torch.cuda.current_device())


@lru_cache(maxsize=None)
def _decoding_stream(device: torch.device) -> Any:
    """The device's stream for nvJPEG's output, one per process: the caching allocator reuses
    a freed block only on the stream it was allocated on, so a stream per extraction would
    strand each one's decoded images (CUDA hands out 32 streams in turn)."""
    return torch.cuda.Stream(device)


class _DecodeStream:
    """Where nvJPEG's output is allocated on CUDA: a stream of its own.

    torchvision's CUDA decoder allocates its output on the caller's current stream and
    writes it from a private stream that does not wait for the caller's: a block that
    kernels queued on the compute stream still read (a freed earlier batch) can be handed to
    the decoder and overwritten before they run (pytorch/vision#9606; on an H200 the
    descriptors of a float16 extraction came out at cosine 0.91). Allocated on a stream that
    runs nothing else, the output cannot take such a block; the compute stream waits for the
    decoder, and the allocator keeps each decoded image until the compute stream is done
    with it (``record_stream``). Off CUDA, decoding is synchronous and needs none of this.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.stream = _decoding_stream(_indexed(device)) if device.type == "cuda" else None

    def decode(self, data: List[torch.Tensor]) -> List[torch.Tensor]:
        """The JPEG files ``data`` (uint8 CPU tensors) decoded on the device, RGB, 3 x H x W."""
        if self.stream is None:
            return _decode_jpegs(data, self.device)
        compute = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self.stream):
            decoded = _decode_jpegs(data, self.device)
        compute.wait_stream(self.stream)
        for image in decoded:
            image.record_stream(compute)
        return decoded


class DeviceDecoder:
    """Turns payloads of one resized shape into a normalised float32 batch on ``device``.

    Made once per extraction: the normalisation's constants are copied to the device once
    (a tensor built from a Python list per batch is a blocking copy, a host sync on CUDA),
    and JPEG bytes are decoded on the device's own decoding stream (`_DecodeStream`).

    Args:
        device: the compute device.
        mean: the network's input mean per channel (0..1 scale).
        std: its standard deviation per channel.
    """

    def __init__(self, device: torch.device, mean: Sequence[float], std: Sequence[float]):
        self.device = device
        self.normalise = PixelNormalizer(mean, std, device)
        self.jpegs = _DecodeStream(device)
        self.resize = LanczosResize(device)

    def batch(self, payloads: Sequence[ImagePayload], failed: Optional[List[int]] = None) -> Optional[torch.Tensor]:
        """B x 3 x H x W normalised float32 images on the device from payloads of one shape.

        Encoded payloads are decoded together on the device, then every image is resized
        and normalised. A file that neither the device nor PIL decodes raises
        `ImageLoadError` naming it; when ``failed`` is a list, its position is appended
        there and the batch goes on without it.

        Args:
            payloads: the images, all of one resized shape.
            failed: where positions of undecodable files go; None: raise instead.

        Returns:
            The batch, or None when no image is left.
        """
        encoded = [k for k, p in enumerate(payloads) if p.encoded]
        images: List[Optional[torch.Tensor]] = [
            None if p.encoded else p.data.to(self.device, non_blocking=True) for p in payloads
        ]
        if encoded:
            try:
                decoded: List[Optional[torch.Tensor]] = list(self.jpegs.decode([payloads[k].data for k in encoded]))
            except RuntimeError:  # one bad file fails the whole call: decode one by one
                decoded = [self._decode_one(payloads[k], failed, k) for k in encoded]
            for k, image in zip(encoded, decoded, strict=True):
                images[k] = image
        kept = [image for image in images if image is not None]
        if not kept:
            return None
        return self.normalise(self.resize.many(kept, payloads[0].shape))

    def _decode_one(self, payload: ImagePayload, failed: Optional[List[int]], position: int) -> Optional[torch.Tensor]:
        """A file the batched decode refused: the device alone, then the PIL path."""
        try:
            return self.jpegs.decode([payload.data])[0]
        except RuntimeError:
            pass
        try:
            return image_pixels(load_and_resize(payload.path, payload.imsize)).to(self.device)
        except ImageLoadError as err:
            if failed is None:
                raise
            log.warning(">> skipped: %s", err)
            failed.append(position)
            return None


def decode_batch(
    payloads: Sequence[ImagePayload],
    device: torch.device,
    mean: Sequence[float],
    std: Sequence[float],
    failed: Optional[List[int]] = None,
) -> Optional[torch.Tensor]:
    """B x 3 x H x W normalised float32 images on ``device`` from payloads of one resized
    shape (`DeviceDecoder.batch` of a decoder made for this one call).

    Args:
        payloads: the images, all of one resized shape.
        device: the compute device.
        mean: the network's input mean per channel.
        std: its standard deviation per channel.
        failed: where positions of undecodable files go; None: raise instead.

    Returns:
        The batch, or None when no image is left.
    """
    return DeviceDecoder(device, mean, std).batch(payloads, failed)
