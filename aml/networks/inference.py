"""An inference copy of a retrieval network: BatchNorm folded into the convolutions before it.

In eval mode a BatchNorm after a convolution is an affine map per channel, so it can be
multiplied into the convolution's weights and bias: the same descriptors up to float
rounding (~1e-8), one memory pass fewer per layer. The trunk is traced with torch.fx,
which finds every convolution followed by a BatchNorm; a trunk that does not trace (control
flow, as EfficientNet's blocks) gets the pairs that sit next to each other in a Sequential.
"""

import copy
import itertools
import logging
from typing import TypeVar, cast

from torch import nn

log = logging.getLogger(__name__)
ModuleT = TypeVar("ModuleT", bound=nn.Module)


def has_batchnorm(module: nn.Module) -> bool:
    """Whether ``module`` holds a BatchNorm layer."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def inference_copy(net: ModuleT) -> ModuleT:
    """A copy of ``net`` in eval mode whose trunk (``net.features`` up to a student's
    projection) has its BatchNorm layers folded into the convolutions before them; ``net``
    itself is left untouched. Without BatchNorm, or when the trunk cannot be traced, the
    copy keeps the trunk as it is; a module without a ``features`` trunk is returned itself."""
    from torch.fx.experimental.optimization import fuse

    features = getattr(net, "features", None)
    if not isinstance(features, nn.Module) or not has_batchnorm(features):
        return net
    was_training = net.training
    net.eval()
    try:
        folded = copy.deepcopy(net)
    finally:
        net.train(was_training)
    features = cast(nn.Sequential, folded.features)
    trunk_end = getattr(folded, "trunk_end", None)
    end = trunk_end() if callable(trunk_end) else len(features)
    trunk: nn.Module = nn.Sequential(*list(features)[:end])
    tail = list(features)[end:]
    try:
        trunk = fuse(cast(nn.Sequential, trunk))
    except Exception as err:  # any tracing failure: fold the pairs that need no tracing
        log.debug(">> trunk not traced (%s: %s); folding Sequential pairs", type(err).__name__, err)
        fold_sequential_pairs(trunk)
    folded.features = type(features)(trunk, *tail)  # the projection (run in float32) as it was
    return folded.eval()


def _after_folding(norm: nn.Module) -> nn.Module:
    """What is left of a BatchNorm once folded: nothing, or timm's BatchNormAct2d's dropout
    and activation (applied after the normalisation, in that order)."""
    if type(norm) is nn.BatchNorm2d:
        return nn.Identity()
    return nn.Sequential(cast(nn.Module, norm.drop), cast(nn.Module, norm.act))


def _foldable(norm: nn.Module) -> bool:
    plain = type(norm) is nn.BatchNorm2d
    with_activation = (
        isinstance(norm, nn.BatchNorm2d)
        and isinstance(getattr(norm, "act", None), nn.Module)
        and isinstance(getattr(norm, "drop", None), nn.Module)
    )  # timm's BatchNormAct2d
    return bool((plain or with_activation) and norm.track_running_stats and norm.running_mean is not None)


def fold_sequential_pairs(module: nn.Module) -> int:
    """In place: in every Sequential of ``module`` (eval mode), a Conv2d directly followed by
    a BatchNorm2d (or timm's BatchNormAct2d) becomes one Conv2d (and what follows the
    normalisation). Returns the number of pairs folded."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = 0
    for sequential in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        names = list(sequential._modules)
        for first, second in itertools.pairwise(names):
            conv, norm = sequential._modules[first], sequential._modules[second]
            if isinstance(conv, nn.Conv2d) and _foldable(norm):
                batchnorm = cast(nn.modules.batchnorm._BatchNorm, norm)
                sequential._modules[first] = fuse_conv_bn_eval(conv.eval(), batchnorm.eval())
                sequential._modules[second] = _after_folding(norm)
                folded += 1
    return folded
