"""The retrieval network and its factory.

features (trunk [+ 1x1 projection + ReLU]) -> [local whitening] -> pooling -> L2N ->
[whitening Linear -> L2N]. ``forward`` returns descriptors as columns (D x B), the cirtorch
convention; `ImageRetrievalNet.descriptors` returns rows (B x D).
"""

import logging
import numbers
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from aml.data.paths import DataRootLike
from aml.layers.functional import l2n
from aml.layers.normalization import L2N
from aml.layers.pooling import POOLINGS, Rpool
from aml.networks.backbones import build_trunk, get_backbone
from aml.networks.imagenet import get_imagenet_weights
from aml.networks.pretrained import (
    DEFAULT_TEACHER,
    DEFAULT_TEACHER_DIM,
    FINAL_WHITENING,
    LOCAL_WHITENING,
    REGIONAL_WHITENING,
    TEACHERS,
    teacher_dimension,
)
from aml.utils.errors import ConfigError, lookup

log = logging.getLogger(__name__)


class Features(nn.Sequential):
    """The trunk's layers, then a student's 1x1 projection and ReLU, run in order (an
    ``nn.Sequential``: cirtorch's ``features`` and its state-dict keys).

    The trunk runs under the caller's autocast; the projection in float32 (its 2048 outputs
    per position feed GeM's x^p, which overflows float16), float64 in a ``.double()`` network.
    """

    def projection(self) -> Optional[nn.Conv2d]:
        """The bias-free 1x1 convolution before a final ReLU, if the layers end with one.

        Returns:
            The projection, or None.
        """
        if len(self) < 2:
            return None
        conv, relu = self[-2], self[-1]
        if (
            isinstance(conv, nn.Conv2d)
            and conv.kernel_size == (1, 1)
            and conv.bias is None
            and isinstance(relu, nn.ReLU)
        ):
            return conv
        return None

    def trunk_end(self) -> int:
        """Where the trunk ends: before a projection, else after the last layer.

        Returns:
            The number of leading layers that make up the trunk.
        """
        return len(self) - 2 if Features.projection(self) is not None else len(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layers = list(self)
        end = self.trunk_end()
        first = next(self.parameters(), None)
        if first is not None and first.dtype != x.dtype and not torch.is_autocast_enabled(x.device.type):
            # float32 pixels (extraction's, training's) into a network converted with .half() or
            # .bfloat16(): its dtype, as autocast would cast them (without it, a dtype error)
            x = x.to(first.dtype)
        for layer in layers[:end]:
            x = layer(x)
        if end < len(layers):
            with torch.autocast(x.device.type, enabled=False):
                x = x.to(head_dtype(layers[end:]))
                for layer in layers[end:]:
                    x = run_head_layer(layer, x)
        return x


def head_dtype(modules: Sequence[Optional[nn.Module]]) -> torch.dtype:
    """The dtype the layers after the trunk run in: float32 (under autocast, and for a network
    converted with ``.half()`` or ``.bfloat16()``: GeM's x^p overflows float16), float64 for a
    network converted with ``.double()``."""
    firsts = (next(m.parameters(), None) for m in modules if m is not None)  # a conversion converts them all
    return torch.float64 if any(w is not None and w.dtype == torch.float64 for w in firsts) else torch.float32


def run_head_layer(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` for a layer after the trunk, ``x`` in `head_dtype`: 16-bit weights (a
    network converted with ``.half()``) are used upcast to it, never rounding ``x`` down."""
    upcast = {
        name: w.to(x.dtype) for name, w in module.named_parameters() if w.dtype in (torch.float16, torch.bfloat16)
    }
    return torch.func.functional_call(module, upcast, (x,), strict=False) if upcast else module(x)


class ImageRetrievalNet(nn.Module):
    """A trunk plus pooling that maps images to L2-normalised global descriptors.

    features -> [local whitening] -> pooling -> L2N -> [whitening -> L2N]. ``forward``
    returns descriptors as columns (D x B), the cirtorch convention; `descriptors`
    returns rows (B x D). `build_network` builds one by name.

    Args:
        features: the trunk's children, then a student's 1x1 projection and ReLU, run in order.
        lwhiten: the local whitening, a linear layer applied at every position of the
            feature map before pooling, or None.
        pool: the pooling layer (a module of `aml.layers.pooling.POOLINGS`, or regional
            pooling around one).
        whiten: the learned whitening (a linear layer) after pooling, or None.
        meta: what rebuilds the network (architecture, pooling, flags, mean, std, outputdim,
            ...), kept in checkpoints.

    Examples:
        >>> import torch
        >>> from aml.networks import build_network
        >>> net = build_network("resnet18", pretrained=False).eval()
        >>> images = torch.rand(2, 3, 32, 32)
        >>> net(images).shape, net.descriptors(images).shape
        (torch.Size([512, 2]), torch.Size([2, 512]))
    """

    features: "Features"
    lwhiten: Optional[nn.Module]
    pool: nn.Module
    whiten: Optional[nn.Module]
    meta: Dict[str, Any]

    def __init__(
        self,
        features: List[nn.Module],
        lwhiten: Optional[nn.Module],
        pool: nn.Module,
        whiten: Optional[nn.Module],
        meta: Dict[str, Any],
    ):
        super().__init__()
        self.features = Features(*features)
        self.lwhiten = lwhiten
        self.pool = pool
        self.whiten = whiten
        self.norm = L2N()
        self.meta = meta

    def descriptors(self, x: torch.Tensor) -> torch.Tensor:
        """Descriptors of a batch of images, one row per image.

        The trunk runs under the caller's autocast, if any; everything after it (a student's
        projection, local whitening, pooling, normalisation, whitening) runs in float32, also
        in a network converted with ``.half()`` (its head's weights used upcast): GeM's x^p,
        its mean over positions and the squared norm of a 2048-d descriptor overflow float16,
        and the head costs little next to the trunk. A ``.double()`` network runs it in float64.

        Args:
            x: B x 3 x H x W images, normalised with the network's mean and std.

        Returns:
            B x D L2-normalised descriptors, float32 (float64 for a ``.double()`` network).
        """
        o = self.features(x)
        with torch.autocast(o.device.type, enabled=False):
            o = o.to(head_dtype([self.features, self.lwhiten, self.pool, self.whiten]))
            if self.lwhiten is not None:
                o = run_head_layer(self.lwhiten, o.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            o = self.norm(run_head_layer(self.pool, o)).flatten(1)
            if self.whiten is not None:
                o = l2n(run_head_layer(self.whiten, o))
        return o

    def trunk_end(self) -> int:
        """Where the trunk ends in ``features`` (`Features.trunk_end`).

        Returns:
            The number of leading ``features`` layers that make up the trunk.
        """
        return Features.trunk_end(self.features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Descriptors of a batch of images, one column per image (cirtorch's convention).

        Args:
            x: B x 3 x H x W images, normalised with the network's mean and std.

        Returns:
            D x B L2-normalised descriptors.
        """
        return self.descriptors(x).t()

    def projection(self) -> Optional[nn.Conv2d]:
        """The student's bias-free 1x1 projection to the teacher's dimension, if any.

        Returns:
            The convolution before the trunk's final ReLU, or None when the trunk has none.
        """
        return Features.projection(self.features)

    def gem_p(self) -> Optional[float]:
        """The GeM exponent, if the network pools with a single-p GeM.

        Returns:
            The exponent p, or None for another pooling.
        """
        p = getattr(self.pool, "p", None)
        return float(p.item()) if isinstance(p, torch.Tensor) and p.numel() == 1 else None

    def meta_repr(self) -> str:
        """The meta block as cirtorch prints it.

        Returns:
            The lines of ``(meta): dict(...)``, one key a line.
        """
        lines = (
            ["  (meta): dict( "]
            + [
                f"     {k}: {self.meta.get(k)}"
                for k in (
                    "architecture",
                    "local_whitening",
                    "pooling",
                    "regional",
                    "whitening",
                    "outputdim",
                    "mean",
                    "std",
                )
            ]
            + ["  )"]
        )
        return "\n".join(lines)


def multiscale_power(net: ImageRetrievalNet, scales: List[float]) -> float:
    """The power (msp) that averages a network's descriptors over several scales.

    Args:
        net: the network.
        scales: the scales descriptors are extracted at.

    Returns:
        The network's GeM p for multi-scale extraction with plain GeM (no regional pooling,
        no whitening), else 1.

    Examples:
        >>> from aml.networks import build_network, multiscale_power
        >>> net = build_network("resnet18", pretrained=False)
        >>> multiscale_power(net, [1, 2 ** 0.5, 2 ** -0.5])
        3.0
        >>> multiscale_power(net, [1])
        1.0
    """
    meta = net.meta
    plain_gem = meta.get("pooling") == "gem" and not meta.get("regional") and not meta.get("whitening")
    p = net.gem_p()
    if len(scales) > 1 and plain_gem and p is not None:
        return p
    return 1.0


def output_dimension(arch: str, teacher: Optional[str] = None, teacher_dim: Optional[int] = None) -> int:
    """Descriptor dimension: ``teacher_dim`` when given; a student trunk projects to its published
    teacher's (`aml.networks.pretrained.DEFAULT_TEACHER`'s, vgg16's 512, for none or another
    name); other trunks keep their width."""
    backbone = get_backbone(arch)
    if teacher_dim:
        return int(teacher_dim)
    if backbone.student:
        return teacher_dimension(teacher) or DEFAULT_TEACHER_DIM
    return backbone.dim


def _check_teacher(teacher: Optional[str], teacher_dim: Optional[int]) -> None:
    """Refuse a ``teacher_dim`` that is no dimension (0 was ignored, -5 torch's error) and a
    teacher name that is no published one when no ``teacher_dim`` says the dimension (a
    misspelling gave a 512-d network without a word)."""
    if teacher_dim is not None and (
        isinstance(teacher_dim, bool) or not isinstance(teacher_dim, numbers.Integral) or teacher_dim < 1
    ):
        raise ConfigError(f"teacher_dim {teacher_dim!r}: the dimension to project to is a whole number > 0")
    if teacher and not teacher_dim and teacher_dimension(teacher) is None:
        raise ConfigError(
            f"unknown teacher {teacher!r}: name a published one ({', '.join(sorted(TEACHERS))} or a name of the "
            "pretrained list) or give teacher_dim, the dimension to project to"
        )


def build_network(
    architecture: str = "resnet101",
    pooling: str = "gem",
    local_whitening: bool = False,
    regional: bool = False,
    whitening: bool = False,
    mean: Optional[List[float]] = None,
    std: Optional[List[float]] = None,
    pretrained: bool = True,
    teacher: Optional[str] = None,
    teacher_dim: Optional[int] = None,
    data_root: DataRootLike = None,
) -> ImageRetrievalNet:
    """Build a retrieval network; nothing is moved to a device (the caller decides).

    ``teacher`` or ``teacher_dim`` fix the output dimension: student trunks
    (mobilenet_v2/v3, efficientnet_b3) always get a bias-free 1x1 projection + ReLU to it;
    other trunks get one only when that dimension differs from their width.

    Args:
        architecture: the trunk, a name of `BACKBONES` or ``timm:<model>`` (any timm model).
        pooling: a name of `aml.layers.pooling.POOLINGS` (``"gem"``, ``"mac"``, ...).
        local_whitening: a learnable linear layer before pooling.
        regional: regional (R-MAC grid) pooling.
        whitening: a learnable whitening (linear layer, then L2N) after pooling.
        mean: the input normalisation's mean; default: that of the inputs the ImageNet
            weights were trained on (ImageNet's statistics; 0.5 for EfficientNet-Lite).
        std: the input normalisation's standard deviation, with the same default.
        pretrained: start the trunk from the original's ImageNet weights (found offline or
            downloaded, see `aml.networks.imagenet.find_weights`) and download
            cirtorch's learned linear layers where published.
        teacher: ``"vgg16"`` or ``"resnet101"``, whose dimension the network projects to (a
            student trunk's default: 512, vgg16's); recorded in ``meta``.
        teacher_dim: the output dimension to project to, for any trunk.
        data_root: where weights are found or downloaded.

    Returns:
        The network on the CPU, its ``meta`` filled in.

    Raises:
        ConfigError: for an unknown architecture, pooling or teacher (a ValueError).

    Examples:
        >>> from aml.networks import build_network
        >>> net = build_network("mobilenet_v2", pretrained=False, teacher="resnet101")
        >>> net.meta["outputdim"], net.projection() is not None
        (2048, True)
        >>> teacher = build_network("resnet101", "gem", whitening=True, data_root="data")  # doctest: +SKIP
    """
    pool_type = lookup(POOLINGS, pooling, "pooling")
    _check_teacher(teacher, teacher_dim)
    backbone = get_backbone(architecture)
    normalisation = get_imagenet_weights(architecture)
    dim = output_dimension(architecture, teacher, teacher_dim or (teacher_dimension(teacher) if teacher else None))
    features = build_trunk(architecture, pretrained, data_root)
    if backbone.student or dim != backbone.dim:
        features += [nn.Conv2d(backbone.dim, dim, kernel_size=1, bias=False), nn.ReLU(inplace=True)]
    lwhiten = nn.Linear(dim, dim, bias=True) if local_whitening else None
    pool = pool_type(dim)
    if regional:
        pool = Rpool(pool, whiten=nn.Linear(dim, dim, bias=True))
    whiten = nn.Linear(dim, dim, bias=True) if whitening else None
    meta = {
        "architecture": architecture,
        "local_whitening": local_whitening,
        "pooling": pooling,
        "regional": regional,
        "whitening": whitening,
        "mean": [float(v) for v in (normalisation.mean if mean is None else mean)],  # numpy's too: floats kept
        "std": [float(v) for v in (normalisation.std if std is None else std)],
        "outputdim": dim,
    }
    if teacher:
        meta["teacher"] = teacher
    net = ImageRetrievalNet(features, lwhiten, pool, whiten, meta)
    if pretrained:
        _load_published_layers(net, data_root)
    return net


def _load_published_layers(net: ImageRetrievalNet, data_root: DataRootLike) -> None:
    """cirtorch's learned local/regional/final whitening layers, where they exist: learned on
    the trunk's own features, so not after a 1x1 projection to another dimension (a teacher's)."""
    from aml.data.download import download_file
    from aml.data.paths import data_subdir
    from aml.utils.plain_files import CheckpointError, load_plain_file

    meta = net.meta
    if net.projection() is not None:
        if net.lwhiten is not None or net.whiten is not None or isinstance(net.pool, Rpool):
            log.info(">> %s: random whitening layers (no published one fits after a projection)", meta["architecture"])
        return
    arch, pool = meta["architecture"], meta["pooling"]
    key = f"{arch}{'-lw' if meta['local_whitening'] else ''}-{pool}{'-r' if meta['regional'] else ''}"
    regional = net.pool.whiten if isinstance(net.pool, Rpool) else None  # meta['regional']
    wanted: List[Tuple[Optional[nn.Module], Optional[str]]] = [
        (net.lwhiten, LOCAL_WHITENING.get(arch)),
        (regional, REGIONAL_WHITENING.get(f"{arch}-{pool}-r")),
        (net.whiten, FINAL_WHITENING.get(key)),
    ]
    for layer, url in wanted:
        if layer is None:
            continue
        if url is None:
            log.info(">> %s: no published weights for this linear layer, it stays random", key)
            continue
        path = download_file(url, data_subdir(data_root, "whiten") / url.rsplit("/", 1)[1])
        state = load_plain_file(path)  # names a damaged file, or one this user may not read
        try:
            layer.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as err:
            raise CheckpointError(
                f"{path} does not hold the {key} whitening layer ({str(err).splitlines()[0]}); delete it to download "
                "it again"
            ) from None


#: what a checkpoint's ``meta`` keeps besides `build_network`'s parameters: cirtorch's ``Lw``;
#: aml's ``teacher`` and ``teacher_fingerprint`` (its weights, which a search store is checked
#: against), ``seed``, ``batchnorm_calibrated`` (a from-scratch trunk whose BatchNorm statistics
#: were computed on training images before training), ``trunk_weights`` (the file the trunk
#: started from instead of ImageNet, when one did), ``mode`` and ``loss`` (checked on
#: --resume), ``autocast`` (the training precision, named on a --resume that changes it), and
#: ``loss_margin``, which aml wrote into ``meta`` from e54d8df to 548ef34 and writes no more (a
#: checkpoint records it beside ``min_loss``, `aml.networks.checkpoint.RunRecord`): kept where a
#: checkpoint has it, as the network's fingerprint hashes its meta
KEPT_META_KEYS = (
    "Lw",
    "teacher",
    "teacher_fingerprint",
    "seed",
    "batchnorm_calibrated",
    "trunk_weights",
    "mode",
    "loss",
    "autocast",
    "loss_margin",
)
#: and the keys `init_network` accepts besides: those, and cirtorch's ``outputdim`` (checked)
META_EXTRA_KEYS = ("outputdim", *KEPT_META_KEYS)
_BUILD_KEYS = (
    "architecture",
    "pooling",
    "local_whitening",
    "regional",
    "whitening",
    "mean",
    "std",
    "pretrained",
    "teacher",
    "teacher_dim",
    "data_root",
)


def init_network(params: Optional[Dict[str, Any]] = None) -> ImageRetrievalNet:
    """cirtorch-compatible entry point: `build_network` from a parameter dict.

    A checkpoint's ``meta`` is accepted as it is: ``outputdim`` fixes the dimension and must
    agree with ``teacher_dim`` and with a published ``teacher``'s; ``Lw`` and aml's ``seed``
    and ``batchnorm_calibrated`` are copied into ``net.meta``.

    Args:
        params: `build_network`'s keyword arguments and the other keys a checkpoint's
            ``meta`` holds (`META_EXTRA_KEYS`); None: every default.

    Returns:
        The network `build_network` builds from them, with the kept keys in its ``meta``.

    Raises:
        ValueError: for any other key (a misspelling), or an ``outputdim`` that disagrees with
            the teacher's dimension.

    Examples:
        >>> from aml.networks import init_network
        >>> net = init_network({"architecture": "resnet18", "pretrained": False, "seed": 3})
        >>> net.meta["outputdim"], net.meta["seed"]
        (512, 3)
        >>> from aml.networks.checkpoint import load_checkpoint
        >>> state = load_checkpoint("runs/.../model_best.pth.tar")  # doctest: +SKIP
        >>> net = init_network({**state["meta"], "pretrained": False})  # doctest: +SKIP
    """
    params = dict(params or {})
    unknown = set(params) - set(_BUILD_KEYS) - set(META_EXTRA_KEYS)
    if unknown:
        raise ConfigError(
            f"init_network: unknown parameters {sorted(unknown)}; "
            f"known: {sorted(set(_BUILD_KEYS) | set(META_EXTRA_KEYS))}"
        )
    outputdim = params.pop("outputdim", None)
    kept = {key: params.pop(key) for key in KEPT_META_KEYS if key in params and key != "teacher"}
    if outputdim is not None:
        outputdim = int(outputdim)
        implied = params.get("teacher_dim")
        architecture, teacher = params.get("architecture"), params.get("teacher")
        if implied is None and architecture and teacher and get_backbone(architecture).student:
            implied = teacher_dimension(teacher)
        if implied is not None and int(implied) != outputdim:
            raise ConfigError(
                f"init_network: outputdim {outputdim} disagrees with the teacher's dimension {implied} "
                f"(teacher={params.get('teacher')!r}, teacher_dim={params.get('teacher_dim')!r})"
            )
        params["teacher_dim"] = outputdim
    if _keeps_width_as_the_original(params):
        del params["teacher"]  # the original gave these their trunk's width, and recorded no teacher
    net = build_network(**params)
    net.meta.update(kept)
    return net


#: the trunks narrower than 2048 that the original's table for ``teacher='resnet101'``
#: (``OUTPUT_DIM_RESNET``) listed at their own width
_RESNET101_TABLE_OWN_WIDTH = ("densenet121", "densenet161", "densenet169", "densenet201")


def _keeps_width_as_the_original(params: Dict[str, Any]) -> bool:
    """Whether the original's ``init_network`` gave this network its trunk's width whatever its
    ``teacher`` (`keeps_own_width`), no dimension given but its own (a checkpoint's
    ``outputdim``). The rule is the original's, and main.py's for every trunk: a ``timm:``
    trunk, which the original never had, keeps its width with the default teacher as main.py's
    std runs of one always did."""
    architecture = params.get("architecture", "resnet101")
    teacher = params.get("teacher")
    if not isinstance(teacher, str):  # no teacher named: build_network gives it its width
        return False
    return params.get("teacher_dim") in (None, get_backbone(architecture).dim) and keeps_own_width(
        architecture, teacher
    )


def keeps_own_width(architecture: str, teacher: Optional[str]) -> bool:
    """Whether a network named with ``teacher`` keeps its trunk's width rather than projecting
    to the teacher's dimension, as the original's ``init_network`` and ``main.py`` built it.

    A student trunk never does. Any other trunk does with the default teacher VGG16 (the
    original's test.py passed it for every network, published ResNet101 teachers included), or
    as a DenseNet with ResNet101 (the original's table listed them so); with another teacher it
    projects (a KeyError in the original for a narrower trunk and ResNet101).

    Args:
        architecture: the trunk's name.
        teacher: the teacher's alias, published name or checkpoint path; None: the default.

    Returns:
        True when the trunk keeps its width.

    Examples:
        >>> from aml.networks.retrieval_net import keeps_own_width
        >>> keeps_own_width("resnet18", "vgg16"), keeps_own_width("resnet18", "resnet101")
        (True, False)
        >>> keeps_own_width("mobilenet_v2", "vgg16")
        False
    """
    if get_backbone(architecture).student:
        return False
    named = TEACHERS.get(teacher or DEFAULT_TEACHER, teacher)
    return named == TEACHERS[DEFAULT_TEACHER] or (
        named == TEACHERS["resnet101"] and architecture in _RESNET101_TABLE_OWN_WIDTH
    )
