"""Counting what the host waits for, on the CPU: shared by the device-path tests."""

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class ScalarReads(TorchDispatchMode):
    """Counts reads of a tensor's value by the host (``.item()``, ``bool(t)``, ``int(t)``): on
    CUDA each one waits for every kernel queued before it."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))
