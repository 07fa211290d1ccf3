"""Convolutional trunks ("features") by architecture name: a table, not a chain of ifs.

Each :class:`Backbone` says how to build the trunk's children, how many channels it
outputs, whether it is a *student* trunk (always followed by a 1x1 projection to the
teacher's dimension, as in the original), and where its ImageNet weights come from.
"""

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch
from torch import nn

CIRTORCH_IMAGENET = "http://cmp.felk.cvut.cz/cnnimageretrieval/data/networks/imagenet/"

#: cirtorch's converted Caffe trunks (used instead of torchvision's ImageNet weights).
CAFFE_TRUNKS: Dict[str, str] = {
    "vgg16": CIRTORCH_IMAGENET + "imagenet-caffe-vgg16-features-d369c8e.pth",
    "resnet50": CIRTORCH_IMAGENET + "imagenet-caffe-resnet50-features-ac468af.pth",
    "resnet101": CIRTORCH_IMAGENET + "imagenet-caffe-resnet101-features-10a101d.pth",
    "resnet152": CIRTORCH_IMAGENET + "imagenet-caffe-resnet152-features-1011020.pth",
}


@dataclass(frozen=True)
class Backbone:
    """How to build one architecture's trunk.

    ``model`` is the torchvision or timm model name (``source`` says which), ``children``
    picks the trunk's children from a full model, ``dim`` is the trunk's output channels.
    A ``student`` trunk is always followed by a 1x1 projection to the teacher's dimension.
    ``legacy_children`` maps child indices of old checkpoints to today's (see efficientnet).
    """

    model: str
    children: Callable[[nn.Module], List[nn.Module]]
    dim: int
    source: str = "torchvision"
    student: bool = False
    legacy_children: Dict[int, int] = field(default_factory=dict)


def _features_minus_last(model: nn.Module) -> List[nn.Module]:
    return list(model.features.children())[:-1]


def _all_but_pool_and_fc(model: nn.Module) -> List[nn.Module]:
    return list(model.children())[:-2]


def _densenet(model: nn.Module) -> List[nn.Module]:
    return list(model.features.children()) + [nn.ReLU(inplace=True)]


def _squeezenet(model: nn.Module) -> List[nn.Module]:
    return list(model.features.children())


def _whole_features(model: nn.Module) -> List[nn.Module]:
    # mobilenet_v2: the whole torchvision Sequential is one child (keys features.0.<block>.*)
    return [model.features]


def _first(count: int) -> Callable[[nn.Module], List[nn.Module]]:
    return lambda model: list(model.children())[:count]


BACKBONES: Dict[str, Backbone] = {
    "alexnet": Backbone("alexnet", _features_minus_last, 256),
    **{f"vgg{d}": Backbone(f"vgg{d}", _features_minus_last, 512) for d in (11, 13, 16, 19)},
    **{f"resnet{d}": Backbone(f"resnet{d}", _all_but_pool_and_fc, 512) for d in (18, 34)},
    **{f"resnet{d}": Backbone(f"resnet{d}", _all_but_pool_and_fc, 2048) for d in (50, 101, 152)},
    **{f"densenet{d}": Backbone(f"densenet{d}", _densenet, c) for d, c in ((121, 1024), (161, 2208), (169, 1664), (201, 1920))},
    "squeezenet1_0": Backbone("squeezenet1_0", _squeezenet, 512),
    "squeezenet1_1": Backbone("squeezenet1_1", _squeezenet, 512),
    "mobilenet_v2": Backbone("mobilenet_v2", _whole_features, 1280, student=True),
    # timm EfficientNet children: conv_stem, bn1, blocks, conv_head, bn2 (global_pool and
    # classifier dropped). 2020 checkpoints had act1/act2 children too: their indices
    # 0,1,3,4,5,7 (7 = projection) are today's 0,1,2,3,4,5.
    "efficientnet_b3": Backbone(
        "tf_efficientnet_b3", _first(-2), 1536, source="timm", student=True,
        legacy_children={0: 0, 1: 1, 3: 2, 4: 3, 5: 4, 7: 5},
    ),
    # timm's MobileNetV3 pools before its conv_head; the trunk stops at the blocks (960 ch)
    # so that GeM sees a spatial map. No published checkpoint uses this architecture.
    "mobilenet_v3": Backbone("mobilenetv3_large_100", _first(3), 960, source="timm", student=True),
}


def get_backbone(arch: str) -> Backbone:
    """The table entry for ``arch``, or a ValueError listing the supported names."""
    try:
        return BACKBONES[arch]
    except KeyError:
        raise ValueError(f"Unsupported or unknown architecture: {arch!r}; choose one of {sorted(BACKBONES)}") from None


def _timm_model(name: str, pretrained: bool) -> nn.Module:
    try:
        import timm
    except ImportError as err:  # timm is optional
        raise ImportError(f"architecture {name!r} needs the optional package timm: pip install timm") from err
    try:
        return timm.create_model(name, pretrained=pretrained)
    except (OSError, RuntimeError, ValueError) as err:  # hub unreachable (requests and hub errors are OSErrors)
        raise RuntimeError(
            f"could not fetch timm's ImageNet weights for {name!r} ({err}); "
            "use --not-pretrained, or pre-fill the Hugging Face cache on a machine with internet"
        ) from err


def _torchvision_model(name: str, pretrained: bool, data_root: Optional[str]) -> nn.Module:
    import torchvision

    model = torchvision.models.get_model(name, weights=None)
    if pretrained:
        url = torchvision.models.get_model_weights(name).DEFAULT.url
        model.load_state_dict(_load_weights_file(url, data_root))
    return model


def _load_weights_file(url: str, data_root: Optional[str]) -> Dict[str, torch.Tensor]:
    from aml.data.download import download_file
    from aml.data.paths import data_subdir

    path = download_file(url, data_subdir(data_root, "networks") / url.rsplit("/", 1)[1])
    return torch.load(path, map_location="cpu", weights_only=True)


def build_trunk(arch: str, pretrained: bool, data_root: Optional[str] = None) -> List[nn.Module]:
    """The trunk's children for ``arch``, with ImageNet weights when ``pretrained``.

    vgg16 and resnet50/101/152 take cirtorch's converted Caffe trunks, other torchvision
    models torchvision's default weights, timm models timm's; downloads are cached in
    ``<data_root>/networks``.
    """
    backbone = get_backbone(arch)
    caffe = pretrained and arch in CAFFE_TRUNKS
    if backbone.source == "timm":
        model = _timm_model(backbone.model, pretrained)
    else:
        model = _torchvision_model(backbone.model, pretrained and not caffe, data_root)
    children = backbone.children(model)
    if caffe:
        nn.Sequential(*children).load_state_dict(_load_weights_file(CAFFE_TRUNKS[arch], data_root))
    return children
