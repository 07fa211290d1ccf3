"""Loading tuples for training: images of student members, teacher descriptors of the
others, and encoding a tuple with the student (images of equal shape in one forward)."""

from collections import defaultdict
from typing import Any, Callable, Dict, Hashable, List, Optional, Sequence

import torch
from torch.utils.data import Dataset

from aml.data.images import load_and_resize
from aml.descriptors.extraction import BatchEncoder
from aml.training.modes import TrainingTuple


class TupleDataset(Dataset):
    """Item i = dict(images, image_slots, teacher_slots, members, labels): the student images
    of tuple i, decoded in a loader worker; :func:`with_teacher` adds its teacher columns
    in the main process (the teacher's matrix may live on the GPU)."""

    def __init__(self, tuples: Sequence[TrainingTuple], images: Sequence[str], image_size: int, transform: Callable):
        self.tuples, self.images, self.image_size, self.transform = list(tuples), list(images), image_size, transform

    def __len__(self) -> int:
        return len(self.tuples)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        t = self.tuples[index]
        image_slots = [s for s, flag in enumerate(t.from_teacher) if not flag]
        return {
            "images": [self.transform(load_and_resize(self.images[t.members[s]], self.image_size)) for s in image_slots],
            "image_slots": image_slots,
            "teacher_slots": [s for s, flag in enumerate(t.from_teacher) if flag],
            "members": list(t.members),
            "labels": torch.tensor(t.labels, dtype=torch.float32),
        }


def with_teacher(items: List[Dict[str, Any]], teacher: Optional[torch.Tensor]) -> List[Dict[str, Any]]:
    """Each item with ``teacher`` (the teacher's columns of its teacher slots, or None) and
    ``target`` (the teacher's distances from the query to every member, or None), taken
    from the D x N ``teacher`` matrix on its own device."""
    for item in items:
        members = item["members"]
        slots = item["teacher_slots"]
        item["teacher"] = teacher[:, [members[s] for s in slots]] if teacher is not None and slots else None
        item["target"] = None
        if teacher is not None:
            columns = teacher[:, members]
            item["target"] = torch.linalg.vector_norm(columns - columns[:, :1], dim=0)
    return items


def collate_list(batch: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
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
        batches += [shuffled[k:k + batch_size] for k in range(0, full, batch_size)]
        leftovers += shuffled[full:]
    leftovers = [leftovers[i] for i in torch.randperm(len(leftovers), generator=generator).tolist()]
    batches += [leftovers[k:k + batch_size] for k in range(0, len(leftovers) - batch_size + 1, batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def encode_images(encode: BatchEncoder, images: Sequence[torch.Tensor], device: torch.device,
                  shapes: Sequence[tuple] = ()) -> torch.Tensor:
    """B x D student descriptors by ``encode`` (``net.descriptors``, or the distributed
    wrapper around it); images of the same shape share one forward pass. With frozen
    BatchNorm the result equals one forward per image; with BatchNorm in train mode each
    shape group is normalised by its own batch statistics. ``shapes``, when given, is the
    order of the forward passes and must hold every image shape; a shape without images gets
    a forward of an empty batch (SyncBatchNorm: every rank makes the same calls)."""
    groups: Dict[tuple, List[int]] = defaultdict(list)
    for i, image in enumerate(images):
        groups[tuple(image.shape)].append(i)
    rows: List[Optional[torch.Tensor]] = [None] * len(images)
    for shape in (shapes or list(groups)):
        indices = groups.get(shape, [])
        batch = (torch.stack([images[i] for i in indices]) if indices else torch.empty((0,) + tuple(shape)))
        out = encode(batch.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)).float()
        for row, i in enumerate(indices):
            rows[i] = out[row]
    return torch.stack(rows) if rows else out


def encode_tuples(encode: BatchEncoder, items: Sequence[Dict[str, Any]], device: torch.device,
                  shapes: Sequence[tuple] = ()) -> List[torch.Tensor]:
    """D x S descriptors of each tuple in member order (student images and teacher columns);
    the student images of all ``items`` are encoded together (see :func:`encode_images`)."""
    images = [image for item in items for image in item["images"]]
    encoded = encode_images(encode, images, device, shapes) if images or shapes else None
    outputs, start = [], 0
    for item in items:
        columns: List[Optional[torch.Tensor]] = [None] * len(item["labels"])
        for slot in item["image_slots"]:
            columns[slot] = encoded[start]
            start += 1
        if item["teacher_slots"]:
            teacher = item["teacher"].to(device)
            for k, slot in enumerate(item["teacher_slots"]):
                columns[slot] = teacher[:, k]
        outputs.append(torch.stack(columns, dim=1))
    return outputs

