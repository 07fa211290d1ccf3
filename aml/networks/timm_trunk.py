"""Any timm model as a trunk: ``timm:<model>[.<tag>][+<readout>]``.

A CNN's trunk is its ``forward_features``: the last feature map, which GeM (or any pooling
of `aml.layers.pooling.POOLINGS`) pools. A token model (a ViT: it has ``patch_embed`` and
``num_prefix_tokens``) gives tokens instead; a *readout* of `TOKEN_READOUTS` turns them into
a B x C x H x W map: the patch tokens on their grid (``patch``, the default), or the class
token as a 1 x 1 map (``cls``). Token models are built with ``dynamic_img_size`` and
``dynamic_img_pad``: their position embeddings are resampled to each image's grid and an
image whose sides are not multiples of the patch size is padded, so retrieval images of any
size and aspect ratio go through (a model that cannot, such as Swin, is refused by name). The
classifier head (timm's ``pretrained_cfg['classifier']``, a ViT's ``fc_norm`` and
``attn_pool``) is dropped, and the other layers ``forward_features`` never runs are frozen:
every trainable parameter is used.
"""

import logging
import math
import re
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn


from aml.utils.distributed import warn_once
from aml.utils.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: how a readout is named at the end of an architecture: ``timm:vit_small_patch14_dinov2+cls``
READOUT_SEPARATOR = "+"
#: held while a timm module's resampling functions are replaced (`_guarded_resampling`): two
#: threads converting files at once would otherwise restore each other's replacements for good
_RESAMPLING_REPLACED = threading.RLock()
_TIMM_NAME = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_]+)?$")


def patch_map(tokens: torch.Tensor, prefix: int, grid: Tuple[int, int]) -> torch.Tensor:
    """The patch tokens of B x N x C ``tokens`` as a B x C x H x W map (``grid`` is H, W)."""
    patches = tokens[:, prefix:]
    return patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], grid[0], grid[1])


def class_token_map(tokens: torch.Tensor, prefix: int, grid: Tuple[int, int]) -> torch.Tensor:
    """The class token (the first) of B x N x C ``tokens`` as a B x C x 1 x 1 map."""
    return tokens[:, 0, :, None, None]


#: readout name -> function(tokens B x N x C, number of prefix tokens, patch grid) -> B x C x H x W
TOKEN_READOUTS: Dict[str, Callable[[torch.Tensor, int, Tuple[int, int]], torch.Tensor]] = {
    "patch": patch_map,
    "cls": class_token_map,
}
DEFAULT_READOUT = "patch"
#: what a token model is built with: position embeddings resampled to any grid, images padded
#: to a multiple of the patch size
TOKEN_MODEL_KWARGS = dict(dynamic_img_size=True, dynamic_img_pad=True)


@dataclass(frozen=True)
class TimmSpec:
    """What ``timm:<model>[.<tag>][+<readout>]`` names.

    Attributes:
        model: timm's model name (``vit_small_patch14_dinov2``).
        tag: its pretrained tag (``lvd142m``); "" for timm's default one.
        readout: a name of `TOKEN_READOUTS` for a token model; None for a CNN.
    """

    model: str
    tag: str
    readout: Optional[str]

    @property
    def timm_name(self) -> str:
        """The name timm builds the model (and finds its pretrained config) by."""
        return f"{self.model}.{self.tag}" if self.tag else self.model


def import_timm():
    """The timm package; an ImportError that says how to install it when it is missing."""
    try:
        import timm
    except ImportError as err:  # timm is optional
        raise ImportError("timm: architectures need the optional package timm: pip install timm") from err
    return timm


def is_token_model(model: nn.Module) -> bool:
    """Whether ``model``'s ``forward_features`` gives tokens (a ViT) rather than a map."""
    return hasattr(model, "patch_embed") and hasattr(model, "num_prefix_tokens")


#: the image a name is tried on when parsed: odd sides, an aspect ratio no model is made for
_PROBE_SIZE = (75, 103)
#: the modules of timm's classifier head besides ``pretrained_cfg['classifier']``: a ViT's norm
#: after pooling and its attention pooling
_HEAD_PARTS = ("fc_norm", "attn_pool")


def _has_class_token(model: torch.nn.Module) -> bool:
    """Whether a timm token model's first token is a class token (not a register's)."""
    return bool(getattr(model, "has_class_token", getattr(model, "cls_token", None) is not None))


@lru_cache(maxsize=None)
def parse_timm_spec(text: str) -> Tuple[TimmSpec, int]:
    """Parse what follows ``timm:``; the spec and the trunk's output channels.

    The model is built and tried on an image of odd sides on the meta device (no weights
    allocated, nothing computed), so a model that needs a fixed input size is refused here.

    Args:
        text: ``<model>[.<tag>][+<readout>]``, e.g. ``convnext_tiny``,
            ``vit_small_patch14_dinov2.lvd142m+cls``.

    Returns:
        The spec (a token model gets the default readout, ``patch``) and the channels.

    Raises:
        ConfigError: (a ValueError) for a name timm does not know (with close names), an unknown tag or
            readout, a readout asked of a CNN, or a model that takes one image size only.
    """
    timm = import_timm()
    name, separator, readout = text.partition(READOUT_SEPARATOR)
    if separator and not readout:  # one network would go by two names (and two fingerprints of its settings)
        raise ConfigError(
            f"timm:{text}: nothing follows {READOUT_SEPARATOR!r}; drop it, or name a readout of "
            f"{sorted(TOKEN_READOUTS)} (for ViTs)"
        )
    if not _TIMM_NAME.match(name) or not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0][:12]}*")[:6] if name else []
        raise ConfigError(
            f"timm:{text}: timm {timm.__version__} has no model {name!r}"
            + (f"; close names: {', '.join(close)}" if close else "; see timm.list_models()")
        )
    model, _, tag = name.partition(".")
    try:
        timm.models.get_pretrained_cfg(name)
    except RuntimeError:
        tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{model}.*")]
        raise ConfigError(f"timm:{text}: {model} has no pretrained tag {tag!r}; its tags: {', '.join(tags)}") from None
    with torch.device("meta"):
        plain = timm.create_model(name, pretrained=False, num_classes=0)
    if not is_token_model(plain):
        if readout:
            raise ConfigError(
                f"timm:{text}: {model} gives a feature map, not tokens: drop {READOUT_SEPARATOR}{readout} "
                "(readouts are for ViTs)"
            )
    elif (readout or DEFAULT_READOUT) not in TOKEN_READOUTS:
        raise ConfigError(f"timm:{text}: unknown readout {readout!r}; choose one of {sorted(TOKEN_READOUTS)}")
    elif readout == "cls" and not _has_class_token(plain):  # its prefix tokens may be registers alone
        raise ConfigError(f"timm:{text}: {model} has no class token; use {READOUT_SEPARATOR}patch")
    spec = TimmSpec(model, tag, (readout or DEFAULT_READOUT) if is_token_model(plain) else None)
    try:
        with torch.device("meta"):  # in eval mode, as extraction runs it (BatchNorm takes a batch of one)
            features = TimmTrunk(create_timm_body(spec), spec.readout).eval()(torch.empty(1, 3, *_PROBE_SIZE))
    except Exception as err:
        raise ConfigError(
            f"timm:{text}: {model} does not take images of any size and aspect ratio, as retrieval "
            f"needs ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); choose "
            "another model"
        ) from None
    if not isinstance(features, torch.Tensor) or features.dim() != 4:
        shape = f"shape {tuple(features.shape)}" if isinstance(features, torch.Tensor) else type(features).__name__
        raise ConfigError(
            f"timm:{text}: {model}'s features are neither a feature map nor a ViT's tokens ({shape} for one "
            "image); choose another model"
        )
    if spec.readout and _final_norm_in_head(plain):  # said of a model taken, not of one refused
        _warn_of_head_norm(text, model)
    return spec, int(features.shape[1])


def canonical_timm_name(text: str) -> str:
    """The one spelling of ``<model>[.<tag>][+<readout>]``: without the tag when it is the
    model's default one (under the installed timm) and without the default readout, so that
    one network has one name (and one fingerprint) however it was written.

    Args:
        text: what follows ``timm:`` (`parse_timm_spec`).

    Returns:
        The name, e.g. ``test_vit`` for ``test_vit.r160_in1k+patch``.

    Raises:
        ConfigError: for a name `parse_timm_spec` refuses.

    Examples:
        >>> from aml.networks.timm_trunk import canonical_timm_name
        >>> canonical_timm_name("test_vit.r160_in1k+patch"), canonical_timm_name("test_vit+cls")
        ('test_vit', 'test_vit+cls')
    """
    spec, _ = parse_timm_spec(text)
    default = getattr(import_timm().models.get_pretrained_cfg(spec.model), "tag", None)
    name = spec.model if spec.tag in ("", default) else spec.timm_name
    return name if spec.readout in (None, DEFAULT_READOUT) else f"{name}{READOUT_SEPARATOR}{spec.readout}"


def _warn_of_head_norm(text: str, model: str) -> None:
    """Say that a token model's only final norm goes with its head (`_final_norm_in_head`)."""
    warn_once(
        log,
        ">> timm:%s: %s's only final norm is in its head (fc_norm, after pooling), which aml drops with the head: "
        "its tokens are read before any final norm",
        text,
        model,
    )


def _final_norm_in_head(model: nn.Module) -> bool:
    """Whether a token model normalises its tokens only in its head (``fc_norm``, after timm's
    mean pooling: the ``*_gap*`` ViTs, EVA, EVA02), its ``norm`` being none."""
    head = getattr(model, "fc_norm", None)
    return (
        isinstance(getattr(model, "norm", None), nn.Identity)
        and isinstance(head, nn.Module)
        and (not isinstance(head, nn.Identity))
    )


def classifier_modules(model: nn.Module) -> Tuple[str, ...]:
    """The top-level modules of timm's classifier head: ``pretrained_cfg['classifier']``
    (e.g. ``head.fc``: all of ``head``, its norm too), a ViT's norm after pooling and its
    attention pooling."""
    classifier = getattr(model, "pretrained_cfg", {}).get("classifier") or ()
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    return tuple(dict.fromkeys([name.split(".")[0] for name in names] + list(_HEAD_PARTS)))


def create_timm_body(spec: TimmSpec) -> nn.Module:
    """The timm model of ``spec`` with random weights and its classifier head removed.

    Args:
        spec: the model, its tag (which fixes a ViT's native image size, so that its
            pretrained position embeddings fit) and its readout.

    Returns:
        The model; its ``forward_features`` is the trunk.
    """
    model = _headless(spec)
    for name in _unreached_children(spec):  # frozen, not dropped: checkpoints and release files keep them
        getattr(model, name).requires_grad_(False)
    return model


def _headless(spec: TimmSpec) -> nn.Module:
    """The timm model of ``spec``, random, without the modules of its classifier head."""
    kwargs = TOKEN_MODEL_KWARGS if spec.readout else {}
    model = import_timm().create_model(spec.timm_name, pretrained=False, num_classes=0, **kwargs)
    for name in classifier_modules(model):
        if isinstance(getattr(model, name, None), nn.Module):
            setattr(model, name, nn.Identity())
    return model


@lru_cache(maxsize=None)
def _unreached_children(spec: TimmSpec) -> Tuple[str, ...]:
    """The top-level modules with weights that ``forward_features`` never runs: the parts of
    timm's head outside its classifier (MobileNetV3's ``conv_head``, VGG's ``pre_logits``),
    found by running the model on the meta device. They never learn, and
    DistributedDataParallel stops at the first step on trainable weights without gradients."""
    reached = set()
    with torch.device("meta"):
        model = _headless(spec)
        hooks = [  # a child counts as run when any module inside it runs (a ModuleList is iterated, not called)
            module.register_forward_pre_hook(lambda module, args, child=child: reached.add(child))
            for child, top in model.named_children()
            for module in top.modules()
        ]
        try:
            TimmTrunk(model, spec.readout).eval()(torch.empty(1, 3, *_PROBE_SIZE))
        except Exception:  # a model that cannot run is refused by parse_timm_spec, which says why
            return ()
        finally:
            for hook in hooks:
                hook.remove()
        unreached = tuple(
            name
            for name, child in model.named_children()
            if name not in reached and next(child.parameters(), None) is not None
        )
        for name in unreached:
            setattr(model, name, nn.Identity())
        try:  # a weight read without running its module (rare) would be missed: such a model trains them all
            TimmTrunk(model, spec.readout).eval()(torch.empty(1, 3, *_PROBE_SIZE))
        except Exception:
            return ()
    return unreached


class TimmTrunk(nn.Module):
    """A timm model's ``forward_features`` as a B x C x H x W feature map.

    Args:
        body: the timm model without its head (`create_timm_body`).
        readout: for a token model, a name of `TOKEN_READOUTS`; None for a CNN.

    Examples:
        >>> import torch
        >>> from aml.networks.timm_trunk import TimmTrunk, create_timm_body, parse_timm_spec
        >>> spec, dim = parse_timm_spec("vit_tiny_patch16_224")
        >>> trunk = TimmTrunk(create_timm_body(spec), spec.readout)
        >>> trunk(torch.rand(1, 3, 40, 64)).shape  # 40 x 64 px, padded to 48 x 64: a 3 x 4 grid
        torch.Size([1, 192, 3, 4])
    """

    def __init__(self, body: nn.Module, readout: Optional[str] = None):
        super().__init__()
        self.body: Any = body  # a timm model: its attributes depend on the family
        self.readout = readout
        self.channels_last_output = getattr(body, "output_fmt", "NCHW") == "NHWC"
        # the ONNX opset a token model needs: its position embeddings are resampled by
        # antialiased bicubic interpolation, ONNX's Resize with ``antialias`` (opset 18)
        self.onnx_opset = 18 if readout else 0

    def grid(self, height: int, width: int) -> Tuple[int, int]:
        """The patch grid of an image of ``height`` x ``width`` (padded to whole patches; a
        hybrid ViT's CNN stem first reduces the image by its ``feature_ratio``, rounding up as
        strided convolutions do)."""
        embed = self.body.patch_embed
        ratio = getattr(embed, "feature_ratio", (1, 1))
        step = (ratio[0] * embed.patch_size[0], ratio[1] * embed.patch_size[1])
        return (height + step[0] - 1) // step[0], (width + step[1] - 1) // step[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The feature map of a batch of images.

        Args:
            x: B x 3 x H x W images, normalised with the network's mean and std.

        Returns:
            B x C x h x w features (1 x 1 for the class token).
        """
        out = self.body.forward_features(x)
        if self.readout is None:
            return out.permute(0, 3, 1, 2) if self.channels_last_output else out
        return TOKEN_READOUTS[self.readout](out, self.body.num_prefix_tokens, self.grid(x.shape[-2], x.shape[-1]))


def removed_by_trunk(model: nn.Module, key: str) -> bool:
    """Whether the weight ``key`` of a full timm model belongs to a layer the trunk replaced
    by nothing (its classifier head): the deepest module of ``model`` on its path is an
    ``nn.Identity``."""
    module, parts = model, key.split(".")[:-1]
    for part in parts:
        child = getattr(module, part, None) if isinstance(module, nn.Module) else None
        if not isinstance(child, nn.Module):
            break
        module = child
    return isinstance(module, nn.Identity)


class AnotherPatchSize(DataError):
    """A ViT file whose patch kernel is not the model's: another model's weights."""


def timm_filter(model: nn.Module) -> Optional[Callable]:
    """timm's conversion of a released file into its own layout, for ``model``'s family (the
    ``checkpoint_filter_fn`` of its module, e.g. DINOv2's original release), if it has one.

    The conversion refuses to resample a patch kernel of another size (`AnotherPatchSize`:
    another model's file, which timm would make fit without a word) and says when it resamples
    position embeddings of another grid (weights trained at another image size)."""
    module = sys.modules.get(type(model).__module__)
    convert = getattr(module, "checkpoint_filter_fn", None)
    if convert is None:
        return None

    def converted(state: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
        with _guarded_resampling(module) as grids:
            state = convert(state, model)
        for old, new in grids:  # said once the file is taken (a refused one says why it is refused)
            log.warning(
                ">> the file's position embeddings, of a %s grid, are resampled to the model's %s (weights trained "
                "at another image size)",
                old,
                new,
            )
        return state

    return converted


@contextmanager
def _guarded_resampling(module: Any) -> Iterator[List[Tuple[str, str]]]:
    """Within, ``module``'s resampling of patch kernels refuses, and that of position
    embeddings to another grid is listed (old grid, new grid) in what it gives."""
    with _RESAMPLING_REPLACED:
        yield from _replaced_resampling(module)


def _replaced_resampling(module: Any) -> Iterator[List[Tuple[str, str]]]:
    """`_guarded_resampling`'s replacements, made and undone by one thread at a time."""
    grids: List[Tuple[str, str]] = []
    originals: Dict[str, Any] = {
        name: getattr(module, name, None) for name in ("resample_patch_embed", "resample_abs_pos_embed")
    }

    def patch_kernel(kernel: torch.Tensor, new_size: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        raise AnotherPatchSize(f"a {tuple(kernel.shape[-2:])} patch kernel where the model's is {tuple(new_size)}")

    def positions(embedding: torch.Tensor, new_size: Any, old_size: Any = None, **kwargs: Any) -> torch.Tensor:
        if old_size is None:  # timm infers a square grid from the count of tokens
            tokens = embedding.shape[1] - int(kwargs.get("num_prefix_tokens", 1))
            side = math.isqrt(max(tokens, 0))
            old_size = (side, side) if side * side == tokens else (tokens,)
        if tuple(old_size) != tuple(new_size):
            grids.append(("x".join(map(str, old_size)), "x".join(map(str, new_size))))
        return originals["resample_abs_pos_embed"](embedding, new_size=new_size, old_size=old_size, **kwargs)

    replaced = {"resample_patch_embed": patch_kernel, "resample_abs_pos_embed": positions}
    try:
        for name, original in originals.items():
            if original is not None:
                setattr(module, name, replaced[name])
        yield grids
    finally:
        for name, original in originals.items():
            if original is not None:
                setattr(module, name, original)
