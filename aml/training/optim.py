"""Optimizer set-up: parameter groups (GeM p at 10x lr without weight decay, optionally the
student's projection at its own lr), Adam/SGD, and the exponential learning-rate decay
exp(-0.01) per epoch."""

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Dict, FrozenSet, List, Mapping, Optional

import torch

from aml.layers.pooling import POOLING_LR_MULTIPLIER, Rpool
from aml.networks.retrieval_net import ImageRetrievalNet
from aml.utils.errors import lookup

LR_DECAY = math.exp(-0.01)


def parameter_groups(
    net: ImageRetrievalNet, lr: float, weight_decay: float, projection_lr_mult: float = 1.0
) -> List[Dict[str, Any]]:
    """Trunk, local whitening, pooling (x10 lr for GeM, x100 for GeMmp, no decay) and whitening.

    With ``projection_lr_mult`` != 1 the student's 1x1 projection gets its own group at
    ``lr * projection_lr_mult`` (placed right after the trunk). Its inputs are non-negative
    (ReLU/ReLU6 outputs), so Adam moves all weights of an output channel the same way and the
    channel's response by about lr x fan-in per step: at from-scratch learning rates a step
    can push a channel below zero for every image, and its ReLU never recovers. With the
    default of 1 the groups are the original's (its optimizer states load unchanged).
    """
    projection = net.projection() if projection_lr_mult != 1.0 else None
    skip = {id(p) for p in projection.parameters()} if projection is not None else set()
    groups: List[Dict[str, Any]] = [{"params": [p for p in net.features.parameters() if id(p) not in skip]}]
    if projection is not None:
        groups.append({"params": list(projection.parameters()), "lr": lr * projection_lr_mult})
    if net.lwhiten is not None:
        groups.append({"params": list(net.lwhiten.parameters())})
    pooling = net.meta["pooling"]
    regional = net.pool if isinstance(net.pool, Rpool) else None  # meta['regional']
    pool = regional.rpool if regional is not None else net.pool
    if list(pool.parameters()):
        groups.append(
            {"params": list(pool.parameters()), "lr": lr * POOLING_LR_MULTIPLIER.get(pooling, 1.0), "weight_decay": 0}
        )
    if regional is not None and regional.whiten is not None:
        groups.append({"params": list(regional.whiten.parameters())})
    if net.whiten is not None:
        groups.append({"params": list(net.whiten.parameters())})
    return groups


# The same update as the original's, in one fused kernel per step where the parameters allow
# it (CPU and CUDA float tensors): faster on the CPU (benchmarks/optimizer.py, docs/speed.md);
# Adam's result differs from the loop over tensors by rounding, SGD's not at all.
FUSED_DEVICES = ("cpu", "cuda")


#: settings every parameter group holds besides its optimizer's own (``initial_lr``: aml's and the original's)
GROUP_FIELDS = frozenset({"params", "initial_lr"})


@dataclass(frozen=True)
class OptimizerKind:
    """One ``--optimizer``: how to build it, and how its saved state shows it.

    Attributes:
        build: ``(groups, lr, momentum, weight_decay, fused) -> torch.optim.Optimizer``.
        signature: the settings its parameter groups held in torch 1.0 (the original's), which
            every torch since saves; a newer torch adds others (``foreach``, ``fused``, ...).
        foreign: settings whose value marks another optimizer of the same settings (AdamW is
            Adam with ``decoupled_weight_decay=True`` since torch 2.6).
    """

    build: Callable[[List[Dict[str, Any]], float, float, float, Optional[bool]], torch.optim.Optimizer]
    signature: FrozenSet[str]
    foreign: Mapping[str, Any] = field(default_factory=dict)

    @cached_property
    def settings(self) -> FrozenSet[str]:
        """The settings this torch's optimizer of this kind holds in a parameter group."""
        probe = self.build([{"params": [torch.zeros(1, requires_grad=True)]}], 1.0, 0.0, 0.0, None)
        return frozenset(probe.param_groups[0])

    def holds(self, group: Mapping[str, Any]) -> bool:
        """Whether a parameter group (live or saved) is one of this kind's: its signature's
        settings, and none but the settings this torch's kind has.

        Args:
            group: a parameter group, e.g. ``optimizer.param_groups[0]`` or a saved state's.

        Returns:
            True for this kind's groups of torch 1.0 on (RMSprop's, which holds ``momentum``
            too, or NAdam's and AdamW's, which hold ``betas``, are not SGD's or Adam's).
        """
        if any(group.get(name) == value for name, value in self.foreign.items()):
            return False
        return self.signature <= set(group) <= self.settings | GROUP_FIELDS


OPTIMIZERS: Dict[str, OptimizerKind] = {
    "adam": OptimizerKind(
        lambda groups, lr, momentum, wd, fused: torch.optim.Adam(groups, lr, weight_decay=wd, fused=fused),
        frozenset({"lr", "betas", "eps", "weight_decay", "amsgrad"}),
        {"decoupled_weight_decay": True},
    ),
    "sgd": OptimizerKind(
        lambda groups, lr, momentum, wd, fused: torch.optim.SGD(
            groups, lr, momentum=momentum, weight_decay=wd, fused=fused
        ),
        frozenset({"lr", "momentum", "dampening", "weight_decay", "nesterov"}),
    ),
}


def optimizer_name(group: Mapping[str, Any]) -> Optional[str]:
    """The ``--optimizer`` whose settings a parameter group (live or saved) holds; None: none of them.

    Args:
        group: a parameter group, e.g. ``optimizer.param_groups[0]`` or a saved state's.

    Returns:
        A name of `OPTIMIZERS`, or None (another optimizer's group, or a newer torch's).

    Examples:
        >>> from aml.training.optim import optimizer_name
        >>> optimizer_name({"lr": 0.1, "momentum": 0.9, "dampening": 0, "weight_decay": 0, "nesterov": False})
        'sgd'
        >>> optimizer_name({"lr": 0.1, "momentum": 0.9, "alpha": 0.99, "eps": 1e-8, "centered": False}) is None
        True
    """
    return next((name for name, kind in OPTIMIZERS.items() if kind.holds(group)), None)


def can_fuse(groups: List[Dict]) -> bool:
    """Whether every parameter is a floating-point tensor on a device with fused optimizer kernels."""
    return all(p.device.type in FUSED_DEVICES and p.is_floating_point() for g in groups for p in g["params"])


def build_optimizer(
    net: ImageRetrievalNet, name: str, lr: float, momentum: float, weight_decay: float, projection_lr_mult: float = 1.0
) -> torch.optim.Optimizer:
    """The optimizer of ``--optimizer`` over `parameter_groups`; every group records
    its ``initial_lr`` (as the original's checkpoints do)."""
    groups = parameter_groups(net, lr, weight_decay, projection_lr_mult)
    kind = lookup(OPTIMIZERS, name, "optimizer")
    optimizer = kind.build(groups, lr, momentum, weight_decay, can_fuse(groups) or None)
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    return optimizer


def set_epoch_lr(optimizer: torch.optim.Optimizer, epoch: int) -> None:
    """lr of 0-based ``epoch`` = initial_lr * exp(-0.01 (epoch + 1)): the original stepped
    its ExponentialLR once before every epoch."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * LR_DECAY ** (epoch + 1)
