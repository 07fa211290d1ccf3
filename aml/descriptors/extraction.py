"""The one descriptor extraction function of the package (mining, testing, features).

Images are read in parallel workers and decoded there by PIL, the original's pixels
(``decode="pil"``: normalised in the workers; ``"workers"``: handed on as uint8 and
normalised on the device; both in worker processes), or read by worker threads and decoded
in batches on the compute device (``"device"``: nvJPEG on CUDA, see
`aml.data.encoded_images`); ``"auto"`` is "workers" on CUDA, "pil" on the CPU.
Images of equal shape after resizing are stacked into one batch (no padding, so the
descriptor of an image never depends on its batch-mates); the forward runs under
``torch.inference_mode`` with channels_last and, on CUDA by default, float16 autocast.
A batch that runs out of device memory is split, with a warning. Result: a D x N float32
CPU tensor, column i = image i. In float32 with ``decode="pil"`` the result equals cirtorch's
one-image-at-a-time loop up to float rounding. The forward runs on
`aml.networks.inference.inference_copy` of the network (BatchNorm folded) when
``fold_batchnorm`` says so, by default for calls of `FOLD_MIN_PIXELS` or more; the network
passed in comes back as it was (device, memory format, train/eval mode).
"""

import contextlib
import copy
import functools
import math
import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Generator, Iterator, List, Mapping, Optional, Sequence, Tuple, Union, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from aml.data.encoded_images import DeviceDecoder, EncodedImagesFromList, ImagePayload
from aml.data.images import (
    BBox,
    ImageLoadError,
    ImagesFromList,
    check_boxes,
    check_image_list,
    check_image_size,
    image_transform,
)
from aml.networks.inference import inference_copy
from aml.networks.preserved import left_as_it_was
from aml.networks.loading import check_network
from aml.networks.retrieval_net import ImageRetrievalNet, multiscale_power
from aml.utils.distributed import (
    World,
    concat_lists,
    current_world,
    gather_columns,
    gather_objects,
    shard_range,
)
from aml.utils.progress import progress_bar
from aml.utils.threads import ordered_map
from aml.utils.bounds import NONNEGATIVE_INT, bounded
from aml.utils.changeable import Changeable
from aml.utils.errors import AmlError, ConfigError, DataError, lookup
from aml.utils.devices import available_device, parse_device, same_device

log = logging.getLogger(__name__)

Device = Union[str, torch.device]
ImageDataset = Union[ImagesFromList, EncodedImagesFromList]  # single images, and their indices, by index
BatchEncoder = Callable[[torch.Tensor], torch.Tensor]  # B x 3 x H x W images -> B x D descriptors

# Pixels per CPU forward: batches of images up to this many pixels in all (at least one
# image): 2 images of 362x272, 1 of 1024x768. Batches beyond it fall out of the caches and
# cost more per image (benchmarks/extract.py --batch-sizes; docs/speed.md).
CPU_PIXEL_BUDGET = 250_000
GPU_BATCH_SIZE = 32
# Images waiting for others of their shape are held up to 4 batches of this shape (4 batches of
# 16 images on the CPU): the batches of small images fill up before the wait holds too many.
SMALLEST_PENDING_SHAPE = (125, 125)
# Folding BatchNorm costs a copy of the network (~0.05 s for MobileNetV2, 0.1 s for ResNet101
# on one CPU thread, benchmarks/call_cost.py) and saves ~30% of MobileNetV2's forward (0.1 us
# per pixel on one CPU thread): by default it is done for calls of at least this many pixels
# (images x image size squared), where it pays with a margin.
FOLD_MIN_PIXELS = 2_000_000


@dataclass(frozen=True)
class _Unreadable:
    """What a loader worker hands back instead of an image it could not read."""

    error: ImageLoadError


class _ReportErrors(Dataset):
    """Wraps a dataset of images so that a bad image reaches the main process as an
    `_Unreadable` item (raised there by name, or skipped), not as a worker traceback."""

    def __init__(self, inner: Dataset):
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        try:
            return self.inner[index]
        except ImageLoadError as err:
            return _Unreadable(err), index


BatchDecoder = Callable[[List[Any], Optional[List[int]]], Optional[torch.Tensor]]

# Loader workers start ahead of the caller by this many items each.
AHEAD_PER_WORKER = 4


@dataclass(frozen=True)
class Decoding:
    """Where images are decoded: the loader's dataset, the shape of one of its items after
    resizing, and the decoder made once per extraction (device, mean, std) that turns a list
    of items of one shape into a batch on the device (positions of files that fail there are
    appended to its ``failed`` argument, or raise when it is None). ``key`` names its pixels
    in descriptor keys: a new one whenever its pixels change, so that no cache, store or
    feature file of the old pixels answers for the new."""

    name: str
    key: str
    summary: str
    dataset: Callable[
        [Sequence[Union[str, Path]], Optional[float], Optional[Sequence[Optional[BBox]]], Callable], "ImageDataset"
    ]
    shape: Callable[[Any], Tuple[int, ...]]
    decoder: Callable[[torch.device, Sequence[float], Sequence[float]], BatchDecoder]
    pin_items: bool  # the loader pins each item for the GPU (False: the decoder stacks them first)
    threads: bool = False  # its workers are threads of the main process (they read files), not processes
    #: ``key`` on the device types whose decoder gives other pixels (nvJPEG's are not libjpeg's)
    device_keys: Mapping[str, str] = field(default_factory=dict)

    def key_on(self, device: torch.device) -> str:
        """The name of its pixels when decoded for ``device``.

        Args:
            device: the compute device.

        Returns:
            ``device_keys``'s entry for its type, else ``key``.
        """
        return self.device_keys.get(device.type, self.key)


def _pil_decoder(device: torch.device, mean: Sequence[float], std: Sequence[float]) -> BatchDecoder:
    del mean, std  # normalised in the workers already

    def batch(items: List[torch.Tensor], failed: Optional[List[int]]) -> torch.Tensor:
        del failed  # decoded and checked in the workers already
        pinned = device.type == "cuda"  # the batch is stacked straight into page-locked memory, then copied async
        stacked = torch.empty((len(items), *items[0].shape), dtype=items[0].dtype, pin_memory=pinned)
        return torch.stack(items, out=stacked).to(device, non_blocking=True)

    return batch


def _device_decoder(device: torch.device, mean: Sequence[float], std: Sequence[float]) -> BatchDecoder:
    return DeviceDecoder(device, mean, std).batch


DECODINGS: Dict[str, Decoding] = {
    "pil": Decoding(
        "pil",
        "pil",
        "PIL in the loader workers, LANCZOS resizing: the original's pixels",
        lambda images, size, bbxs, transform: ImagesFromList(images, size, bbxs, transform),
        lambda image: tuple(image.shape[-2:]),
        _pil_decoder,
        pin_items=False,
    ),
    "device": Decoding(
        "device",
        "device-lanczos",  # libjpeg's pixels (torchvision's decode_jpeg on the CPU), resized as PIL does
        "JPEG bytes decoded in batches on the compute device (nvJPEG on CUDA), "
        "resized with PIL's LANCZOS arithmetic, the network's mean/std; other files by PIL",
        lambda images, size, bbxs, transform: EncodedImagesFromList(images, size, bbxs),
        lambda payload: tuple(payload.shape),
        _device_decoder,
        pin_items=True,
        threads=True,
        device_keys={"cuda": "nvjpeg-lanczos"},
    ),
    "workers": Decoding(
        "workers",
        "workers",
        "PIL in the loader workers (the original's pixels), handed on as uint8 and "
        "normalised on the device: a quarter of pil's bytes to pin and copy",
        lambda images, size, bbxs, transform: EncodedImagesFromList(images, size, bbxs, pil_only=True),
        lambda payload: tuple(payload.shape),
        _device_decoder,
        pin_items=True,
    ),
}
DECODE_CHOICES = ("auto",) + tuple(DECODINGS)


#: what ``decode="auto"`` means per device type ("pil" elsewhere): the measurement that chose
#: each is in docs/speed.md, "The defaults on CUDA"
AUTO_DECODING: Dict[str, str] = {"cuda": "workers", "cpu": "pil"}


def resolve_decoding(name: str, device: torch.device) -> Decoding:
    """The decoding ``name`` stands for ("auto": `AUTO_DECODING` of the device's type)."""
    if name == "auto":
        name = AUTO_DECODING.get(device.type, "pil")
    return lookup(DECODINGS, name, "decoding", DECODE_CHOICES)


AMP_DTYPES: Dict[str, torch.dtype] = {"bfloat16": torch.bfloat16, "float16": torch.float16}
_SHORT = {torch.bfloat16: "bf16", torch.float16: "fp16"}


def resolve_amp(amp: Optional[bool], device: torch.device, amp_dtype: str = "float16") -> Optional[torch.dtype]:
    """The autocast dtype (None: fp32): ``amp_dtype`` when asked, by default on CUDA only
    (the CPU keeps fp32)."""
    if not (device.type == "cuda" if amp is None else amp):
        return None
    return lookup(AMP_DTYPES, amp_dtype, "autocast dtype", AMP_DTYPES)


@dataclass(frozen=True)
class ExtractionConfig(Changeable):
    """How `extract_vectors` turns images into descriptors.

    Everything besides the network, the image size and the scales: loading, decoding,
    precision, batching, and what to do with an unreadable image. Frozen; `but` gives a
    changed copy, and a misspelled field is a TypeError, never ignored.

    Attributes:
        workers: loader workers (capped on the CPU, see `effective_workers`).
        device: the compute device; None: the network's.
        batch_size: images per forward; None: `default_batch_size` (per image shape on
            the CPU).
        amp: autocast; None: on CUDA only.
        amp_dtype: the autocast's dtype, a name of ``AMP_DTYPES`` (``"float16"``, ``"bfloat16"``);
            unused while autocast is off, as ``torch.autocast``'s ``dtype`` with
            ``enabled=False``, so that ``but(amp=False)`` turns a config's autocast off (the
            command line refuses ``--amp-dtype`` with ``--no-amp``).
        decode: where images are decoded, a name of `DECODINGS`, or ``"auto"``:
            ``"workers"`` on CUDA, ``"pil"`` on the CPU.
        channels_last: run the forward in the channels_last memory format.
        compile: ``torch.compile`` the forward (BatchNorm is then left to the compiler: a
            folded copy is a new traced class at every call, which it would compile anew).
        fold_batchnorm: fold BatchNorm into the convolutions; None: for calls of
            `FOLD_MIN_PIXELS` or more, unless ``compile``.
        fixed_batches: a partial batch is padded to a power of two (`fixed_batch_size`),
            so that the device meets few input shapes per image shape; None: on CUDA, where
            cuDNN prepares its kernels anew for every input shape it meets.
        skip_bad: skip (and list) an unreadable image instead of raising.
        progress: a tqdm bar on stderr.
        desc: the bar's title.
        collective: under torchrun, each rank encodes its block; False: this process alone.

    Raises:
        ValueError: for an unknown ``decode`` or ``amp_dtype``, or ``fold_batchnorm`` with ``compile``.

    Examples:
        >>> from aml.descriptors import ExtractionConfig
        >>> config = ExtractionConfig(workers=0, decode="pil")
        >>> config.pixel_path()
        'pil-fp32'
        >>> config.but(amp=True, amp_dtype="bfloat16").pixel_path()
        'pil-bf16'
        >>> ExtractionConfig(worker=8)  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        ...
        TypeError: ExtractionConfig.__init__() got an unexpected keyword argument 'worker'
        >>> vecs = extract_vectors(net, images, 1024, transform, config=config.but(decode="device"))  # doctest: +SKIP
    """

    workers: int = bounded(4, NONNEGATIVE_INT)  # loader workers (capped on the CPU, see effective_workers)
    device: Optional[Device] = None  # None: the network's
    batch_size: Optional[int] = None  # None: default_batch_size (per image shape on the CPU)
    amp: Optional[bool] = None  # autocast; None: on CUDA only
    amp_dtype: str = "float16"  # of the autocast (AMP_DTYPES)
    decode: str = "auto"  # DECODINGS, or "auto": workers on CUDA, pil on the CPU
    channels_last: bool = True  # faster on the CPU (docs/speed.md)
    compile: bool = False  # torch.compile the forward
    fold_batchnorm: Optional[bool] = None  # None: for calls of FOLD_MIN_PIXELS or more
    fixed_batches: Optional[bool] = None  # pad partial batches to a power of two; None: on CUDA
    skip_bad: bool = False  # an unreadable image is skipped (and listed) instead of raising
    progress: bool = False  # a tqdm bar on stderr
    desc: str = "extracting"  # its title
    collective: bool = True  # under torchrun, each rank encodes its block; False: this process alone

    def __post_init__(self):
        if self.device is not None:  # "gpu" was torch's RuntimeError at the first extraction
            try:
                parse_device(str(self.device))
            except ConfigError:
                raise ConfigError(
                    f"ExtractionConfig(device={self.device!r}) is not a device: give 'cpu', 'cuda', 'cuda:N' or "
                    "'mps', or None (the network's)"
                ) from None
        lookup(dict.fromkeys(DECODE_CHOICES), self.decode, "decoding", DECODE_CHOICES)
        lookup(AMP_DTYPES, self.amp_dtype, "autocast dtype", AMP_DTYPES)
        if self.compile and self.fold_batchnorm:
            raise ConfigError(
                "fold_batchnorm=True with compile=True: a folded copy is a new traced class at every call, which "
                "torch.compile would compile anew; leave fold_batchnorm to None (the compiler fuses BatchNorm)"
            )

    def device_for(self, net: Optional[torch.nn.Module] = None) -> torch.device:
        """The compute device: the configured one, else the network's, else the CPU.

        Args:
            net: the network to extract with, when known.

        Returns:
            The device.
        """
        if self.device is not None:  # CUDA on a machine without: aml's error, not torch's at the first copy
            return available_device(self.device, f"ExtractionConfig(device={self.device!r})")
        return next(net.parameters()).device if net is not None else torch.device("cpu")

    def pixel_path(self, net: Optional[torch.nn.Module] = None) -> str:
        """Name of what descriptors depend on besides the network and sizes.

        Where images are decoded and the precision (``"pil-fp32"``, ``"device-lanczos-fp16"``,
        ``"nvjpeg-lanczos-bf16"``: nvJPEG on CUDA, ...); part of every descriptor key.

        Args:
            net: the network to extract with (its device counts when ``device`` is None).

        Returns:
            ``<decoding>-<precision>``.
        """
        # named also where the device is not (a key of a GPU's descriptors, on the CPU)
        device = torch.device(self.device) if self.device is not None else self.device_for(net)
        dtype = resolve_amp(self.amp, device, self.amp_dtype)
        return f"{resolve_decoding(self.decode, device).key_on(device)}-{_SHORT[dtype] if dtype else 'fp32'}"


DEFAULT_EXTRACTION = ExtractionConfig()
#: the pixel path of the original's extraction (PIL in the workers, float32)
ORIGINAL_PIXELS = "pil-fp32"


def _batches(
    loader: Iterator,
    limit: Callable[[Tuple[int, ...]], int],
    shape: Callable[[Any], Tuple[int, ...]],
    max_pending: int,
    skipped: Optional[List[int]] = None,
) -> Iterator[Tuple[List[Any], List[int]]]:
    """Group single images by shape (``shape`` of an item) into lists of at most
    ``limit(shape)``; yield (items, their indices). An unreadable image raises, or, when
    ``skipped`` is a list, has its index appended there."""
    buckets: Dict[Tuple[int, ...], List[Tuple[Any, int]]] = defaultdict(list)
    pending = 0
    for item, index in loader:
        if isinstance(item, _Unreadable):
            if skipped is None:
                raise item.error
            log.warning(">> skipped: %s", item.error)
            skipped.append(index)
            continue
        key = shape(item)
        bucket = buckets[key]
        bucket.append((item, index))
        pending += 1
        if len(bucket) >= limit(key):
            pending -= len(bucket)
            yield _unzip(buckets.pop(key))
        elif pending > max_pending:  # many distinct shapes: flush the fullest bucket's largest power of two
            fullest = max(buckets, key=lambda s: len(buckets[s]))  # (CUDA pads a batch to one: the rest waits)
            waiting = buckets[fullest]
            count = 1 << (len(waiting).bit_length() - 1)
            pending -= count
            yield _unzip(waiting[:count])
            if count == len(waiting):
                del buckets[fullest]
            else:
                buckets[fullest] = waiting[count:]
    for bucket in buckets.values():
        yield _unzip(bucket)


def _unzip(items: List[Tuple[Any, int]]) -> Tuple[List[Any], List[int]]:
    return [item for item, _ in items], [index for _, index in items]


def effective_workers(workers: int, device: torch.device) -> int:
    """Loader workers actually used.

    On the CPU, workers and compute threads share the cores, and workers beyond the cores
    left free by torch's threads only slow extraction down.

    Args:
        workers: the workers asked for.
        device: the compute device.

    Returns:
        ``workers`` off the CPU; on the CPU at most the cores torch's threads leave free (0:
        images are loaded in the main process).

    Examples:
        >>> import torch
        >>> from aml.descriptors import effective_workers
        >>> effective_workers(8, torch.device("cuda"))
        8
    """
    if device.type != "cpu":
        return workers
    free_cores = (os.cpu_count() or 1) - torch.get_num_threads()
    return max(0, min(workers, free_cores))


def default_batch_size(device: torch.device, shape: Tuple[int, ...] = (362, 362)) -> int:
    """Images per forward when the caller does not say.

    Args:
        device: the compute device.
        shape: (height, width) of the images after resizing.

    Returns:
        32 on a GPU; on the CPU as many images of ``shape`` as fit in
        `CPU_PIXEL_BUDGET` pixels, at least one.

    Examples:
        >>> import torch
        >>> from aml.descriptors import default_batch_size
        >>> default_batch_size(torch.device("cpu"), (362, 272))
        2
        >>> default_batch_size(torch.device("cpu"), (768, 1024))
        1
        >>> default_batch_size(torch.device("cuda"))
        32
    """
    if device.type != "cpu":
        return GPU_BATCH_SIZE
    height, width = shape[-2:]
    return max(1, CPU_PIXEL_BUDGET // max(1, height * width))


def _describe(encode: BatchEncoder, x: torch.Tensor, scales: Sequence[float], msp: float) -> torch.Tensor:
    """B x D descriptors of a batch; multi-scale as cirtorch (power mean with msp, then L2),
    every scale of the whole batch in one forward."""
    if list(scales) == [1]:
        return encode(x).float()
    total: Any = 0.0  # a tensor from the first scale on
    for scale in scales:
        xs = x if scale == 1 else F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
        total = total + encode(xs).float().pow(msp)
    v = (total / len(scales)).pow(1.0 / msp)
    return v / torch.linalg.vector_norm(v, dim=1, keepdim=True)


class _Columns:
    """Collects B x D outputs into the D x N result. Outputs stay on the compute device and
    cross to the host in blocks of at least ``block_rows`` rows (and at the end): a copy to
    the host waits for the device, so one per batch would stall the pipeline at every batch."""

    def __init__(self, count: int, dim: int):
        self.count, self.dim = count, dim
        self.block_rows = max(1, BLOCK_BYTES // (4 * max(1, dim)))
        self.pending: List[Tuple[torch.Tensor, List[int]]] = []
        self.rows = 0
        self.vecs: Optional[torch.Tensor] = None

    def add(self, out: torch.Tensor, indices: List[int]) -> None:
        self.pending.append((out, indices))
        self.rows += len(indices)
        if self.rows >= self.block_rows:
            self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        block = torch.cat([out for out, _ in self.pending]).cpu()  # the one wait for the device
        indices = [i for _, part in self.pending for i in part]
        if self.vecs is None:
            with torch.inference_mode(False):  # an ordinary tensor, as cirtorch's: its callers may write into it
                self.vecs = torch.zeros(block.shape[1], self.count)
        self.vecs[:, indices] = block.t()
        self.pending, self.rows = [], 0

    def result(self) -> torch.Tensor:
        """The D x N descriptors (zeros when nothing was encoded)."""
        self._flush()
        if self.vecs is not None:
            return self.vecs
        with torch.inference_mode(False):
            return torch.zeros(self.dim, self.count)


# Rows a block of descriptors gathers on the device before it is copied to the host: 64 MiB
# of float32 2048-d descriptors (a few seconds of the fastest extraction).
BLOCK_BYTES = 64 << 20


class _BatchCap:
    """The largest batch that fitted in device memory so far (lowered on out-of-memory)."""

    def __init__(self) -> None:
        self.size: Optional[int] = None

    def describe(self, encode: BatchEncoder, x: torch.Tensor, scales: Sequence[float], msp: float) -> torch.Tensor:
        """`_describe` in parts of at most ``size`` images; out of memory halves the
        part and warns (one image that does not fit still raises)."""
        parts, start = [], 0
        while start < len(x):
            part = x[start : start + self.size] if self.size else x[start:]
            try:
                parts.append(_describe(encode, part, scales, msp))
                start += len(part)
                continue
            except torch.OutOfMemoryError:
                if len(part) == 1:
                    raise
                self.size = len(part) // 2
                log.warning(
                    ">> out of memory at a batch of %d images of %s pixels; going on with batches of %d",
                    len(part),
                    "x".join(str(v) for v in part.shape[-2:]),
                    self.size,
                )
            _release_cached_memory(x.device)  # after the except block: its traceback held the failed forward
        return torch.cat(parts)


def _release_cached_memory(device: torch.device) -> None:
    """Hand the blocks the allocator keeps back to the device (CUDA), after an out-of-memory."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _image_loader(
    dataset: Dataset, workers: int, device: torch.device, decoding: Decoding
) -> Generator[Tuple[Any, int], None, None]:
    """Single items (and their indices) of ``dataset`` from ``workers`` workers (no more than
    it has items), in order, each worker 4 items ahead; pinned for a GPU when
    ``decoding.pin_items`` (not when the decoder stacks them first).

    With ``decoding.threads`` the workers are threads of this process: device decoding's
    workers read files (which leaves Python's lock to the others) and parse headers (which
    holds it for tens of microseconds), where a process would cost its start (a copy of this
    process: tenths of a second with 8 workers) and a shared-memory block per item
    (benchmarks/image_loader.py, benchmarks/call_cost.py). On CUDA each thread runs torch's
    operations (pinning) on one thread, as DataLoader's pinning thread does. Otherwise they
    are DataLoader's processes, which decode with PIL in parallel."""
    workers = min(workers, len(dataset))  # type: ignore[arg-type]
    pin = decoding.pin_items and device.type == "cuda"
    if decoding.threads:
        items = _ReportErrors(dataset)
        read: Callable[[int], Tuple[Any, int]] = (lambda index: _pinned(items[index])) if pin else items.__getitem__
        return ordered_map(
            read,
            len(items),
            workers,
            AHEAD_PER_WORKER * max(1, workers),
            functools.partial(_pinning_thread, device) if pin else None,
        )
    loader = DataLoader(
        _ReportErrors(dataset),
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        pin_memory=pin,
        prefetch_factor=AHEAD_PER_WORKER if workers else None,
        persistent_workers=False,
        generator=torch.Generator(),  # its workers' seeds: not a draw from the caller's global generator
    )
    return (item for item in loader)  # a generator: closing it stops the workers


def _pinning_thread(device: torch.device) -> None:
    """A reader thread that pins for ``device``: its torch operations run on one thread (each
    thread that runs a parallel operation would otherwise start a team of its own, all of them
    beside the main thread), and its current GPU is ``device`` (CUDA's current device is per
    thread: pinning from a thread left on GPU 0 opens a context there, whatever GPU runs)."""
    torch.set_num_threads(1)
    if device.index is not None:
        torch.cuda.set_device(device)


def _pinned(entry: Tuple[Any, int]) -> Tuple[Any, int]:
    """A loader item with its decoded pixels in page-locked memory, for an asynchronous copy
    to the GPU (JPEG bytes stay: the decoder reads them on the host)."""
    item, index = entry
    return (item.pin_memory(), index) if isinstance(item, ImagePayload) and not item.encoded else entry


def extract_vectors(
    net: ImageRetrievalNet,
    images: Sequence[Union[str, Path]],
    image_size: Optional[float],
    transform: Callable,
    bbxs: Optional[Sequence[Optional[BBox]]] = None,
    ms: Sequence[float] = (1,),
    msp: float = 1.0,
    print_freq: int = 10,
    workers: Optional[int] = None,
    *,
    config: ExtractionConfig = DEFAULT_EXTRACTION,
    skipped: Optional[List[int]] = None,
) -> torch.Tensor:
    """Descriptors of images as a D x N float32 CPU tensor, column i for image i.

    cirtorch's positional arguments (and the original aml's ``workers``) and semantics; how to
    extract is ``config``'s (the module's docstring says how it runs). The network comes back as
    it was: on its device, in its memory format and train/eval mode.

    Under torchrun the call is collective: every rank encodes its contiguous block of the images
    (`aml.utils.distributed.shard_range`) and every rank returns the whole D x N result (and the whole
    ``skipped`` list); ``config.collective`` False: this process encodes all of ``images`` alone.

    Args:
        net: the network (a `aml.networks.ImageRetrievalNet`).
        images: the image files.
        image_size: the longer side images are shrunk to (never enlarged); None: full size.
        transform: what turns a PIL-decoded image into a normalised tensor. The ``workers``
            and ``device`` decodings (CUDA's default) normalise with ``net.meta``'s mean/std
            instead, so another transform (not ToTensor then Normalize with those) is applied
            by the ``pil`` decoding: ``decode="auto"`` picks it, another decoding is refused.
        bbxs: per image, a crop box (x1, y1, x2, y2) or None: the queries' regions.
        ms: the scales.
        msp: the power used to average the scales.
        print_freq: accepted for cirtorch compatibility, unused.
        workers: the original aml's loader workers: ``config.workers`` when given.
        config: how to extract (`ExtractionConfig`).
        skipped: with ``config.skip_bad``, the indices of the unreadable images are appended
            here.

    Returns:
        The D x N descriptors; an image skipped with ``config.skip_bad`` keeps a zero column.

    Raises:
        ImageLoadError: for an unreadable image, naming it (unless ``config.skip_bad``).
        NonFiniteDescriptors: when the network produces NaN or infinite descriptors.

    Examples:
        >>> from aml.data.images import image_transform
        >>> from aml.descriptors import ExtractionConfig, extract_vectors
        >>> transform = image_transform(net.meta["mean"], net.meta["std"])  # doctest: +SKIP
        >>> vecs = extract_vectors(net, ["q1.jpg", "q2.jpg"], 1024, transform, ms=[1, 2 ** 0.5, 2 ** -0.5],
        ...                        msp=3.0, config=ExtractionConfig(workers=4))  # doctest: +SKIP
        >>> vecs.shape  # doctest: +SKIP
        torch.Size([2048, 2])
    """
    del print_freq
    if workers is not None:
        config = config.but(workers=workers)
    _check_request(net, images, image_size, ms, bbxs)
    world = current_world() if config.collective else World()
    mine = shard_range(len(images), world)
    fold = _fold(config.fold_batchnorm, len(images), image_size, config.compile)  # the call's: every rank alike
    resolved = config.but(device=config.device_for(net), progress=config.progress and world.is_main)
    resolved = _honouring(transform, getattr(net, "meta", {}), resolved)
    plan = _Plan(resolved, ms, msp, fold)
    local_skipped: Optional[List[int]] = [] if config.skip_bad else None
    with left_as_it_was(net):  # the caller's network keeps its device, memory format and mode
        mine_bbxs = [bbxs[i] for i in mine] if bbxs is not None else None
        vecs = _extract_block(net, [images[i] for i in mine], image_size, transform, mine_bbxs, plan, local_skipped)
    if world.distributed:
        vecs = gather_columns(vecs, len(images), world)
    _check_finite(vecs, images, plan.amp)
    if local_skipped is not None:  # config.skip_bad
        found = concat_lists(gather_objects([mine.start + i for i in local_skipped], world))
        if skipped is not None:
            skipped.extend(found)
    return vecs


def _check_request(
    net: Any,
    images: Any,
    image_size: Optional[float],
    scales: Sequence[float],
    bbxs: Optional[Sequence[Optional[BBox]]],
) -> None:
    """Refuse, before any image is read, what is not a retrieval network or a list of images,
    an image size that is not a positive number, scales that are none, not positive finite
    numbers, or that with the image size leave every image under one pixel (each image was
    refused in turn, as too small, or skipped as unreadable), and boxes that are not one per
    image."""
    check_network(net)
    check_image_list(images)
    check_boxes(len(images), bbxs)
    check_image_size(image_size)
    if not len(scales):
        raise ConfigError("no scales to extract at: give at least one (--multiscale '[1]')")
    if not all(math.isfinite(s) and s > 0 for s in scales):
        raise ConfigError(f"scales must be positive finite numbers, got {list(scales)}")
    small = min(scales)
    if image_size is not None and image_size * small < 1:
        raise ConfigError(
            f"image size {image_size:g} at scale {small:g} gives images under one pixel: raise the image size "
            f"(--image-size) or drop the scales below {1 / image_size:.3g} (--multiscale)"
        )


def _normalises_as(transform: Callable, meta: Dict[str, Any]) -> bool:
    """Whether ``transform`` is ToTensor then Normalize with ``meta``'s mean and std: what the
    workers and device decodings do on the device."""
    from torchvision import transforms

    steps = getattr(transform, "transforms", None)
    if not isinstance(transform, transforms.Compose) or steps is None or len(steps) != 2:
        return False
    to_tensor, normalize = steps
    return (
        isinstance(to_tensor, transforms.ToTensor)
        and isinstance(normalize, transforms.Normalize)
        and [float(v) for v in normalize.mean] == [float(v) for v in meta.get("mean", ())]
        and [float(v) for v in normalize.std] == [float(v) for v in meta.get("std", ())]
    )


def _honouring(transform: Callable, meta: Dict[str, Any], config: ExtractionConfig) -> ExtractionConfig:
    """``config``, with the ``pil`` decoding where its own would not apply ``transform`` (a
    cirtorch caller's transform on CUDA was replaced by the network's mean/std, silently)."""
    if resolve_decoding(config.decode, config.device_for()).name == "pil" or _normalises_as(transform, meta):
        return config
    if config.decode != "auto":
        raise ConfigError(
            f"decode={config.decode!r} normalises with the network's mean and std, and this transform does "
            "something else; extract with decode='pil', which applies the transform"
        )
    log.info(">> the transform is not the network's mean/std normalisation: decoding with PIL, which applies it")
    return config.but(decode="pil")


class NonFiniteDescriptors(DataError):
    """A network produced NaN or infinite descriptors."""


def _check_finite(vecs: torch.Tensor, images: Sequence[Union[str, Path]], amp: Optional[torch.dtype]) -> None:
    """Refuse descriptors with NaN or infinite values, naming the first image concerned and,
    under autocast (``amp``), how to extract in float32."""
    bad = (~torch.isfinite(vecs)).any(dim=0)
    if bool(bad.any()):
        first = int(bad.nonzero()[0])
        why = (
            f"it overflowed in {str(amp).replace('torch.', '')} autocast or its weights are damaged; extract in "
            "float32 to tell (--no-amp of main.py, test.py and extract_features.py; ExtractionConfig(amp=False))"
            if amp is not None
            else "its weights are damaged (it ran in float32)"
        )
        raise NonFiniteDescriptors(
            f"the network produced NaN or infinite descriptors for {int(bad.sum())} of {len(images)} images (the "
            f"first: {images[first]}); {why}"
        )


def _fold(asked: Optional[bool], count: int, image_size: Optional[float], compiled: bool = False) -> bool:
    """Whether to fold BatchNorm: as asked, else when the call is large enough to pay for it;
    never for ``torch.compile`` (a folded copy is a new traced class at every call)."""
    if compiled:
        return False
    if asked is not None:
        return asked
    return image_size is None or count * float(image_size) ** 2 >= FOLD_MIN_PIXELS


@dataclass(frozen=True)
class _Plan:
    """How `_extract_block` runs: the call's config (its device resolved, its progress bar on
    the main process only), the scales, and whether to fold BatchNorm."""

    config: ExtractionConfig
    scales: Sequence[float]
    msp: float
    fold: bool  # `_fold`

    @functools.cached_property
    def device(self) -> torch.device:
        return self.config.device_for()

    @functools.cached_property
    def amp(self) -> Optional[torch.dtype]:
        """The autocast dtype, None: fp32."""
        return resolve_amp(self.config.amp, self.device, self.config.amp_dtype)

    @functools.cached_property
    def decoding(self) -> Decoding:
        return resolve_decoding(self.config.decode, self.device)

    @functools.cached_property
    def fixed(self) -> bool:
        """Partial batches padded to a power of two (`fixed_batch_size`); by default on CUDA."""
        fixed = self.config.fixed_batches
        return self.device.type == "cuda" if fixed is None else fixed

    def limit(self, shape: Tuple[int, ...]) -> int:
        return max(1, self.config.batch_size or default_batch_size(self.device, shape))

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.config.channels_last else torch.contiguous_format


def fixed_batch_size(count: int, limit: Optional[int] = None) -> int:
    """The batch a forward of ``count`` images is padded to with fixed batches: the next power
    of two, at most ``limit`` (and never below ``count``).

    A shape meets at most log2(limit) + 1 batch sizes, and padding at most doubles the work
    of a shape's last, partial batch.

    Args:
        count: the images of the batch.
        limit: the full batch of their shape; None: no cap.

    Returns:
        The padded batch size.

    Examples:
        >>> from aml.descriptors.extraction import fixed_batch_size
        >>> [fixed_batch_size(n, 32) for n in (1, 3, 5, 22, 32)]
        [1, 4, 8, 32, 32]
        >>> fixed_batch_size(20, 24), fixed_batch_size(20)
        (24, 32)
    """
    size = 1 << max(0, count - 1).bit_length()
    return max(count, size if limit is None else min(size, limit))


def with_fixed_batches(encode: BatchEncoder) -> BatchEncoder:
    """``encode`` with every batch padded with zero images to `fixed_batch_size` (no cap),
    the padding's rows dropped from the result.

    For networks whose images do not interact (BatchNorm frozen or in eval mode): the
    descriptors, and the gradients they send back, are those of the images alone.

    Args:
        encode: B x 3 x H x W images -> B x D descriptors.

    Returns:
        The padded encoder.
    """

    def padded(x: torch.Tensor) -> torch.Tensor:
        if len(x) == 0:
            return encode(x)
        return encode(_padded(x, fixed_batch_size(len(x))))[: len(x)]

    return padded


def _padded(x: torch.Tensor, size: int) -> torch.Tensor:
    """``x`` with zero images appended up to ``size`` (descriptors are computed per image,
    so the padding changes no real image's), in ``x``'s memory format (a channels_last batch
    stays one)."""
    if len(x) >= size:
        return x
    out = x.new_zeros((size,) + tuple(x.shape[1:]))
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        out = out.contiguous(memory_format=torch.channels_last)
    out[: len(x)] = x
    return out


def _memory_format_of(net: torch.nn.Module) -> Optional[torch.memory_format]:
    """The memory format of the first 4-d parameter of ``net`` (None: it has none)."""
    for parameter in net.parameters():
        if parameter.dim() == 4:
            return (
                torch.channels_last
                if (parameter.is_contiguous(memory_format=torch.channels_last) and not parameter.is_contiguous())
                else torch.contiguous_format
            )
    return None


def _runner(net: torch.nn.Module, o: _Plan) -> torch.nn.Module:
    """The module that encodes: ``net`` itself when it already sits on the device in the
    memory format asked for, else a copy (BatchNorm folded with ``o.fold``) that does. The
    caller's network keeps its device and memory format; its mode is the caller's to restore."""
    runner = inference_copy(net) if o.fold else net
    weight = next(runner.parameters(), None)
    placed = weight is None or same_device(weight.device, o.device)  # cuda:0 is cuda on GPU 0
    formatted = _memory_format_of(runner) in (None, o.memory_format) or not o.config.channels_last
    if runner is net and placed and formatted:
        return net
    if runner is net:
        runner = copy.deepcopy(net)
    runner = runner.to(o.device)
    return runner.to(memory_format=o.memory_format) if o.config.channels_last else runner


def _extract_block(
    net: ImageRetrievalNet,
    images: Sequence[Union[str, Path]],
    image_size: Optional[float],
    transform: Callable,
    bbxs: Optional[Sequence[Optional[BBox]]],
    o: _Plan,
    bad: Optional[List[int]],
) -> torch.Tensor:
    """`extract_vectors` of one process's images (``bad``: None = raise on an
    unreadable image, a list = skip it and append its index). The network may be left in eval
    mode, on the device: `extract_vectors` gives it back as it was."""
    # the network first: once worker processes are started (copies of this one), every page
    # the main process writes is copied first (a one-image ResNet101 call with the fold and
    # one worker took 0.49 s instead of 0.34 s)
    runner = _runner(net, o).eval()
    describe = cast(BatchEncoder, runner.descriptors)
    encode: BatchEncoder = cast(BatchEncoder, torch.compile(describe)) if o.config.compile else describe
    meta = getattr(net, "meta", {})
    decode = o.decoding.decoder(o.device, meta.get("mean", ()), meta.get("std", ()))
    dataset = o.decoding.dataset(images, image_size, bbxs, transform)
    loader = _image_loader(dataset, effective_workers(o.config.workers, o.device), o.device, o.decoding)
    with contextlib.closing(loader):  # the workers stop with the call, even when it raises
        try:
            return _encode_loaded(loader, encode, decode, o, _Columns(len(images), meta.get("outputdim", 0)), bad)
        except _TooSmall as err:
            raise ImageLoadError(
                f"image {images[err.index]} is too small for the network: {err.shape[1]}x{err.shape[0]} pixels "
                f"after resizing (image size {image_size}, scales {list(o.scales)}); raise the image size or drop "
                "the smallest scales, or leave the image out (test.py and search index skip it with --skip-bad-images)"
            ) from None


#: what torch says when an input is too small for a pooling, a kernel or a scale
_TOO_SMALL = ("Output size is too small", "sizes should be greater than 0", "Kernel size can't be greater")


class _TooSmall(AmlError):
    """A batch of images too small for the network (``index``: its first image)."""

    def __init__(self, index: int, shape: Tuple[int, ...]):
        super().__init__(index, shape)
        self.index, self.shape = index, shape


def _encode_loaded(
    loader: Iterator[Tuple[Any, int]],
    encode: BatchEncoder,
    decode: BatchDecoder,
    o: _Plan,
    columns: "_Columns",
    bad: Optional[List[int]],
) -> torch.Tensor:
    """The descriptors of the loader's images, decoded and encoded in batches of one shape,
    gathered by ``columns`` (``bad``: as in `_extract_block`)."""
    autocast = torch.autocast(o.device.type, dtype=o.amp) if o.amp else contextlib.nullcontext()
    cap = _BatchCap()
    largest = o.config.batch_size or default_batch_size(o.device, SMALLEST_PENDING_SHAPE)
    with (
        torch.inference_mode(),
        progress_bar(
            total=columns.count, enabled=o.config.progress, unit="img", desc=o.config.desc, leave=False
        ) as bar,
    ):
        for items, indices in _batches(loader, o.limit, o.decoding.shape, 4 * largest, bad):
            failed: Optional[List[int]] = [] if bad is not None else None
            x = decode(items, failed)  # outside autocast: the pixels are the same in every precision
            if failed and bad is not None:  # named in the log by the decoder
                bad.extend(indices[k] for k in failed)
                indices = [i for k, i in enumerate(indices) if k not in set(failed)]
                bar.update(-len(failed))  # counted again with the skipped below
            if x is not None:
                if o.fixed:
                    x = _padded(x, fixed_batch_size(len(x), o.limit(o.decoding.shape(items[0]))))
                try:
                    with autocast:
                        out = cap.describe(encode, x.contiguous(memory_format=o.memory_format), o.scales, o.msp)
                except RuntimeError as err:  # one shape per batch: all its images are too small, or none
                    if isinstance(err, torch.OutOfMemoryError) or not any(t in str(err) for t in _TOO_SMALL):
                        raise
                    if bad is None:
                        raise _TooSmall(indices[0], tuple(x.shape[-2:])) from None
                    log.warning(
                        ">> %d images of %s pixels skipped: too small for the network",
                        len(indices),
                        "x".join(str(v) for v in x.shape[-2:][::-1]),
                    )
                    bad.extend(indices)
                    bar.update(-len(indices))  # counted again with the skipped below
                else:
                    columns.add(out[: len(indices)], indices)
            bar.update(len(items))
        if bad:
            bar.update(len(bad))
        return columns.result()


def describe_images(
    net: ImageRetrievalNet,
    images: Sequence[str],
    image_size: int,
    scales: Sequence[float] = (1,),
    msp: Optional[float] = None,
    bbxs: Optional[Sequence[Optional[BBox]]] = None,
    config: ExtractionConfig = DEFAULT_EXTRACTION,
    skipped: Optional[List[int]] = None,
) -> np.ndarray:
    """D x N float32 descriptors of images, with the network's own mean/std transform.

    Args:
        net: the network; its ``meta`` gives the mean and std.
        images: the image files.
        image_size: the longer side images are shrunk to (never enlarged).
        scales: the scales.
        msp: the power used to average the scales; None: the network's
            (`aml.networks.multiscale_power`).
        bbxs: per image, a crop box (x1, y1, x2, y2) or None.
        config: how to extract (`ExtractionConfig`).
        skipped: with ``config.skip_bad``, the indices of the unreadable images are appended
            here.

    Returns:
        The descriptors as a numpy array, column i for image i.

    Examples:
        >>> from aml.descriptors import describe_images
        >>> from aml.networks import load_named_or_file
        >>> net = load_named_or_file("retrievalSfM120k-vgg16-gem").net  # doctest: +SKIP
        >>> describe_images(net, ["a.jpg", "b.jpg"], 1024, scales=(1, 2 ** 0.5, 2 ** -0.5)).shape  # doctest: +SKIP
        (512, 2)
    """
    check_network(net)
    transform = image_transform(net.meta["mean"], net.meta["std"])
    if msp is None:
        msp = multiscale_power(net, list(scales))
    return extract_vectors(
        net, images, image_size, transform, bbxs=bbxs, ms=list(scales), msp=msp, config=config, skipped=skipped
    ).numpy()
