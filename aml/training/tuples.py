"""Loading tuples for training: images of student members, teacher descriptors of the
others, and encoding a tuple with the student (images of equal shape in one forward)."""

from collections import defaultdict
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch.utils.data import Dataset

from aml.data.images import load_and_resize
from aml.training.modes import TrainingTuple


class TupleDataset(Dataset):
    """Item i = dict(images, image_slots, teacher, teacher_slots, labels, target)."""

    def __init__(self, tuples: Sequence[TrainingTuple], images: Sequence[str], image_size: int,
                 transform: Callable, teacher: Optional[torch.Tensor] = None):
        self.tuples, self.images, self.image_size = list(tuples), list(images), image_size
        self.transform, self.teacher = transform, teacher

    def __len__(self) -> int:
        return len(self.tuples)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        t = self.tuples[index]
        image_slots = [s for s, flag in enumerate(t.from_teacher) if not flag]
        teacher_slots = [s for s, flag in enumerate(t.from_teacher) if flag]
        item = {
            "images": [self.transform(load_and_resize(self.images[t.members[s]], self.image_size)) for s in image_slots],
            "image_slots": image_slots,
            "teacher_slots": teacher_slots,
            "teacher": self.teacher[:, [t.members[s] for s in teacher_slots]] if teacher_slots else None,
            "labels": torch.tensor(t.labels, dtype=torch.float32),
            "target": None,
        }
        if self.teacher is not None:
            anchor = self.teacher[:, t.members[0]]
            members = self.teacher[:, list(t.members)]
            item["target"] = torch.linalg.vector_norm(members - anchor[:, None], dim=0)
        return item


def collate_list(batch: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Tuples differ in image sizes: a batch is just the list of items."""
    return batch


def encode_images(net: torch.nn.Module, images: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
    """B x D student descriptors; images of the same shape share one forward pass (BatchNorm
    is frozen during training, so the result equals one forward per image)."""
    groups: Dict[tuple, List[int]] = defaultdict(list)
    for i, image in enumerate(images):
        groups[tuple(image.shape)].append(i)
    rows: List[Optional[torch.Tensor]] = [None] * len(images)
    for indices in groups.values():
        out = net.descriptors(torch.stack([images[i] for i in indices]).to(device, non_blocking=True))
        for row, i in enumerate(indices):
            rows[i] = out[row]
    return torch.stack(rows)


def encode_tuple(net: torch.nn.Module, item: Dict[str, Any], device: torch.device) -> torch.Tensor:
    """D x S descriptors of a tuple in member order (student images and teacher columns)."""
    size = len(item["labels"])
    columns: List[Optional[torch.Tensor]] = [None] * size
    if item["images"]:
        for slot, row in zip(item["image_slots"], encode_images(net, item["images"], device)):
            columns[slot] = row
    if item["teacher_slots"]:
        teacher = item["teacher"].to(device)
        for k, slot in enumerate(item["teacher_slots"]):
            columns[slot] = teacher[:, k]
    return torch.stack(columns, dim=1)
