"""Synthetic landmark data sets, written in the exact on-disk formats of the real ones.

A *landmark* is a procedurally drawn scene (a facade-like composition of shapes, window
grids, stripes and checker textures on a gradient). A *view* of it is rendered through a
random homography with zoom, lighting and colour change, blur, occluders and clutter
around the scene. The ``difficulty`` d in [0, 1] of a view scales all of these changes;
"junk" views show only a small corner of the scene.

- ``synth-sfm``: training set like retrieval-SfM-120k (cid2filename image layout, 'train'
  and 'val' splits with cluster ids and query/positive pairs, and a whitening pickle).
- ``synth-oxford`` / ``synth-paris``: test sets like rOxford5k / rParis6k (database,
  cropped queries with a bbx, easy/hard/junk per query), from landmarks never used in
  training (each set draws its own landmarks with its own seed and drawing style).

Run ``python -m aml.cli.synthetic --data-root DIR`` or call the generate_* functions.
Everything is deterministic given the seed.
"""

import functools
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from aml.data.formats import GroundTruth
from aml.data.safe_pickle import save_pickle
from aml.data.paths import cid2filename
from aml.utils.atomic import publish_folder, staged
from aml.utils.bounds import Bound, bounded, out_of_bounds
from aml.utils.errors import ConfigError, lookup
from aml.utils.progress import progress_bar
from aml.utils.types import PathLike

log = logging.getLogger(__name__)
SCENE = 256
ASPECTS = ((4, 3), (3, 4), (1, 1), (3, 2))
#: the width and height ratios of the varied views: 1,000 to between 500 and 2,000
VARIED_BASE = 1000


def _four_aspects(rng: np.random.Generator) -> Tuple[int, int]:
    return ASPECTS[int(rng.integers(len(ASPECTS)))]


def _varied_aspect(rng: np.random.Generator) -> Tuple[int, int]:
    return VARIED_BASE, round(VARIED_BASE * 2.0 ** rng.uniform(-1.0, 1.0))


#: how a view's aspect ratio (width : height) is drawn: ``four`` of photos' usual ones (a few
#: image shapes; the default), or ``varied``, any between 2:1 and 1:2 as photos come (as many
#: shapes as the longer side allows)
ASPECT_DRAWS: Dict[str, Callable[[np.random.Generator], Tuple[int, int]]] = {
    "four": _four_aspects,
    "varied": _varied_aspect,
}


@dataclass(frozen=True)
class Style:
    """Drawing style of a family of landmarks (so test sets look unlike training)."""

    shapes: Tuple[str, ...]
    palette_shift: float


STYLES: Dict[str, Style] = {
    "sfm": Style(("rect", "ellipse", "polygon", "windows", "stripes", "checker"), 0.0),
    "oxford": Style(("rect", "polygon", "windows", "stripes", "ellipse"), 0.3),
    "paris": Style(("ellipse", "checker", "rect", "windows", "polygon"), 0.6),
}


def _color(rng: np.random.Generator, shift: float) -> Tuple[int, int, int]:
    hue = (rng.random() + shift) % 1.0
    base = np.array([np.cos(2 * np.pi * (hue + k / 3)) for k in range(3)]) * 0.5 + 0.5
    value = rng.uniform(0.25, 1.0)
    mix = rng.uniform(0.3, 1.0)
    rgb = value * (mix * base + (1 - mix) * rng.random())
    r, g, b = (int(c) for c in np.clip(rgb * 255, 0, 255))
    return r, g, b


def _texture(rng: np.random.Generator, kind: str, size: int, shift: float) -> Image.Image:
    a, b = _color(rng, shift), _color(rng, shift)
    period = int(rng.integers(4, 16))
    y, x = np.mgrid[0:size, 0:size]
    if kind == "stripes":
        angle = rng.uniform(0, np.pi)
        mask = (np.floor((x * np.cos(angle) + y * np.sin(angle)) / period) % 2).astype(bool)
    else:
        mask = ((x // period + y // period) % 2).astype(bool)
    pixels = np.where(mask[..., None], np.array(a, np.uint8), np.array(b, np.uint8))
    return Image.fromarray(pixels.astype(np.uint8))


def draw_landmark(rng: np.random.Generator, style: Style, size: int = SCENE) -> Image.Image:
    """A random landmark scene (size x size RGB)."""
    top, bottom = np.array(_color(rng, style.palette_shift)), np.array(_color(rng, style.palette_shift))
    ramp = np.linspace(0, 1, size)[:, None, None]
    canvas = Image.fromarray((top * (1 - ramp) + bottom * ramp).repeat(size, axis=1).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(7, 12))):
        kind = style.shapes[int(rng.integers(len(style.shapes)))]
        w, h = (rng.uniform(0.15, 0.55, size=2) * size).astype(int)
        x0, y0 = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
        box = (x0, y0, x0 + w, y0 + h)
        color = _color(rng, style.palette_shift)
        if kind == "rect":
            draw.rectangle(box, fill=color)
        elif kind == "ellipse":
            draw.ellipse(box, fill=color)
        elif kind == "polygon":
            points = [(x0 + rng.uniform(0, w), y0 + rng.uniform(0, h)) for _ in range(int(rng.integers(3, 7)))]
            draw.polygon(points, fill=color)
        elif kind == "windows":
            draw.rectangle(box, fill=color)
            glass = _color(rng, style.palette_shift)
            rows, cols = int(rng.integers(2, 6)), int(rng.integers(2, 6))
            for r in range(rows):
                for c in range(cols):
                    cx, cy = x0 + (c + 0.25) * w / cols, y0 + (r + 0.25) * h / rows
                    draw.rectangle((cx, cy, cx + 0.5 * w / cols, cy + 0.5 * h / rows), fill=glass)
        else:
            patch = _texture(rng, kind, max(w, h), style.palette_shift).crop((0, 0, w, h))
            canvas.paste(patch, box[:2])
    return canvas


def _clutter(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Background that surrounds a scene in a view: smooth random colour blobs."""
    small = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)


def _perspective_coeffs(output: Sequence[Tuple[float, float]], source: Sequence[Tuple[float, float]]) -> List[float]:
    """PIL PERSPECTIVE coefficients mapping output corners to source corners."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(output, source, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    return np.linalg.solve(np.array(rows, float), np.array(rhs, float)).tolist()


def render_view(
    scene: Image.Image,
    rng: np.random.Generator,
    difficulty: float,
    side: int,
    zoom: Optional[float] = None,
    aspects: str = "four",
) -> Tuple[Image.Image, Tuple[float, float, float, float]]:
    """A view of ``scene``; returns the image and the bounding box (x1, y1, x2, y2) of the
    part of the scene that is visible in it.

    ``zoom`` < 1 shows part of the scene (junk views use ~0.3), > 1 shows the scene with
    clutter around it; by default it is drawn from the difficulty. ``side`` is the longer
    side; ``aspects`` names how the other is drawn (`ASPECT_DRAWS`).
    """
    d = float(np.clip(difficulty, 0.0, 1.0))
    aw, ah = ASPECT_DRAWS[aspects](rng)
    width, height = (side, max(8, side * ah // aw)) if aw >= ah else (max(8, side * aw // ah), side)
    if zoom is None:
        zoom = rng.uniform(1.0 - 0.45 * d, 1.1 + 0.2 * d)
    span = SCENE * zoom
    cx = SCENE / 2 + rng.uniform(-0.5, 0.5) * d * SCENE * 0.5
    cy = SCENE / 2 + rng.uniform(-0.5, 0.5) * d * SCENE * 0.5
    jitter = 0.22 * d * span
    corners = [
        (cx - span / 2, cy - span / 2),
        (cx + span / 2, cy - span / 2),
        (cx + span / 2, cy + span / 2),
        (cx - span / 2, cy + span / 2),
    ]
    source = [(x + rng.uniform(-jitter, jitter), y + rng.uniform(-jitter, jitter)) for x, y in corners]
    coeffs = _perspective_coeffs([(0, 0), (width, 0), (width, height), (0, height)], source)
    view = scene.transform((width, height), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR)
    mask = Image.new("L", scene.size, 255).transform(
        (width, height), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR
    )
    view = Image.composite(view, _clutter(rng, width, height), mask)
    pixels = np.asarray(view, dtype=np.float32)
    gain = 1.0 + d * rng.uniform(-0.45, 0.45, size=3)
    shaded = pixels * gain + d * rng.uniform(-40, 40)
    view = Image.fromarray(np.clip(shaded, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(view)
    for _ in range(int(rng.integers(0, 1 + int(4 * d)))):
        w, h = rng.uniform(0.1, 0.1 + 0.35 * d, size=2) * (width, height)
        x0, y0 = rng.uniform(0, width - w), rng.uniform(0, height - h)
        draw.rectangle((x0, y0, x0 + w, y0 + h), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    if d > 0.05:
        view = view.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0, 1.2 * d))))
    x1, y1, x2, y2 = (float(c) for c in mask.getbbox() or (0, 0, width, height))
    return view, (x1, y1, x2, y2)


def _landmarks(seed: int, count: int, style: Style) -> List[Image.Image]:
    rng = np.random.default_rng(seed)
    return [draw_landmark(rng, style) for _ in range(count)]


def _made_before(folder: Path, marker: str, overwrite: bool) -> bool:
    """Whether ``folder`` holds a set generated before (its ``marker`` file is there), to be kept
    unless ``overwrite``. Anything else of that name (a user's folder or file) is not replaced
    without ``overwrite``: a ConfigError names it."""
    if (folder / marker).exists():
        return not overwrite
    if (folder.exists() or folder.is_symlink()) and not overwrite:
        raise ConfigError(
            f"{folder} exists and is not a generated set (it has no {marker}): it is not replaced; move it "
            "away or delete it"
        )
    return False


def _kept(folder: Path) -> Path:
    """An existing set, kept as it is (whatever sizes were asked now): said, so that nobody takes it for new."""
    log.info(">> %s exists: kept as it is (--overwrite makes it again with the sizes given)", folder)
    return folder


def _save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="JPEG", quality=90)


# ------------------------------------------------------------------------------------------
# training set (retrieval-SfM-120k layout)


#: a split's landmarks: a tuple's negatives come from its other landmarks
LANDMARKS = Bound(int, "an integer of 2 or more (negatives come from other landmarks)", lambda v: v >= 2)
#: a landmark's views: a query pair takes two
VIEWS = Bound(int, "an integer of 2 or more (a query and its positive are two views)", lambda v: v >= 2)


@dataclass(frozen=True)
class SyntheticTrainConfig:
    """Sizes of a synthetic training set (each split at least 2 landmarks: negatives come from
    other landmarks; at least 2 views: a query pair takes two) and its views' aspect ratios."""

    train_landmarks: int = bounded(150, LANDMARKS)
    val_landmarks: int = bounded(12, LANDMARKS)
    views: int = bounded(14, VIEWS)
    pairs_per_landmark: int = 6
    image_size: int = 160
    seed: int = 1
    aspects: str = "four"  # a name of ASPECT_DRAWS

    def __post_init__(self) -> None:
        lookup(ASPECT_DRAWS, self.aspects, "aspect ratios")  # an unknown name is refused when made


def _split(
    rng: np.random.Generator,
    scenes: List[Image.Image],
    cluster_offset: int,
    config: SyntheticTrainConfig,
    ims: Path,
    tag: str,
    bar: tqdm,
) -> Dict[str, list]:
    cids: List[str] = []
    clusters: List[int] = []
    qidxs: List[int] = []
    pidxs: List[int] = []
    for c, scene in enumerate(scenes):
        first = len(cids)
        difficulties = rng.uniform(0.0, 0.8, size=config.views)
        for v in range(config.views):
            cid = hashlib.sha1(f"{tag}-{cluster_offset + c}-{v}".encode()).hexdigest()
            image, _ = render_view(scene, rng, difficulties[v], config.image_size, aspects=config.aspects)
            _save(image, Path(cid2filename(cid, ims)))
            bar.update(1)
            cids.append(cid)
            clusters.append(cluster_offset + c)
        for _ in range(config.pairs_per_landmark):
            q, p = rng.choice(config.views, size=2, replace=False)
            qidxs.append(first + int(q))
            pidxs.append(first + int(p))
    return {"cids": cids, "cluster": clusters, "qidxs": qidxs, "pidxs": pidxs}


def generate_train_set(
    data_root: PathLike,
    name: str = "synth-sfm",
    config: SyntheticTrainConfig = SyntheticTrainConfig(),
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write ``<data_root>/train/<name>/`` (ims/, <name>.pkl, <name>-whiten.pkl); ``progress``:
    a bar over the images on stderr."""
    problems = out_of_bounds(config)
    if problems:
        raise ConfigError(f"{name}: " + "; ".join(problems))
    folder = Path(data_root) / "train" / name
    if _made_before(folder, f"{name}.pkl", overwrite):
        return _kept(folder)
    rng = np.random.default_rng(config.seed)
    scenes = _landmarks(config.seed + 1000, config.train_landmarks + config.val_landmarks, STYLES["sfm"])
    total = (config.train_landmarks + config.val_landmarks) * config.views
    with (
        staged(folder) as staging,
        progress_bar(total=total, desc=f"generating {name}", unit="img", enabled=progress, leave=False) as bar,
    ):
        train = _split(rng, scenes[: config.train_landmarks], 0, config, staging / "ims", name, bar)
        val = _split(rng, scenes[config.train_landmarks :], config.train_landmarks, config, staging / "ims", name, bar)
        save_pickle({"train": train, "val": val}, staging / f"{name}.pkl")
        save_pickle(
            {"cids": train["cids"], "qidxs": train["qidxs"], "pidxs": train["pidxs"]}, staging / f"{name}-whiten.pkl"
        )
        publish_folder(staging, folder, overwrite)
    log.info(">> %s: %d train and %d val images written to %s", name, len(train["cids"]), len(val["cids"]), folder)
    return folder


# ------------------------------------------------------------------------------------------
# test sets (revisited Oxford/Paris layout)


@dataclass(frozen=True)
class SyntheticTestConfig:
    """Sizes of a synthetic test set and its views' aspect ratios."""

    landmarks: int = 35  # x 2 queries = 70, as rOxford5k
    queries_per_landmark: int = 2
    easy: int = 6
    hard: int = 6
    junk: int = 2
    distractor_landmarks: int = 128  # 490 landmark views + 512 distractors = 1,002 database images
    distractor_views: int = 4
    image_size: int = 160
    seed: int = 2
    aspects: str = "four"  # a name of ASPECT_DRAWS

    def __post_init__(self) -> None:
        lookup(ASPECT_DRAWS, self.aspects, "aspect ratios")  # an unknown name is refused when made


TEST_STYLES = {"synth-oxford": ("oxford", 0), "synth-paris": ("paris", 500)}


def _write_test_set(staging: Path, name: str, config: SyntheticTestConfig, progress: bool) -> Tuple[int, int]:
    """Render test set ``name`` into ``staging`` (jpg/ and its gnd); its database and query counts."""
    style_name, seed_offset = TEST_STYLES.get(name, ("oxford", 900))
    seed = config.seed + seed_offset
    rng = np.random.default_rng(seed)
    scenes = _landmarks(seed + 1000, config.landmarks + config.distractor_landmarks, STYLES[style_name])
    view_of = functools.partial(render_view, side=config.image_size, aspects=config.aspects)
    imlist: List[str] = []
    groups: List[Dict[str, List[int]]] = []
    total = (
        config.landmarks * (config.easy + config.hard + config.junk + config.queries_per_landmark)
        + config.distractor_landmarks * config.distractor_views
    )
    bar = progress_bar(total=total, desc=f"generating {name}", unit="img", enabled=progress, leave=False)

    def add(image: Image.Image) -> int:
        imlist.append(f"{name}_{len(imlist):05d}")
        _save(image, staging / "jpg" / f"{imlist[-1]}.jpg")
        bar.update(1)
        return len(imlist) - 1

    for scene in scenes[: config.landmarks]:
        group: Dict[str, List[int]] = {"easy": [], "hard": [], "junk": []}
        for kind, count, low, high in (("easy", config.easy, 0.05, 0.35), ("hard", config.hard, 0.55, 0.9)):
            for _ in range(count):
                group[kind].append(add(view_of(scene, rng, rng.uniform(low, high))[0]))
        for _ in range(config.junk):
            view, _ = view_of(scene, rng, rng.uniform(0.5, 0.9), zoom=rng.uniform(0.22, 0.32))
            group["junk"].append(add(view))
        groups.append(group)
    for scene in scenes[config.landmarks :]:
        for _ in range(config.distractor_views):
            add(view_of(scene, rng, rng.uniform(0.0, 0.9))[0])
    order = rng.permutation(len(imlist))  # shuffle the database so that ids carry no signal
    position = np.empty_like(order)
    position[order] = np.arange(len(order))
    shuffled = [imlist[i] for i in order]
    qimlist: List[str] = []
    gnd: List[GroundTruth] = []
    for landmark, scene in enumerate(scenes[: config.landmarks]):
        for _ in range(config.queries_per_landmark):
            view, box = view_of(scene, rng, rng.uniform(0.0, 0.15), zoom=rng.uniform(1.15, 1.35))
            qimlist.append(f"{name}_query_{len(qimlist):03d}")
            _save(view, staging / "jpg" / f"{qimlist[-1]}.jpg")
            bar.update(1)
            placed = {k: sorted(int(position[i]) for i in v) for k, v in groups[landmark].items()}
            gnd.append({"bbx": list(box), "easy": placed["easy"], "hard": placed["hard"], "junk": placed["junk"]})
    bar.close()
    save_pickle({"imlist": shuffled, "qimlist": qimlist, "gnd": gnd}, staging / f"gnd_{name}.pkl")
    return len(shuffled), len(qimlist)


def generate_test_set(
    data_root: PathLike,
    name: str = "synth-oxford",
    config: SyntheticTestConfig = SyntheticTestConfig(),
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write ``<data_root>/test/<name>/`` (jpg/*.jpg and gnd_<name>.pkl); ``progress``: a bar
    over the images on stderr."""
    folder = Path(data_root) / "test" / name
    if _made_before(folder, f"gnd_{name}.pkl", overwrite):
        return _kept(folder)
    with staged(folder) as staging:
        images, queries = _write_test_set(staging, name, config, progress)
        publish_folder(staging, folder, overwrite)
    log.info(">> %s: %d database images and %d queries written to %s", name, images, queries, folder)
    return folder


# ------------------------------------------------------------------------------------------
# distractor set (revisitop1m layout: jpg/<sub>/<image>.jpg and <name>.txt listing them)


@dataclass(frozen=True)
class SyntheticDistractorConfig:
    """Size of a synthetic distractor set: views of landmarks that no test set contains."""

    images: int = 20000
    views_per_landmark: int = 4
    image_size: int = 64
    seed: int = 3


def generate_distractor_set(
    data_root: PathLike,
    name: str = "synth-1m",
    config: SyntheticDistractorConfig = SyntheticDistractorConfig(),
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write ``<data_root>/test/<name>/`` with ``config.images`` distractor images under
    ``jpg/`` (1,000 per sub-folder) and the list ``<name>.txt`` (paths relative to ``jpg/``)."""
    folder = Path(data_root) / "test" / name
    if _made_before(folder, f"{name}.txt", overwrite):
        return folder
    rng = np.random.default_rng(config.seed)
    styles = list(STYLES.values())
    listing: List[str] = []
    with staged(folder) as staging:
        for i in progress_bar(
            range(config.images), desc=f"generating {name}", unit="img", enabled=progress, leave=False
        ):
            if i % config.views_per_landmark == 0:
                scene = draw_landmark(rng, styles[(i // config.views_per_landmark) % len(styles)])
            listing.append(f"{i // 1000:04d}/{name}_{i:07d}.jpg")
            _save(render_view(scene, rng, rng.uniform(0.0, 0.9), config.image_size)[0], staging / "jpg" / listing[-1])
        (staging / f"{name}.txt").write_text("".join(f"{line}\n" for line in listing))
        publish_folder(staging, folder, overwrite)
    log.info(">> %s: %d distractor images written to %s", name, len(listing), folder)
    return folder


def generate_all(
    data_root: PathLike,
    overwrite: bool = False,
    train: SyntheticTrainConfig = SyntheticTrainConfig(),
    test: SyntheticTestConfig = SyntheticTestConfig(),
    progress: bool = False,
) -> None:
    """synth-sfm, synth-oxford and synth-paris with the given sizes."""
    generate_train_set(data_root, "synth-sfm", train, overwrite, progress)
    for name in TEST_STYLES:
        generate_test_set(data_root, name, test, overwrite, progress)


if __name__ == "__main__":  # the command line is aml.cli.synthetic (the data layer does not import the CLI)
    raise SystemExit("python -m aml.data.synthetic is now python -m aml.cli.synthetic (same flags)")
