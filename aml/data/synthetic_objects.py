"""A synthetic object-classification family: the offline stand-in for ImageNet.

The paper starts every network from ImageNet weights; no weights can be downloaded here, so
the demo pretrains its trunks on a classification task of its own (see
`aml.training.pretraining`). Its images are a family apart from the synthetic
landmarks (`aml.data.synthetic`): one *object* per image, centred-ish on a noisy
background, drawn from primitives the landmarks never use (stars, rings, crosses, arcs,
zig-zags, dot clusters), each class a fixed arrangement of 2-4 such parts with its own
texture and hue range. An instance varies the pose (rotation, scale, position), the colours
within the class's hues, the background, the blur and a few occluding strokes. No landmark,
test image or drawing routine of the landmarks is reused, so the pretraining never sees
what the retrieval networks are trained or tested on.

Everything is deterministic given the config (generated in memory, nothing is written).
"""

import math
from dataclasses import dataclass
from typing import List, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from aml.utils.progress import progress_bar

PARTS = ("star", "ring", "cross", "arc", "zigzag", "dots")
TEXTURES = ("solid", "speckle", "bands", "two-tone")


@dataclass(frozen=True)
class ObjectConfig:
    """Sizes of the object family: ``classes`` x ``per_class`` images of ``size`` pixels."""

    classes: int = 40
    per_class: int = 80
    size: int = 64
    seed: int = 7

    def tag(self) -> str:
        """A short text that identifies the images (it enters the cached trunk's name)."""
        return f"c{self.classes}x{self.per_class}s{self.size}r{self.seed}"


@dataclass(frozen=True)
class _Part:
    kind: str
    offset: Tuple[float, float]  # position in the object's frame, in units of its radius
    radius: float
    spin: float
    detail: int  # points of a star, spokes of a cross, teeth of a zig-zag, dots of a cluster


@dataclass(frozen=True)
class _ObjectClass:
    parts: Tuple[_Part, ...]
    texture: str
    hues: Tuple[float, float]  # the class's two base hues in [0, 1)


def _hue_rgb(hue: float, value: float, saturation: float) -> Tuple[int, int, int]:
    base = np.array([math.cos(2 * math.pi * (hue + k / 3)) for k in range(3)]) * 0.5 + 0.5
    rgb = value * (saturation * base + (1 - saturation) * 0.5)
    r, g, b = (int(c) for c in np.clip(rgb * 255, 0, 255))
    return r, g, b


def _draw_class(rng: np.random.Generator) -> _ObjectClass:
    parts = []
    for index in range(int(rng.integers(2, 5))):
        offset = (0.0, 0.0) if index == 0 else tuple(rng.uniform(-0.55, 0.55, size=2))
        parts.append(
            _Part(
                PARTS[int(rng.integers(len(PARTS)))],
                (float(offset[0]), float(offset[1])),
                float(rng.uniform(0.3, 0.65) if index else rng.uniform(0.55, 0.9)),
                float(rng.uniform(0, 2 * math.pi)),
                int(rng.integers(3, 9)),
            )
        )
    return _ObjectClass(
        tuple(parts), TEXTURES[int(rng.integers(len(TEXTURES)))], (float(rng.random()), float(rng.random()))
    )


def _polygon(center: Tuple[float, float], radius: float, spin: float, points: int, inner: float) -> List[tuple]:
    corners = []
    for k in range(2 * points):
        r = radius if k % 2 == 0 else radius * inner
        angle = spin + math.pi * k / points
        corners.append((center[0] + r * math.cos(angle), center[1] + r * math.sin(angle)))
    return corners


def _draw_part(
    draw: ImageDraw.ImageDraw,
    part: _Part,
    center: Tuple[float, float],
    radius: float,
    spin: float,
    fill: Union[int, Tuple[int, ...]],
    line: Union[int, Tuple[int, ...]],
) -> None:
    r = part.radius * radius
    angle = part.spin + spin
    width = max(1, int(r * 0.3))
    box = (center[0] - r, center[1] - r, center[0] + r, center[1] + r)
    if part.kind == "star":
        draw.polygon(_polygon(center, r, angle, part.detail, 0.45), fill=fill)
    elif part.kind == "ring":
        draw.ellipse(box, outline=fill, width=width)
    elif part.kind == "cross":
        for k in range(part.detail):
            a = angle + math.pi * k / part.detail
            dx, dy = r * math.cos(a), r * math.sin(a)
            draw.line((center[0] - dx, center[1] - dy, center[0] + dx, center[1] + dy), fill=fill, width=width)
    elif part.kind == "arc":
        start = math.degrees(angle)
        draw.arc(box, start, start + 60 + 30 * part.detail, fill=fill, width=width)
    elif part.kind == "zigzag":
        a = angle
        points = [
            (
                center[0] + r * (2 * k / part.detail - 1) * math.cos(a) - (k % 2 - 0.5) * r * 0.6 * math.sin(a),
                center[1] + r * (2 * k / part.detail - 1) * math.sin(a) + (k % 2 - 0.5) * r * 0.6 * math.cos(a),
            )
            for k in range(part.detail + 1)
        ]
        draw.line(points, fill=fill, width=width)
    else:  # dots: a ring of small discs around a centre disc
        dot = max(1.0, r * 0.22)
        for k in range(part.detail + 1):
            a = angle + 2 * math.pi * k / part.detail
            cx, cy = center if k == part.detail else (center[0] + r * math.cos(a), center[1] + r * math.sin(a))
            draw.ellipse((cx - dot, cy - dot, cx + dot, cy + dot), fill=fill)
    if part.kind == "star":  # a hollow centre
        draw.polygon(_polygon(center, r * 0.35, angle, part.detail, 0.45), fill=line)


def _texture(
    image: Image.Image, mask: Image.Image, kind: str, rng: np.random.Generator, colours: Sequence[Tuple[int, int, int]]
) -> Image.Image:
    """Fill the object's mask with the class's texture in this instance's colours."""
    size = image.size[0]
    first, second = (np.array(c, np.float32) for c in colours)
    if kind == "solid":
        fill = np.broadcast_to(first, (size, size, 3))
    elif kind == "speckle":
        noise = rng.random((size, size, 1)) < 0.3
        fill = np.where(noise, second, first)
    elif kind == "bands":
        y, x = np.mgrid[0:size, 0:size]
        angle = rng.uniform(0, math.pi)
        phase = (x * math.cos(angle) + y * math.sin(angle)) / max(2.0, size / 10)
        fill = np.where((np.floor(phase) % 2 == 0)[..., None], first, second)
    else:  # two-tone: vertical blend between the two colours
        ramp = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
        fill = np.broadcast_to(first * (1 - ramp) + second * ramp, (size, size, 3))
    filled = Image.fromarray(np.ascontiguousarray(fill).astype(np.uint8))
    return Image.composite(filled, image, mask)


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    coarse = rng.integers(0, 256, size=(3, 3, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BILINEAR), np.float32)
    grain = rng.normal(0, 18, size=(size, size, 3))
    return Image.fromarray(np.clip(smooth * 0.7 + grain + 30, 0, 255).astype(np.uint8))


def render_object(cls: _ObjectClass, rng: np.random.Generator, size: int) -> Image.Image:
    """One instance of an object class (size x size RGB)."""
    canvas = _background(rng, size)
    mask = Image.new("L", (size, size), 0)
    radius = size * rng.uniform(0.22, 0.4)
    center = (size / 2 + rng.uniform(-0.15, 0.15) * size, size / 2 + rng.uniform(-0.15, 0.15) * size)
    spin = rng.uniform(-0.6, 0.6)
    draw = ImageDraw.Draw(mask)
    cos, sin = math.cos(spin), math.sin(spin)
    for part in cls.parts:
        ox, oy = part.offset
        at = (center[0] + radius * (ox * cos - oy * sin), center[1] + radius * (ox * sin + oy * cos))
        _draw_part(draw, part, at, radius, spin, 255, 0)
    colours = tuple(
        _hue_rgb((hue + rng.normal(0, 0.04)) % 1.0, rng.uniform(0.45, 1.0), rng.uniform(0.5, 1.0)) for hue in cls.hues
    )
    canvas = _texture(canvas, mask, cls.texture, rng, colours)
    strokes = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(0, 3))):
        x0, y0, x1, y1 = rng.uniform(0, size, size=4)
        strokes.line(
            (x0, y0, x1, y1), fill=tuple(int(c) for c in rng.integers(0, 256, 3)), width=int(rng.integers(1, 4))
        )
    return canvas.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0, 0.8))))


def generate_objects(config: ObjectConfig = ObjectConfig(), progress: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """(images uint8 N x size x size x 3, labels int64 N), class by class; deterministic."""
    rng = np.random.default_rng(config.seed)
    classes = [_draw_class(rng) for _ in range(config.classes)]
    images = np.empty((config.classes * config.per_class, config.size, config.size, 3), np.uint8)
    labels = np.repeat(np.arange(config.classes, dtype=np.int64), config.per_class)
    for index in progress_bar(range(len(images)), desc="generating objects", unit="img", enabled=progress, leave=False):
        images[index] = np.asarray(render_object(classes[labels[index]], rng, config.size))
    return images, labels
