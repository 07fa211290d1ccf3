"""An inference copy of a retrieval network: BatchNorm folded into the convolutions before it.

In eval mode a BatchNorm after a convolution is an affine map per channel, so it can be
multiplied into the convolution's weights and bias: the same descriptors up to float
rounding (~1e-8), one memory pass fewer per layer. The trunk is traced with torch.fx,
which finds every convolution followed by a BatchNorm (timm's BatchNormAct2d and its
"same"-padded Conv2dSame traced as modules, so that EfficientNet's and MobileNetV3's fold
too); a trunk that does not trace (control flow on the input) gets the pairs that sit next
to each other in a Sequential.
"""

import copy
import itertools
import logging
from collections import Counter
from typing import TypeGuard, TypeVar, cast

import torch
import torch.fx
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
    copy keeps the trunk as it is; a module without a ``features`` trunk is returned itself.
    The network is copied once and its convolutions folded in place (torch's fusion helpers copy
    each module again: on a GPU, Python's time is most of the fold's)."""
    features = getattr(net, "features", None)
    if not isinstance(features, nn.Module) or not has_batchnorm(features):
        return net
    folded = copy.deepcopy(net).eval()  # the caller's network keeps every module's mode
    features = cast(nn.Sequential, folded.features)
    trunk_end = getattr(folded, "trunk_end", None)
    end = trunk_end() if callable(trunk_end) else len(features)
    trunk: nn.Module = nn.Sequential(*list(features)[:end])
    tail = list(features)[end:]
    try:
        traced = torch.fx.GraphModule(trunk, _NormActLeaves().trace(trunk))
    except Exception as err:  # any tracing failure: fold the pairs that need no tracing
        log.debug(">> trunk not traced (%s: %s); folding Sequential pairs", type(err).__name__, err)
        fold_sequential_pairs(trunk)
    else:
        fold_traced(traced)
        trunk = traced
    folded.features = type(features)(trunk, *tail)  # the projection (run in float32) as it was
    return folded.eval()


def _with_activation(norm: nn.Module) -> bool:
    """Whether ``norm`` is timm's BatchNormAct2d: a BatchNorm2d followed by its own dropout and
    activation."""
    return (
        isinstance(norm, nn.BatchNorm2d)
        and isinstance(getattr(norm, "act", None), nn.Module)
        and isinstance(getattr(norm, "drop", None), nn.Module)
    )


def _same_padding(conv: nn.Module) -> bool:
    """Whether ``conv`` is timm's Conv2dSame: TensorFlow's "same" padding of its input, then
    the plain convolution (whose output a BatchNorm can be folded into, as a Conv2d's)."""
    return (
        isinstance(conv, nn.Conv2d)
        and type(conv).__name__ == "Conv2dSame"
        and type(conv).__module__.startswith("timm.")
    )


def _plain_convolution(conv: nn.Module) -> TypeGuard[nn.Conv2d]:
    """Whether a BatchNorm after ``conv`` folds into its weights: a Conv2d that computes with
    them as they are (not a subclass that transforms them at each call, such as timm's
    weight-standardised StdConv2d, which would undo the folded scale), or timm's Conv2dSame."""
    return type(conv) is nn.Conv2d or _same_padding(conv)


class _NormActLeaves(torch.fx.Tracer):
    """torch.fx's tracer, which keeps timm's BatchNormAct2d and Conv2dSame module calls: it
    would trace into them, leaving a functional batch norm no convolution can take in, and
    the padding's arithmetic on the input's shape, which stops tracing (EfficientNet-B3)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return _with_activation(m) or _same_padding(m) or super().is_leaf_module(m, module_qualified_name)


def _after_folding(norm: nn.Module) -> nn.Module:
    """What is left of a BatchNorm once folded: nothing, or timm's BatchNormAct2d's dropout
    and activation (applied after the normalisation, in that order)."""
    if type(norm) is nn.BatchNorm2d:
        return nn.Identity()
    return nn.Sequential(cast(nn.Module, norm.drop), cast(nn.Module, norm.act))


def _foldable(norm: nn.Module) -> bool:
    plain = type(norm) is nn.BatchNorm2d
    return bool((plain or _with_activation(norm)) and norm.track_running_stats and norm.running_mean is not None)


def _fold_into(conv: nn.Conv2d, norm: nn.Module) -> None:
    """In place: ``conv`` becomes itself followed by the BatchNorm ``norm`` (in eval mode)."""
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    batchnorm = cast(nn.modules.batchnorm._BatchNorm, norm)
    mean, var = cast(torch.Tensor, batchnorm.running_mean), cast(torch.Tensor, batchnorm.running_var)
    conv.weight, conv.bias = fuse_conv_bn_weights(
        conv.weight, conv.bias, mean, var, batchnorm.eps, batchnorm.weight, batchnorm.bias
    )


def fold_traced(traced: "torch.fx.GraphModule") -> int:
    """In place: in a traced trunk, every plain Conv2d (called once) whose output only a BatchNorm2d
    reads takes that BatchNorm in, and the BatchNorm leaves the graph (timm's BatchNormAct2d,
    traced as a module by `_NormActLeaves`, leaves its dropout and activation in its place).
    The modules are those of the module traced (torch.fx shares them): trace a copy. Returns
    the number of pairs folded."""
    modules = dict(traced.named_modules())
    calls = Counter(node.target for node in traced.graph.nodes if node.op == "call_module")
    folded = 0
    for node in list(traced.graph.nodes):
        source = node.args[0] if node.op == "call_module" and node.args else None
        if not (isinstance(source, torch.fx.Node) and source.op == "call_module" and len(source.users) == 1):
            continue
        if calls[source.target] > 1:  # a shared convolution is folded for every call or none
            continue
        conv, norm = modules[cast(str, source.target)], modules[cast(str, node.target)]
        if not _plain_convolution(conv) or not _foldable(norm) or calls[node.target] > 1:
            continue
        _fold_into(conv, norm)
        if type(norm) is nn.BatchNorm2d:
            node.replace_all_uses_with(source)
            traced.graph.erase_node(node)
        else:  # the call stays, to what followed the normalisation
            traced.add_submodule(cast(str, node.target), _after_folding(norm))
        folded += 1
    traced.delete_all_unused_submodules()  # the folded BatchNorms
    traced.recompile()
    return folded


def fold_sequential_pairs(module: nn.Module) -> int:
    """In place: in every Sequential of ``module`` (eval mode), a plain Conv2d directly followed
    by a BatchNorm2d (or timm's BatchNormAct2d) becomes one Conv2d (and what follows the
    normalisation); a convolution used in more than one place is left as it is. Returns the
    number of pairs folded."""
    uses = Counter(id(m) for _, m in module.named_modules(remove_duplicate=False))
    folded = 0
    for sequential in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        names = list(sequential._modules)
        for first, second in itertools.pairwise(names):
            conv, norm = sequential._modules[first], sequential._modules[second]
            if _plain_convolution(conv) and uses[id(conv)] == 1 and _foldable(norm):  # a shared one: as it is
                _fold_into(conv, norm)
                sequential._modules[second] = _after_folding(norm)
                folded += 1
    return folded
