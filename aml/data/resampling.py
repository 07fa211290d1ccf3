"""PIL's LANCZOS resizing on tensors, to the bit: the shrinking of `aml.data.images.imresize`
done on the compute device, for images the device decodes.

PIL resizes an 8-bit image in two passes, one along each axis (Pillow 13 shrinks the height
first when that removes more than twice as many rows as the other pass removes columns,
earlier releases always the width first; both orders are matched). For each
output pixel of an axis it weighs the source pixels within 3 x (source / output size) of its
centre by the Lanczos-3 kernel stretched by that factor, normalises the weights to sum to 1 and
rounds them to fixed point (22 fractional bits); the weighted sum, plus half a unit, is shifted
back and clipped to 0..255 after each pass. This module computes the same weights in double
precision (Python's ``math.sin`` is the C library's, as PIL's) and the same integer sums in
int32, so a pass gives PIL's bytes exactly, on any device.

When the image is 4 times the output or more along an axis, ``thumbnail`` first reduces it by
an integer factor (``reducing_gap`` 2.0) and then resizes from a fractional box; such images
are left to PIL (`reduces_first`).
"""

import functools
import math
from typing import Dict, List, Sequence, Tuple

import numpy as np
import PIL
import torch

from aml.utils.devices import to_device

#: the fractional bits of PIL's fixed-point weights (32 - 8 - 2)
PRECISION_BITS = 22
#: the half of Lanczos-3's window, in source pixels at scale 1
LANCZOS_SUPPORT = 3.0
#: thumbnail's reducing_gap: it reduces first by int(source / output / 2) when that is 2 or more
REDUCING_GAP = 2.0
#: the Pillow release from which a pass along the height may come first
HEIGHT_FIRST_SINCE = 13


def height_first(source: Tuple[int, int], shape: Tuple[int, int], pillow: str = PIL.__version__) -> bool:
    """Whether PIL resizes ``source`` (height, width) to ``shape`` along the height first.

    Args:
        source: the image's (height, width).
        shape: the output's (height, width).
        pillow: the Pillow release whose order to follow (the installed one).

    Returns:
        True from Pillow 13 when the height loses more than twice as many rows as the width
        loses columns; False before.

    Examples:
        >>> from aml.data.resampling import height_first
        >>> height_first((900, 301), (300, 100), "13.0.0"), height_first((900, 301), (300, 100), "12.1.0")
        (True, False)
    """
    if int(pillow.split(".")[0]) < HEIGHT_FIRST_SINCE:
        return False
    return source[0] - shape[0] > 2 * (source[1] - shape[1])


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x


def _lanczos(x: float) -> float:
    return _sinc(x) * _sinc(x / 3) if -3.0 <= x < 3.0 else 0.0


def _fixed_point(weight: float) -> int:
    """A weight in PIL's fixed point: scaled, then rounded half away from zero."""
    scaled = weight * (1 << PRECISION_BITS)
    return int(scaled + 0.5) if weight >= 0 else int(scaled - 0.5)


def lanczos_taps(in_size: int, out_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """The source pixels and fixed-point weights of PIL's LANCZOS resizing of one axis.

    Args:
        in_size: the source's length along the axis.
        out_size: the output's length.

    Returns:
        ``(index, weight)``, both ``out_size x taps``: output pixel i is
        ``sum_k source[index[i, k]] * weight[i, k]`` in units of ``2**-22``; unused taps have
        weight 0.

    Examples:
        >>> from aml.data.resampling import lanczos_taps
        >>> index, weight = lanczos_taps(4, 2)
        >>> index[0, :4].tolist(), weight.shape, weight.sum(axis=1).tolist()  # weights sum to 1
        ([0, 1, 2, 3], (2, 13), [4194304, 4194304])
    """
    scale = in_size / out_size
    stretch = max(scale, 1.0)
    support = LANCZOS_SUPPORT * stretch
    taps = math.ceil(support) * 2 + 1
    index = np.zeros((out_size, taps), dtype=np.int64)
    weight = np.zeros((out_size, taps), dtype=np.int32)
    reciprocal = 1.0 / stretch  # PIL multiplies by it
    for i in range(out_size):
        centre = (i + 0.5) * scale
        first = max(int(centre - support + 0.5), 0)
        count = min(int(centre + support + 0.5), in_size) - first
        kernel = [_lanczos((x + first - centre + 0.5) * reciprocal) for x in range(count)]
        total = sum(kernel)
        if total != 0.0:
            kernel = [w / total for w in kernel]
        index[i] = first  # unused taps read a pixel of the image, weighed 0
        index[i, :count] = np.arange(first, first + count)
        weight[i, :count] = [_fixed_point(w) for w in kernel]
    return index, weight


@functools.lru_cache(maxsize=256)
def _host_taps(in_size: int, out_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """`lanczos_taps`, read-only, computed once per pair of lengths for every extraction (each
    takes milliseconds of Python; a data set's photos come in a few hundred shapes; a pair's
    arrays take up to a few hundred kB)."""
    index, weight = lanczos_taps(in_size, out_size)
    index.setflags(write=False)
    weight.setflags(write=False)
    return index, weight


def reduces_first(size: Tuple[int, int], shape: Tuple[int, int]) -> bool:
    """Whether PIL's ``thumbnail`` of an image of ``size`` to ``shape`` reduces it by an
    integer factor before resizing (a source 4 times the output or more along an axis).

    Args:
        size: the source's (width, height).
        shape: the output's (height, width).

    Returns:
        True when `LanczosResize` would not give PIL's pixels.
    """
    (width, height), (out_height, out_width) = size, shape
    return int(width / out_width / REDUCING_GAP) > 1 or int(height / out_height / REDUCING_GAP) > 1


def _same_channels(images: Sequence[torch.Tensor]) -> None:
    """Refuse a batch whose images have different numbers of channels (decoded as RGB, they all have 3)."""
    channels = {image.shape[0] for image in images}
    if len(channels) > 1:
        raise ValueError(f"images of {sorted(channels)} channels cannot be resized into one batch")


class LanczosResize:
    """PIL's LANCZOS resizing of uint8 images on a device, keeping each axis's taps.

    Args:
        device: where the images are.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.taps: Dict[Tuple[int, int], Tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, images: torch.Tensor, shape: Tuple[int, int]) -> torch.Tensor:
        """``images`` (B x C x H x W, values 0..255) resized to ``shape`` (height, width) as PIL does.

        Args:
            images: the images, on the device.
            shape: the output's (height, width), at most the input's.

        Returns:
            B x C x height x width float32 images of integer values 0..255.
        """
        if tuple(images.shape[-2:]) == tuple(shape):  # already resized (by the loader's workers)
            return images.float()
        out = images.to(torch.int32)
        passes = [(-1, shape[1]), (-2, shape[0])]
        for dim, size in reversed(passes) if height_first((out.shape[-2], out.shape[-1]), shape) else passes:
            if out.shape[dim] != size:
                out = self._pass(out, dim, size)
        return out.float()

    def many(self, images: Sequence[torch.Tensor], shape: Tuple[int, int]) -> torch.Tensor:
        """Images of any source shapes resized to ``shape`` as one batch, each as PIL does.

        Images of one source shape are resized together. Of several: on a GPU all in one pass
        per axis, each image read through its own taps (`mixed`), where resizing each shape
        apart launches a few hundred kernels per image of a batch of photos of many sizes;
        on the CPU (where one shape's tensors stay in the cache), or where padding to the
        largest would more than double the pixels, one shape at a time.

        Args:
            images: C x H x W images (values 0..255), on the device.
            shape: the output's (height, width), at most each input's.

        Returns:
            B x C x height x width float32 images of integer values 0..255, in ``images``' order.
        """
        _same_channels(images)
        sources: Dict[Tuple[int, ...], List[int]] = {}
        for k, image in enumerate(images):
            sources.setdefault(tuple(image.shape), []).append(k)
        if len(sources) == 1:
            return self(torch.stack(list(images)), shape)
        padded = len(images) * max(image.shape[-2] for image in images) * max(image.shape[-1] for image in images)
        if self.device.type != "cpu" and padded <= 2 * sum(image[0].numel() for image in images):
            return self.mixed(images, shape)
        rows: List[torch.Tensor] = [images[0]] * len(images)
        for members in sources.values():
            for k, row in zip(members, self(torch.stack([images[k] for k in members]), shape), strict=True):
                rows[k] = row
        return torch.stack(rows)

    def mixed(self, images: Sequence[torch.Tensor], shape: Tuple[int, int]) -> torch.Tensor:
        """Images of several source shapes resized to ``shape`` in one pass per axis (and per
        Pillow 13 order), each read through its own taps from a zero-padded batch: a few
        kernels per tap for the whole batch, whatever the number of shapes. The padded batch
        is held in int32, twice (its first pass reads it along the axis), and its taps are
        built on the host and copied for each batch.

        Args:
            images: C x H x W images (values 0..255) of any sizes, on the device.
            shape: the output's (height, width), at most each input's.

        Returns:
            B x C x height x width float32 images of integer values 0..255, in ``images``' order.
        """
        _same_channels(images)
        rows: List[torch.Tensor] = [images[0]] * len(images)
        orders = [height_first((image.shape[-2], image.shape[-1]), shape) for image in images]
        for first in sorted(set(orders)):  # Pillow 13's order can differ from image to image
            members = [k for k, order in enumerate(orders) if order == first]
            sizes = [(images[k].shape[-2], images[k].shape[-1]) for k in members]
            out = torch.zeros(
                (len(members), images[0].shape[0], max(h for h, _ in sizes), max(w for _, w in sizes)),
                dtype=torch.int32,
                device=images[0].device,
            )
            for row, k in enumerate(members):
                out[row, :, : sizes[row][0], : sizes[row][1]] = images[k]
            passes = [(-1, 1), (-2, 0)]  # (dim, the axis's place in (height, width))
            for dim, axis in reversed(passes) if first else passes:
                out = self._batched_pass(out, dim, [size[axis] for size in sizes], shape[axis])
            for row, k in enumerate(members):
                rows[k] = out[row]
        return torch.stack(rows).float()

    def _batched_pass(self, images: torch.Tensor, dim: int, in_sizes: List[int], out_size: int) -> torch.Tensor:
        """`_pass` with each image's own taps, reading whole contiguous rows of the batch (an
        image whose length is already ``out_size`` is copied: its taps weigh one pixel by 1,
        as PIL's skipped pass leaves it)."""
        index, weight = self._batch_taps(in_sizes, out_size, images.shape[dim])
        moved = images.movedim(dim, 1).contiguous()  # B x length x the rest
        rows = moved.reshape(moved.shape[0] * moved.shape[1], -1)
        total = torch.full(
            (index.shape[1], rows.shape[1]), 1 << (PRECISION_BITS - 1), dtype=torch.int32, device=rows.device
        )
        term = torch.empty_like(total)
        for k in range(index.shape[0]):
            total += torch.mul(rows.index_select(0, index[k]), weight[k, :, None], out=term)
        total = (total >> PRECISION_BITS).clamp_(0, 255)
        return total.reshape((moved.shape[0], out_size) + tuple(moved.shape[2:])).movedim(1, dim)

    def _batch_taps(self, in_sizes: List[int], out_size: int, length: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """taps x (B * out_size) row indices into the batch's rows (image b's start at
        ``b * length``) and their weights: each image's `lanczos_taps`, padded with taps of
        weight 0, copied to the device in one copy each without waiting for it."""
        taps = [_host_taps(size, out_size) for size in in_sizes]
        width = max(one_index.shape[1] for one_index, _ in taps)
        index = np.zeros((width, len(taps), out_size), dtype=np.int64)
        weight = np.zeros((width, len(taps), out_size), dtype=np.int32)
        for row, (one_index, one_weight) in enumerate(taps):
            index[:, row] = row * length
            index[: one_index.shape[1], row] += one_index.T
            weight[: one_weight.shape[1], row] = one_weight.T
        index, weight = index.reshape(width, -1), weight.reshape(width, -1)
        return to_device(torch.from_numpy(index), self.device), to_device(torch.from_numpy(weight), self.device)

    def _axis_taps(self, in_size: int, out_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """The taps of one axis on the device, copied without waiting for it (a blocking copy
        in the middle of a batch is a host sync on CUDA)."""
        if (in_size, out_size) not in self.taps:
            index, weight = (torch.tensor(taps) for taps in _host_taps(in_size, out_size))  # this resizer's own
            self.taps[in_size, out_size] = (to_device(index, self.device), to_device(weight, self.device))
        return self.taps[in_size, out_size]

    def _pass(self, images: torch.Tensor, dim: int, out_size: int) -> torch.Tensor:
        """One axis: int32 sums of the taps from half a unit, shifted back and clipped, as PIL's.
        The axis goes first, so that each tap gathers whole contiguous rows."""
        index, weight = self._axis_taps(images.shape[dim], out_size)
        moved = images.movedim(dim, 0).contiguous()
        rows = moved.reshape(moved.shape[0], -1)
        total = torch.full((out_size, rows.shape[1]), 1 << (PRECISION_BITS - 1), dtype=torch.int32, device=rows.device)
        term = torch.empty_like(total)
        for k in range(index.shape[1]):
            total += torch.mul(rows.index_select(0, index[:, k]), weight[:, k, None], out=term)
        total = (total >> PRECISION_BITS).clamp_(0, 255)
        return total.reshape((out_size,) + tuple(moved.shape[1:])).movedim(0, dim)
