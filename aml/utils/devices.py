"""Which device a command runs on."""

import torch


def resolve_device(device: str, gpu_id: str = "0") -> torch.device:
    """'auto' -> cuda:<first gpu id> when CUDA is available, else cpu; anything else as given.

    Raises:
        ValueError: a CUDA device on a machine without CUDA.
    """
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device(f"cuda:{gpu_id.split(',')[0] or 0}")
        return torch.device("cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    return resolved


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device`` without waiting for it.

    A CPU tensor bound for CUDA is pinned and copied asynchronously: PyTorch's blocking
    copy of pageable memory waits for every kernel queued before it (a host sync).

    Args:
        tensor: the tensor.
        device: where it goes.

    Returns:
        The tensor on ``device`` (itself when it is there already).
    """
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
