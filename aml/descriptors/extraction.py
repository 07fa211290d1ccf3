"""The one descriptor extraction function of the package (mining, testing, features).

Images are decoded and resized in parallel workers; images that come out with the same
shape are stacked into one batch (no padding, so the descriptor of an image never depends
on its batch-mates); the forward runs under ``torch.inference_mode`` with optional
channels_last and autocast. Result: a D x N float32 CPU tensor, column i = image i.
"""

import contextlib
import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from aml.data.images import BBox, ImageLoadError, ImagesFromList, image_transform
from aml.utils.distributed import World, concat_lists, current_world, gather_columns, gather_objects, shard_range

log = logging.getLogger(__name__)

Device = Union[str, torch.device]


@dataclass(frozen=True)
class _Unreadable:
    """What a loader worker hands back instead of an image it could not read."""

    error: ImageLoadError


class _ReportErrors(Dataset):
    """Wraps ImagesFromList so that a bad image reaches the main process as an
    :class:`_Unreadable` item (raised there by name, or skipped), not as a worker traceback."""

    def __init__(self, inner: ImagesFromList):
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int):
        try:
            return self.inner[index]
        except ImageLoadError as err:
            return _Unreadable(err), index


def _batches(loader: Iterator, batch_size: int, max_pending: int,
             skipped: Optional[List[int]] = None) -> Iterator[Tuple[torch.Tensor, List[int]]]:
    """Group single images by shape; yield (stacked images, their indices). An unreadable
    image raises, or, when ``skipped`` is a list, has its index appended there."""
    buckets: Dict[Tuple[int, ...], List[Tuple[torch.Tensor, int]]] = defaultdict(list)
    pending = 0
    for image, index in loader:
        if isinstance(image, _Unreadable):
            if skipped is None:
                raise image.error
            log.warning(">> skipped: %s", image.error)
            skipped.append(index)
            continue
        bucket = buckets[tuple(image.shape)]
        bucket.append((image, index))
        pending += 1
        if len(bucket) >= batch_size:
            pending -= len(bucket)
            yield _stack(buckets.pop(tuple(image.shape)))
        elif pending > max_pending:  # many distinct shapes: flush the fullest bucket
            shape = max(buckets, key=lambda s: len(buckets[s]))
            pending -= len(buckets[shape])
            yield _stack(buckets.pop(shape))
    for bucket in buckets.values():
        yield _stack(bucket)


def _stack(items: List[Tuple[torch.Tensor, int]]) -> Tuple[torch.Tensor, List[int]]:
    return torch.stack([image for image, _ in items]), [index for _, index in items]


def effective_workers(workers: int, device: torch.device) -> int:
    """Loader workers actually used: on the CPU, workers and compute threads share the
    cores, and workers beyond the cores left free by torch's threads only slow extraction
    down (measured with benchmarks/extract.py)."""
    if device.type != "cpu":
        return workers
    free_cores = (os.cpu_count() or 1) - torch.get_num_threads()
    return max(0, min(workers, free_cores))


def default_batch_size(device: torch.device) -> int:
    """Images per forward when the caller does not say: large batches feed a GPU; on the
    CPU, batches of 4 were fastest (bigger ones fall out of cache; benchmarks/extract.py)."""
    return 32 if device.type == "cuda" else 4


def _describe(net: torch.nn.Module, x: torch.Tensor, scales: Sequence[float], msp: float) -> torch.Tensor:
    """B x D descriptors of a batch; multi-scale as cirtorch (power mean with msp, then L2)."""
    if list(scales) == [1]:
        return net.descriptors(x).float()
    total = 0.0
    for scale in scales:
        xs = x if scale == 1 else F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
        total = total + net.descriptors(xs).float().pow(msp)
    v = (total / len(scales)).pow(1.0 / msp)
    return v / torch.linalg.vector_norm(v, dim=1, keepdim=True)


def _image_loader(images: Sequence[Union[str, Path]], image_size: Optional[float],
                  bbxs: Optional[Sequence[Optional[BBox]]], transform: Callable, workers: int,
                  device: torch.device) -> DataLoader:
    """Single decoded images (and their indices) from parallel workers, in order."""
    dataset = _ReportErrors(ImagesFromList(images, image_size, bbxs, transform))
    workers = effective_workers(workers, device)
    return DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers, pin_memory=device.type == "cuda",
                      prefetch_factor=4 if workers else None, persistent_workers=False)


def extract_vectors(
    net: torch.nn.Module,
    images: Sequence[Union[str, Path]],
    image_size: Optional[float],
    transform: Callable,
    bbxs: Optional[Sequence[Optional[BBox]]] = None,
    ms: Sequence[float] = (1,),
    msp: float = 1.0,
    print_freq: int = 10,
    workers: int = 4,
    device: Optional[Device] = None,
    batch_size: Optional[int] = None,
    amp: bool = False,
    channels_last: bool = True,
    progress: bool = False,
    skip_bad: bool = False,
    skipped: Optional[List[int]] = None,
    desc: str = "extracting",
    collective: bool = True,
) -> torch.Tensor:
    """Descriptors of ``images`` as a D x N float32 CPU tensor (cirtorch semantics).

    ``bbxs`` crops queries; ``ms`` lists scales and ``msp`` the power used to average them;
    ``device`` defaults to the network's. Batches hold only images of equal shape, so in
    fp32 the result equals the one-image-at-a-time loop up to float rounding. Loader
    workers are capped on the CPU (:func:`effective_workers`). ``amp``
    autocasts to bfloat16 (CUDA); ``channels_last`` (default on: 1.3-1.5x faster batched
    extraction on the CPU, see benchmarks/extract.py) also converts the network; ``batch_size``
    defaults to :func:`default_batch_size`. The network's
    train/eval mode is restored afterwards. ``print_freq`` is accepted for cirtorch
    compatibility; progress goes to a tqdm bar (stderr, titled ``desc``) when ``progress``.
    An unreadable image raises :class:`ImageLoadError` naming it; with ``skip_bad`` it is
    skipped instead, its column left at zero and its index appended to ``skipped``.

    Under torchrun the call is collective: every rank encodes its contiguous block of the
    images (:func:`aml.utils.distributed.shard_range`) and every rank returns the whole
    D x N result (and the whole ``skipped`` list). ``collective`` False: this process
    encodes all of ``images`` alone (the shards of a descriptor store).
    """
    del print_freq
    world = current_world() if collective else World()
    mine = shard_range(len(images), world)
    local_skipped: Optional[List[int]] = [] if skip_bad else None
    vecs = _extract_block(net, [images[i] for i in mine], image_size, transform,
                          [bbxs[i] for i in mine] if bbxs is not None else None, ms, msp, workers, device, batch_size,
                          amp, channels_last, progress and world.is_main, local_skipped, desc)
    if world.distributed:
        vecs = gather_columns(vecs, len(images), world)
    if skip_bad:
        found = concat_lists(gather_objects([mine.start + i for i in local_skipped], world))
        if skipped is not None:
            skipped.extend(found)
    return vecs


def _extract_block(net: torch.nn.Module, images: Sequence[Union[str, Path]], image_size: Optional[float],
                   transform: Callable, bbxs: Optional[Sequence[Optional[BBox]]], ms: Sequence[float], msp: float,
                   workers: int, device: Optional[Device], batch_size: Optional[int], amp: bool, channels_last: bool,
                   progress: bool, bad: Optional[List[int]], desc: str) -> torch.Tensor:
    """:func:`extract_vectors` of one process's images (``bad``: None = raise on an
    unreadable image, a list = skip it and append its index)."""
    device = torch.device(device) if device is not None else next(net.parameters()).device
    net.to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    was_training = net.training
    net.eval()
    if channels_last:
        net.to(memory_format=torch.channels_last)
    loader = _image_loader(images, image_size, bbxs, transform, workers, device)
    dataset = loader.dataset
    batch_size = batch_size or default_batch_size(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()
    vecs: Optional[torch.Tensor] = None
    try:
        with torch.inference_mode(), autocast, tqdm(total=len(dataset), disable=not progress, unit="img",
                                                     desc=desc, leave=False) as bar:
            for x, indices in _batches(iter(loader), max(batch_size, 1), 4 * max(batch_size, 1), bad):
                x = x.to(device, non_blocking=True).contiguous(memory_format=memory_format)
                out = _describe(net, x, ms, msp).cpu()
                if vecs is None:
                    vecs = torch.zeros(out.shape[1], len(dataset))
                vecs[:, indices] = out.t()
                bar.update(len(indices))
            if bad:
                bar.update(len(bad))
    finally:
        net.train(was_training)
    if vecs is None:
        dim = net.meta.get("outputdim", 0) if hasattr(net, "meta") else 0
        vecs = torch.zeros(dim, len(dataset))
    return vecs


def describe_images(net, images: Sequence[str], image_size: int, scales: Sequence[float] = (1,),
                    msp: float = 1.0, bbxs=None, **options: Any) -> np.ndarray:
    """D x N float32 descriptors of ``images`` with the network's own mean/std transform
    (``options`` go to :func:`extract_vectors`)."""
    transform = image_transform(net.meta["mean"], net.meta["std"])
    return extract_vectors(net, images, image_size, transform, bbxs=bbxs, ms=list(scales), msp=msp, **options).numpy()
