"""What the benchmarks compare against: generated JPEGs, and the original's extraction loop
(cirtorch's extract_vectors: PIL decoding in loader workers, one image per forward in fp32,
scales one after another), written out here so that both run on the same machine."""

from pathlib import Path
from typing import List, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

from aml.data.images import ImagesFromList, image_transform


def make_images(folder: Path, count: int, side: int) -> List[str]:
    """``count`` JPEGs, two landscape (side x 3/4 side) for one portrait, smooth random content."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        w, h = (side, side * 3 // 4) if i % 3 else (side * 3 // 4, side)
        small = rng.integers(0, 256, size=(max(1, h // 24), max(1, w // 24), 3), dtype=np.uint8)
        paths.append(str(Path(folder) / f"{i:04d}.jpg"))
        Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC).save(paths[-1], quality=90)
    return paths


def original_loop(net: torch.nn.Module, paths: Sequence[str], image_size: int, scales: Sequence[float], msp: float,
                  device: torch.device, workers: int) -> torch.Tensor:
    """D x N descriptors the original's way: batch 1, fp32, contiguous tensors, no_grad."""
    net.to(memory_format=torch.contiguous_format).eval()
    transform = image_transform(net.meta["mean"], net.meta["std"])
    loader = DataLoader(ImagesFromList(paths, image_size, transform=transform), batch_size=1, shuffle=False,
                        num_workers=workers, pin_memory=device.type == "cuda")
    out = torch.zeros(net.meta["outputdim"], len(paths))
    with torch.no_grad():
        for x, index in loader:
            x = x.to(device)
            if list(scales) == [1]:
                v = net(x)[:, 0]
            else:
                v = sum(net(x if s == 1 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False))
                        .pow(msp) for s in scales) / len(scales)
                v = v.pow(1 / msp)[:, 0]
                v = v / v.norm()
            out[:, index] = v.cpu()[:, None]
    return out
