"""A network lent to a library call comes back as it was: its parameters and buffers where
they were (device, dtype, memory format), its train/eval mode."""

import contextlib
from typing import Iterator, List, Tuple

import torch
from torch import nn


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` is still held where, and laid out as, ``b`` is."""
    return (a.device, a.dtype, a.data_ptr(), a.stride()) == (b.device, b.dtype, b.data_ptr(), b.stride())


@contextlib.contextmanager
def left_as_it_was(net: nn.Module) -> Iterator[nn.Module]:
    """Run a block that may move ``net``, change its memory format or its mode; undo that after.

    The parameters keep their identity (an optimizer's references stay valid): a block that
    moves them replaces their ``data``, which is put back; buffers replaced by a move are put
    back too. Values a block changes in place are kept (an inference block changes none).

    Args:
        net: the network.

    Returns:
        A context manager that yields ``net``.

    Examples:
        >>> import torch
        >>> from aml.networks import build_network
        >>> from aml.networks.preserved import left_as_it_was
        >>> net = build_network("resnet18", pretrained=False).train()
        >>> with left_as_it_was(net):
        ...     _ = net.eval().to(memory_format=torch.channels_last)
        >>> net.training, net.features[0].weight.is_contiguous()
        (True, True)
    """
    parameters: List[Tuple[nn.Parameter, torch.Tensor]] = [(p, p.data) for p in net.parameters()]
    buffers = [(module, name, buffer) for module in net.modules() for name, buffer in module._buffers.items()]
    modes = [(module, module.training) for module in net.modules()]
    try:
        yield net
    finally:
        for parameter, data in parameters:
            if not _same_tensor(parameter, data):
                parameter.data = data
        for module, name, buffer in buffers:
            module._buffers[name] = buffer
        for module, training in modes:
            module.training = training
