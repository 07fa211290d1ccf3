"""Loading tuples for training: images of student members (uint8 pixels, normalised on the
compute device), teacher descriptors of the others, and encoding a tuple with the student
(images of equal shape in one forward)."""

from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, Hashable, List, Optional, Sequence, cast

import torch
from torch.utils.data import Dataset

from aml.data.images import PixelNormalizer, image_pixels, load_and_resize
from aml.descriptors.extraction import BatchEncoder
from aml.losses.batch import TupleBatch
from aml.losses.context import TeacherContext
from aml.training.modes import TrainingTuple
from aml.utils.devices import to_device


@dataclass
class TupleItem:
    """One tuple as the loader gives it: the tuple, and its student members' images (decoded
    and resized in a loader worker, 3 x H x W uint8 pixels), in member order."""

    tuple: TrainingTuple
    images: List[torch.Tensor]

    def pin_memory(self) -> "TupleItem":
        """A copy with page-locked images, for an asynchronous copy to the GPU (the loader's
        pinning thread calls it on CUDA, so the training loop does not pin them itself)."""
        return TupleItem(self.tuple, [image.pin_memory() for image in self.images])


class TupleDataset(Dataset):
    """Item i = `TupleItem` of tuple i: the pixels of the members the student encodes
    (the others are the teacher's descriptors, added by `encode_batch` in the main
    process, where the teacher's matrix lives, maybe on the GPU). The pixels are uint8, a
    quarter of the bytes of normalised float32 images: the encoder normalises them on the
    compute device (`from_pixels`)."""

    def __init__(self, tuples: Sequence[TrainingTuple], images: Sequence[str], image_size: int):
        self.tuples, self.images, self.image_size = list(tuples), list(images), image_size

    def __len__(self) -> int:
        return len(self.tuples)

    def __getitem__(self, index: int) -> TupleItem:
        t = self.tuples[index]
        return TupleItem(
            t,
            [
                image_pixels(load_and_resize(self.images[m], self.image_size))
                for m, teacher in zip(t.members, t.from_teacher, strict=True)
                if not teacher
            ],
        )


def collate_list(batch: List[TupleItem]) -> List[TupleItem]:
    """Tuples differ in image sizes: a batch is just the list of items."""
    return batch


def shape_grouped_batches(keys: Sequence[Hashable], batch_size: int, generator: torch.Generator) -> List[List[int]]:
    """Full mini-batches of item indices in which items share a key (an image shape) where
    possible: each key's items are shuffled and cut into batches, the leftovers of all keys
    are shuffled into mixed batches (a trailing partial batch is dropped), and the batch
    order is shuffled. Deterministic for a given ``generator`` state."""
    groups: Dict[Hashable, List[int]] = defaultdict(list)
    for index, key in enumerate(keys):
        groups[key].append(index)
    batches: List[List[int]] = []
    leftovers: List[int] = []
    for members in groups.values():
        shuffled = [members[i] for i in torch.randperm(len(members), generator=generator).tolist()]
        full = len(shuffled) - len(shuffled) % batch_size
        batches += [shuffled[k : k + batch_size] for k in range(0, full, batch_size)]
        leftovers += shuffled[full:]
    leftovers = [leftovers[i] for i in torch.randperm(len(leftovers), generator=generator).tolist()]
    batches += [leftovers[k : k + batch_size] for k in range(0, len(leftovers) - batch_size + 1, batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def from_pixels(encode: BatchEncoder, normalise: PixelNormalizer) -> BatchEncoder:
    """``encode`` of batches of uint8 pixels: normalised first, on their device.

    Args:
        encode: B x 3 x H x W normalised images -> B x D descriptors.
        normalise: the network's normalisation.

    Returns:
        The encoder of pixels.
    """

    def encoded(pixels: torch.Tensor) -> torch.Tensor:
        return encode(normalise(pixels))

    return encoded


def encode_images(
    encode: BatchEncoder, images: Sequence[torch.Tensor], device: torch.device, shapes: Sequence[tuple] = ()
) -> torch.Tensor:
    """B x D student descriptors by ``encode`` (``net.descriptors``, or the distributed
    wrapper around it); images of the same shape share one forward pass. With frozen
    BatchNorm the result equals one forward per image; with BatchNorm in train mode each
    shape group is normalised by its own batch statistics. ``shapes``, when given, is the
    order of the forward passes and must hold every image shape; a shape without images gets
    a forward of an empty batch, which the backward reaches too (SyncBatchNorm: every rank
    makes the same calls, forward and backward)."""
    groups: Dict[tuple, List[int]] = defaultdict(list)
    for i, image in enumerate(images):
        groups[tuple(image.shape)].append(i)
    rows: List[Optional[torch.Tensor]] = [None] * len(images)
    empty: List[torch.Tensor] = []
    for shape in shapes or list(groups):
        indices = groups.get(shape, [])
        batch = (
            torch.stack([to_device(images[i], device) for i in indices])
            if indices
            else torch.empty((0,) + tuple(shape), device=device)
        )
        out = encode(batch.contiguous(memory_format=torch.channels_last)).float()
        if not indices:
            empty.append(out)
        for row, i in enumerate(indices):
            rows[i] = out[row]
    encoded = torch.stack(cast(List[torch.Tensor], rows)) if rows else out  # every row encoded
    if not empty:
        return encoded
    # SyncBatchNorm's backward of an empty batch takes part in its collectives only when the
    # backward reaches it: every forward joins the result (adding zero), so that every rank
    # makes the same backward calls (else the ranks' all_reduce calls pair up wrongly, or hang)
    return encoded + torch.stack([out.sum() for out in empty]).sum() * 0


def encode_batch(
    encode: BatchEncoder,
    items: Sequence[TupleItem],
    device: torch.device,
    teacher: Optional[torch.Tensor] = None,
    shapes: Sequence[tuple] = (),
    target: bool = False,
    context: Optional[TeacherContext] = None,
) -> TupleBatch:
    """The `TupleBatch` of ``items``: the student images of all items encoded together
    (see `encode_images`), the teacher's members read from ``teacher`` (D x N, the
    split's descriptors), tuples shorter than the longest padded (label -1). With ``target``
    also the teacher's distance from each query to each member; with ``context`` (the split's
    `TeacherContext`) also each tuple's query image, a row of it."""
    if target and teacher is None:
        raise ValueError("the teacher's distances need the teacher's descriptors of the split")
    images = [image for item in items for image in item.images]
    encoded = encode_images(encode, images, device, shapes) if images or shapes else None
    teacher_members = [
        m for item in items for m, flag in zip(item.tuple.members, item.tuple.from_teacher, strict=True) if flag
    ]
    assert teacher is not None or not teacher_members, "teacher members need the teacher's descriptors"
    parts = [
        p
        for p in (
            encoded,
            _columns(cast(torch.Tensor, teacher), teacher_members).t().to(device) if teacher_members else None,
        )
        if p is not None
    ]
    table = torch.cat([p.float() for p in parts])  # student rows, then teacher rows
    width = max(len(item.tuple.members) for item in items)
    index = torch.zeros((len(items), width), dtype=torch.long)
    labels = torch.full((len(items), width), -1, dtype=torch.long)
    student, from_teacher = 0, len(images)
    for b, item in enumerate(items):
        for s, flag in enumerate(item.tuple.from_teacher):
            if flag:
                index[b, s], from_teacher = from_teacher, from_teacher + 1
            else:
                index[b, s], student = student, student + 1
        labels[b, : len(item.tuple.labels)] = torch.tensor(item.tuple.labels)
    rows = table[to_device(index, table.device)]
    distances = None
    if target:
        assert teacher is not None  # checked above
        distances = torch.stack([_teacher_distances(teacher, item.tuple.members, width) for item in items])
        distances = distances[:, 1:].to(table.device)
    queries = None
    if context is not None:
        queries = to_device(
            torch.tensor([item.tuple.members[0] for item in items], dtype=torch.long), context.descriptors.device
        )
    return TupleBatch(
        rows[:, 0], rows[:, 1:], to_device(labels[:, 1:].contiguous(), table.device), distances, queries, context
    )


def _columns(teacher: torch.Tensor, members: Sequence[int]) -> torch.Tensor:
    """The columns ``members`` of the teacher's D x N matrix (the index copied without a host sync)."""
    return teacher[:, to_device(torch.tensor(list(members), dtype=torch.long), teacher.device)]


def _teacher_distances(teacher: torch.Tensor, members: Sequence[int], width: int) -> torch.Tensor:
    """||t_m - t_query|| for every member m of a tuple (the query first: 0), padded to ``width``."""
    columns = _columns(teacher, members)
    d = torch.linalg.vector_norm(columns - columns[:, :1], dim=0).float()
    return torch.cat([d, d.new_zeros(width - len(members))])
