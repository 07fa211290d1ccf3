"""Images for decoding on the compute device: loader workers read file bytes, the device
decodes them in batches (nvJPEG on CUDA, libjpeg on the CPU) and resizes them.

What a worker does with a file:

- a JPEG in RGB or grayscale that ends with its end-of-image marker, without a crop: it reads
  the header (for the size after resizing) and hands the bytes on, undecoded;
- anything else (PNG, CMYK, a query's crop, a JPEG without its end marker, which libjpeg
  would decode half): it decodes the file by the exact PIL path of `aml.data.images`
  and hands on uint8 pixels.

With ``pil_only`` (extraction's ``decode="workers"``) every file takes the second way: the
original's pixels, a quarter of the bytes of normalised float tensors.

On the device an image is resized to the shape PIL's thumbnail gives (``resized_shape``),
with antialiased bicubic interpolation rounded to integers, where PIL uses LANCZOS: close,
not equal (docs/speed.md gives the differences). A file the device fails to decode is decoded alone
by the PIL path; a file that fails there too raises `ImageLoadError` naming it.
"""

import io
import logging
import warnings
from dataclasses import dataclass, replace
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from aml.data.images import (BBox, ImageLoadError, PathLike, errors_naming, load_and_resize, open_image_file,
                             resized_shape)

log = logging.getLogger(__name__)

JPEG_END = b"\xff\xd9"
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


def _decodable_on_device(header: Image.Image, raw: bytes) -> bool:
    return header.format == "JPEG" and header.mode in DEVICE_MODES and raw.rstrip(b"\0").endswith(JPEG_END)


def _pixels(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1).contiguous()


def read_payload(path: PathLike, imsize: Optional[float], bbx: Optional[BBox] = None,
                 pil_only: bool = False) -> ImagePayload:
    """The payload of ``path``: its bytes when the device can decode it (never with
    ``pil_only``), else PIL's pixels (resized, cropped to ``bbx``). Raises
    `ImageLoadError` naming a missing or unreadable file."""
    if pil_only:
        image = load_and_resize(path, imsize, bbx)
        return ImagePayload(str(path), (image.height, image.width), _pixels(image), False, imsize)
    with open_image_file(path) as handle, errors_naming(path):
        raw = handle.read()
    if bbx is None:
        with errors_naming(path):
            header = Image.open(io.BytesIO(raw))
            if _decodable_on_device(header, raw):
                data = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
                return ImagePayload(str(path), resized_shape(header.size, imsize), data, True, imsize)
    image = load_and_resize(path, imsize, bbx)
    return ImagePayload(str(path), (image.height, image.width), _pixels(image), False, imsize)


class EncodedImagesFromList(Dataset):
    """Item i = (`ImagePayload` of image i, i); the counterpart of ImagesFromList
    (``pil_only``: every image decoded by PIL in the worker, handed on as uint8 pixels)."""

    def __init__(self, images: Sequence[PathLike], imsize: Optional[float] = None,
                 bbxs: Optional[Sequence[Optional[BBox]]] = None, pil_only: bool = False):
        if bbxs is not None and len(bbxs) != len(images):
            raise ValueError(f"{len(images)} images but {len(bbxs)} bounding boxes")
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


def _decode_one(payload: ImagePayload, device: torch.device, failed: Optional[List[int]],
                position: int) -> Optional[torch.Tensor]:
    """A file the batched decode refused: the device alone, then the PIL path."""
    try:
        return _decode_jpegs([payload.data], device)[0]
    except RuntimeError:
        pass
    try:
        return _pixels(load_and_resize(payload.path, payload.imsize)).to(device)
    except ImageLoadError as err:
        if failed is None:
            raise
        log.warning(">> skipped: %s", err)
        failed.append(position)
        return None


def _resized(image: torch.Tensor, shape: Tuple[int, int]) -> torch.Tensor:
    image = image.float()
    if tuple(image.shape[-2:]) == tuple(shape):
        return image
    out = F.interpolate(image[None], size=shape, mode="bicubic", antialias=True, align_corners=False)[0]
    return out.round_().clamp_(0, 255)


def decode_batch(payloads: Sequence[ImagePayload], device: torch.device, mean: Sequence[float],
                 std: Sequence[float], failed: Optional[List[int]] = None) -> Optional[torch.Tensor]:
    """B x 3 x H x W normalised float32 images on ``device`` from payloads of one resized
    shape: encoded ones decoded together on the device, then each resized and normalised.

    A file that neither the device nor PIL decodes raises `ImageLoadError` naming it;
    when ``failed`` is a list, its position is appended there and the batch goes on without
    it (None when no image is left)."""
    encoded = [k for k, p in enumerate(payloads) if p.encoded]
    images: List[Optional[torch.Tensor]] = [None if p.encoded else p.data.to(device, non_blocking=True)
                                            for p in payloads]
    if encoded:
        try:
            decoded: List[Optional[torch.Tensor]] = list(_decode_jpegs([payloads[k].data for k in encoded], device))
        except RuntimeError:  # one bad file fails the whole call: decode one by one
            decoded = [_decode_one(payloads[k], device, failed, k) for k in encoded]
        for k, image in zip(encoded, decoded):
            images[k] = image
    kept = [(image, p) for image, p in zip(images, payloads) if image is not None]
    if not kept:
        return None
    batch = torch.stack([_resized(image, p.shape) for image, p in kept])
    scale = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255.0
    shift = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255.0
    return (batch - shift) / scale
