"""Counting what the host waits for, on the CPU: shared by the device-path tests."""

import torch
from torch.utils._python_dispatch import TorchDispatchMode

#: operators whose output's size depends on the values: on CUDA the host waits to learn it
DATA_DEPENDENT = {"nonzero", "nonzero_numpy", "masked_select", "_unique2", "unique_dim", "unique_consecutive",
                  "repeat_interleave"}
#: indexing operators, which wait like ``nonzero`` when a boolean mask is among their indices
INDEXING = {torch.ops.aten.index, torch.ops.aten.index_put, torch.ops.aten.index_put_, torch.ops.aten._index_put_impl_}


def _boolean_index(func, args) -> bool:
    if func.overloadpacket not in INDEXING:
        return False
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or []))


class HostWaits(TorchDispatchMode):
    """Counts what makes the host wait for the device: reads of a tensor's value (``.item()``,
    ``bool(t)``, ``int(t)``) and operators whose output's size depends on the values
    (``t[mask]``, ``nonzero``, ``unique``). On CUDA each one waits for every kernel queued before
    it. ``count`` is their number, ``names`` what they were."""

    def __init__(self):
        super().__init__()
        self.names = []

    @property
    def count(self) -> int:
        return len(self.names)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if func is torch.ops.aten._local_scalar_dense.default or name in DATA_DEPENDENT:
            self.names.append(name)
        elif _boolean_index(func, args):
            self.names.append("index[bool]")
        return func(*args, **(kwargs or {}))
