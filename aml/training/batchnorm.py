"""BatchNorm during training: frozen (the original's way: running statistics fixed, affine
parameters learned), and calibrated from training images when a randomly initialised trunk's
activations vanish."""

import logging
from typing import Callable, Dict, List, Sequence

import numpy as np
import torch
from torch import nn

from aml.networks.preserved import left_as_it_was
from aml.networks.retrieval_net import ImageRetrievalNet
from aml.utils.distributed import current_world, from_main, share_buffers

log = logging.getLogger(__name__)

CALIBRATION_IMAGES = 64
CALIBRATION_BATCH = 16
VANISHING = 1e-4  # mean trunk activation below which a random network gets its statistics calibrated


def freeze_batchnorm(net: nn.Module) -> None:
    """Put every BatchNorm-like module (torch's and timm's BatchNormAct2d) in eval mode:
    running statistics stay fixed, affine parameters still learn."""
    for module in net.modules():
        if "BatchNorm" in type(module).__name__:
            module.eval()


@torch.no_grad()
def calibrate_batchnorm(net: nn.Module, batches) -> int:
    """Set BatchNorm running statistics from data: one pass in train mode with a cumulative
    average (momentum None) over ``batches`` (tensors B x 3 x H x W). A randomly initialised
    network then trains with frozen BatchNorm without its activations collapsing. Every module
    keeps its mode. Returns the number of images seen."""
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    momenta = [(m, m.momentum) for m in norms]
    seen = 0
    with left_as_it_was(net):  # every module's mode (a frozen BatchNorm stays frozen)
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        net.train()
        try:
            for batch in batches:
                net(batch)
                seen += len(batch)
        finally:
            for m, momentum in momenta:
                m.momentum = momentum
    return seen


def _calibration_batches(
    images: Sequence[str], load: Callable[[str], torch.Tensor], generator: torch.Generator, device: torch.device
) -> List[torch.Tensor]:
    """``CALIBRATION_IMAGES`` random training images, loaded, in batches of one shape."""
    chosen = torch.randperm(len(images), generator=generator)[:CALIBRATION_IMAGES].tolist()
    groups: Dict[tuple, List[torch.Tensor]] = {}
    for i in chosen:
        image = load(images[i])
        groups.setdefault(tuple(image.shape), []).append(image)
    return [
        torch.stack(group[k : k + CALIBRATION_BATCH]).to(device)
        for group in groups.values()
        for k in range(0, len(group), CALIBRATION_BATCH)
    ]


def calibrate_if_vanishing(
    net: ImageRetrievalNet,
    images: Sequence[str],
    load: Callable[[str], torch.Tensor],
    generator: torch.Generator,
    device: torch.device,
) -> bool:
    """For a randomly initialised network: if its trunk's activations vanish on training
    images (they sink below GeM's eps in a random MobileNetV2 with identity BatchNorm, and
    then no gradient flows), set the BatchNorm statistics from ``CALIBRATION_IMAGES`` of
    ``images`` (``load``: path -> normalised 3 x H x W tensor; see `calibrate_batchnorm`).
    Returns whether it calibrated; every module of ``net`` keeps its mode."""
    batches = _calibration_batches(images, load, generator, device)
    with torch.no_grad(), left_as_it_was(net):
        net.eval()
        level = float(np.mean([net.features(b).abs().mean().item() for b in batches[:2]]))
    # one decision for all ranks (under torchrun, with SyncBatchNorm, calibration's forwards are
    # collectives); each rank computes the same statistics from the same images
    level = from_main(level, current_world())
    if level >= VANISHING:
        return False
    seen = calibrate_batchnorm(net, batches)
    share_buffers(net, current_world())  # the statistics rank 0 computed, on every rank
    log.info(">> trunk activations vanish (mean %.1e): BatchNorm statistics calibrated on %d images", level, seen)
    return True
