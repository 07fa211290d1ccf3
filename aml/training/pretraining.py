"""Offline pretraining of a trunk: the stand-in for ImageNet weights.

The paper starts teacher and students from ImageNet-pretrained trunks. Where those cannot
be downloaded (the demo's machines), a trunk is pretrained here once on a classification
task over a family of synthetic objects (`aml.data.synthetic_objects`, never the
landmarks) and cached under ``<data_root>/networks/``, the folder the downloaded ImageNet
trunks go to, under a name that cannot be mistaken for them. ``main.py --trunk-weights
synthetic`` then starts from it as ``main.py`` (default) starts from ImageNet.

Recipe: the trunk plus global average pooling and a linear classifier, cross-entropy,
AdamW with a cosine schedule, random crops and flips, BatchNorm in training mode (as on
ImageNet), each network's own input normalisation (the mean/std it trains and tests with).
10% of each class is held out and
the accuracy on it is recorded next to the weights.
"""

import json
import logging
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch
from torch import nn

from aml.data.paths import DataRootLike, data_subdir
from aml.data.synthetic_objects import ObjectConfig, generate_objects
from aml.networks.backbones import build_trunk, get_backbone
from aml.networks.imagenet import get_imagenet_weights
from aml.utils.atomic import atomic_write
from aml.utils.devices import to_device
from aml.utils.progress import progress_bar
from aml.utils.seeding import generator, global_seed
from aml.training.optim import can_fuse
from aml.utils.errors import TrainingDiverged

log = logging.getLogger(__name__)

#: the prefix of every cached stand-in trunk in <data_root>/networks/
FILE_PREFIX = "aml-synthetic-pretrained"
#: the progress bar shows the loss of every n-th step (reading it waits for a GPU)
LOSS_SHOWN_EVERY = 10


@dataclass(frozen=True)
class PretrainConfig:
    """The pretraining task and its schedule (all of it enters the cached file's name)."""

    objects: ObjectConfig = field(default_factory=ObjectConfig)
    epochs: int = 6
    batch_size: int = 64
    lr: float = 4e-3
    weight_decay: float = 1e-4
    held_out: float = 0.1
    seed: int = 0

    def fingerprint(self) -> str:
        """8 hex digits over every setting."""
        return f"{zlib.crc32(json.dumps(asdict(self), sort_keys=True).encode()):08x}"


def trunk_file(arch: str, data_root: DataRootLike, config: PretrainConfig = PretrainConfig()) -> Path:
    """Where the stand-in trunk of ``arch`` is cached: named by the recipe and by the input
    normalisation it learned with (the network's own, `aml.networks.imagenet.get_imagenet_weights`)."""
    inputs = get_imagenet_weights(arch)
    recipe = zlib.crc32(f"{config.fingerprint()} {inputs.mean} {inputs.std}".encode())
    return data_subdir(data_root, "networks") / f"{FILE_PREFIX}-{arch}-{recipe:08x}.pth"


class _Classifier(nn.Module):
    def __init__(self, arch: str, classes: int):
        super().__init__()
        self.features = nn.Sequential(*build_trunk(arch, pretrained=False))
        self.head = nn.Linear(get_backbone(arch).dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def _split(labels: np.ndarray, fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Indices of the training and the held-out images (the same fraction of every class)."""
    rng = np.random.default_rng(seed)
    held: List[int] = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        held.extend(rng.choice(members, size=max(1, round(fraction * len(members))), replace=False))
    mask = np.zeros(len(labels), bool)
    mask[held] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def _to_tensor(images: np.ndarray, arch: str) -> torch.Tensor:
    """The images normalised as the network ``arch`` normalises its inputs in training and
    testing (ImageNet's statistics, 0.5 for EfficientNet-Lite and many timm models)."""
    inputs = get_imagenet_weights(arch)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(inputs.mean).view(1, 3, 1, 1)
    std = torch.tensor(inputs.std).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def _augment(batch: torch.Tensor, rng: torch.Generator, pad: int = 6) -> torch.Tensor:
    """Random crops (after reflection padding) and horizontal flips."""
    size = batch.shape[-1]
    padded = nn.functional.pad(batch, (pad,) * 4, mode="reflect")
    out = torch.empty_like(batch)
    offsets = torch.randint(0, 2 * pad + 1, (len(batch), 2), generator=rng)
    flips = torch.rand(len(batch), generator=rng) < 0.5
    for i in range(len(batch)):
        dy, dx = int(offsets[i, 0]), int(offsets[i, 1])
        crop = padded[i, :, dy : dy + size, dx : dx + size]
        out[i] = crop.flip(-1) if flips[i] else crop
    return out


@torch.no_grad()
def _accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 256) -> float:
    model.eval()
    correct = sum(
        int((model(images[i : i + batch]).argmax(1) == labels[i : i + batch]).sum())
        for i in range(0, len(images), batch)
    )
    return correct / max(1, len(images))


def pretrain_trunk(
    arch: str, config: PretrainConfig = PretrainConfig(), device: str = "cpu", progress: bool = False
) -> Tuple[Dict[str, torch.Tensor], Dict]:
    """Train ``arch``'s trunk to classify the synthetic objects; returns the trunk's state
    dict (keys as ``nn.Sequential(*build_trunk(arch, pretrained=False))``) and a record (accuracy, seconds)."""
    start = time.time()
    images, labels = generate_objects(config.objects, progress=progress)
    train_idx, held_idx = _split(labels, config.held_out, config.seed)
    x, y = _to_tensor(images, arch), torch.from_numpy(labels)
    with global_seed(config.seed):
        model = _Classifier(arch, config.objects.classes)
    target = torch.device(device)
    model.to(target).to(memory_format=torch.channels_last)
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(
        params, config.lr, weight_decay=config.weight_decay, fused=can_fuse([{"params": params}]) or None
    )
    steps = config.epochs * (len(train_idx) // config.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=steps, pct_start=0.15)
    loss = torch.tensor(float("nan"))
    with progress_bar(
        total=steps, desc=f"pretraining {arch} on synthetic objects", unit="batch", enabled=progress, leave=False
    ) as bar:
        for epoch in range(config.epochs):
            model.train()
            rng = generator(config.seed, "pretrain", epoch)
            order = torch.from_numpy(train_idx)[torch.randperm(len(train_idx), generator=rng)]
            for first in range(0, len(order) - config.batch_size + 1, config.batch_size):
                batch = order[first : first + config.batch_size]
                inputs = to_device(_augment(x[batch], rng), target)  # pinned: no wait for the queued steps
                loss = nn.functional.cross_entropy(model(inputs), to_device(y[batch], target))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                if progress and bar.n % LOSS_SHOWN_EVERY == 0:  # reading it waits for the device
                    bar.set_postfix(loss=f"{loss.item():.3f}")
                bar.update(1)
            log.info(">> pretraining %s: epoch %d/%d, loss %.3f", arch, epoch + 1, config.epochs, loss.item())
    if not torch.isfinite(loss):
        raise TrainingDiverged(
            f"pretraining {arch} on the synthetic objects diverged (loss {loss.item()}), nothing was saved: "
            "this recipe does not suit the trunk; start it from its ImageNet weights or from a weights file "
            "of your own, or pretrain from Python with a lower PretrainConfig.lr"
        )
    held = torch.from_numpy(held_idx)
    record = {
        "architecture": arch,
        "held_out_accuracy": _accuracy(model, x[held].to(device), y[held].to(device)),
        "chance": 1.0 / config.objects.classes,
        "final_loss": float(loss.detach()),
        "seconds": time.time() - start,
        "config": asdict(config),
        "torch": torch.__version__,
    }
    state = {key: value.detach().cpu().contiguous() for key, value in model.features.state_dict().items()}
    return state, record


def ensure_synthetic_trunk(
    arch: str,
    data_root: DataRootLike = None,
    config: PretrainConfig = PretrainConfig(),
    device: str = "cpu",
    progress: bool = False,
) -> Path:
    """The cached stand-in trunk of ``arch`` (pretrained now, once, if it is not there yet);
    its record is written beside it as ``<file>.json``."""
    path = trunk_file(arch, data_root, config)
    if path.exists():
        return path
    log.info(">> no cached synthetic-pretrained %s trunk: pretraining it once (%s)", arch, path)
    state, record = pretrain_trunk(arch, config, device, progress)
    log.info(
        ">> %s pretrained in %.0f s: held-out accuracy %.1f%% (chance %.1f%%)",
        arch,
        record["seconds"],
        100 * record["held_out_accuracy"],
        100 * record["chance"],
    )
    atomic_write(path.with_name(path.name + ".json"), lambda out: out.write(json.dumps(record, indent=1).encode()))
    atomic_write(path, lambda out: torch.save(state, out))
    return path


#: named trunk sources of ``main.py --trunk-weights`` (a file path is the other choice):
#: name -> function(arch, data_root, device=..., progress=...) returning the weights file
TRUNK_SOURCES = {"synthetic": ensure_synthetic_trunk}
