"""Which device a command runs on."""

import torch

from aml.utils.errors import ConfigError


def resolve_device(device: str, gpu_id: str = "0") -> torch.device:
    """'auto' -> cuda:<first gpu id> when CUDA is available, else cpu; anything else as given.

    Raises:
        ConfigError: a device name torch does not know, or a CUDA device on a machine without CUDA.
    """
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device(f"cuda:{gpu_id.split(',')[0] or 0}")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"--device {device}: not a device; use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    return resolved
