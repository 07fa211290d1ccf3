"""Which device a command runs on."""

from typing import Union

import torch

from aml.utils.bounds import digits
from aml.utils.errors import ConfigError

#: the device types aml runs on (``--device``: auto, cpu, cuda, cuda:N, mps)
DEVICE_TYPES = ("cpu", "cuda", "mps")
CHOICES = "auto, cpu, cuda or cuda:N"


class DeviceError(ConfigError):
    """A device that is not one, or that this machine does not have."""


def parse_device(device: str) -> torch.device:
    """``device`` as a torch.device of `DEVICE_TYPES`.

    Raises:
        DeviceError: naming ``device`` and the choices, for anything else (``foo``, ``cuda:x``, ``meta``).
    """
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise DeviceError(f"{device!r} is not a device; give {CHOICES}") from None
    if parsed.type not in DEVICE_TYPES:
        raise DeviceError(f"{device!r}: aml runs on {', '.join(DEVICE_TYPES)} devices; give {CHOICES}")
    return parsed


def resolve_device(device: str, gpu_id: str = "0") -> torch.device:
    """'auto' -> cuda:<first gpu id> when CUDA is available, else cpu; anything else as given.

    Raises:
        DeviceError: a device that is not one, or that this machine does not have (CUDA
            without CUDA, a GPU number past the last GPU).
    """
    if device == "auto":
        if torch.cuda.is_available():
            first = gpu_id.split(",")[0].strip() or "0"
            if digits(first) is None:
                raise DeviceError(f"--gpu-id {gpu_id!r} is not a GPU number; give 0, 1, ...")
            return _available(torch.device(f"cuda:{first}"), f"--gpu-id {gpu_id}")
        return torch.device("cpu")
    try:
        parsed = parse_device(device)
    except DeviceError as err:
        raise DeviceError(f"--device {err}") from None
    return _available(parsed, f"--device {device}")


def available_device(device: Union[str, torch.device], what: str) -> torch.device:
    """``device`` as a torch.device this machine has.

    Args:
        device: a device (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``).
        what: what gave it, for the message (a flag, an argument).

    Returns:
        The device.

    Raises:
        DeviceError: naming ``what``, for a device that is not one or that this machine
            lacks (CUDA without CUDA, a GPU number past the last GPU).

    Examples:
        >>> from aml.utils.devices import available_device
        >>> available_device("cpu", "device")
        device(type='cpu')
    """
    try:
        parsed = parse_device(str(device))
    except DeviceError:
        raise DeviceError(f"{what}: {device!r} is not a device; give 'cpu', 'cuda', 'cuda:N' or 'mps'") from None
    return _available(parsed, what)


def _available(device: torch.device, flag: str) -> torch.device:
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"{flag}: CUDA is not available on this machine; use {_cpu(flag)}")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(f"{flag}: this machine has {torch.cuda.device_count()} GPU(s), numbered from 0")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"{flag}: MPS (Apple GPUs) is not available on this machine; use {_cpu(flag)}")
    return device


def _cpu(flag: str) -> str:
    """The CPU, as a command's flag or a Python argument: what ``flag`` gave the device."""
    return "--device cpu" if flag.startswith("--") else "'cpu'"


def device_label(device: Union[str, torch.device]) -> str:
    """A device as a log line names it: a GPU with its model, so that a run on the CPU by
    mistake (``--device auto`` without a usable CUDA) is seen at its first line.

    Args:
        device: the device.

    Returns:
        ``"the CPU"``, ``"cuda:0 (NVIDIA H100 80GB HBM3)"``, or the device as torch writes it.

    Examples:
        >>> from aml.utils.devices import device_label
        >>> device_label("cpu")
        'the CPU'
    """
    device = torch.device(device)
    if device.type == "cpu":
        return "the CPU"
    if device.type == "cuda":
        return f"{_numbered(device)} ({torch.cuda.get_device_name(device)})"
    return str(device)


def same_device(a: torch.device, b: torch.device) -> bool:
    """Whether ``a`` and ``b`` are one device, where a device without a number is the current
    one of its kind (``cuda`` is ``cuda:0`` in a process on GPU 0, which ``==`` denies).

    Args:
        a: a device (a tensor's, say: always numbered).
        b: another (a flag's, say: perhaps not numbered).

    Returns:
        True when they are the same device.

    Examples:
        >>> import torch
        >>> from aml.utils.devices import same_device
        >>> mps = torch.device("mps")
        >>> same_device(torch.device("mps:0"), mps), same_device(torch.device("cpu"), mps)
        (True, False)
    """
    if a.type != b.type:
        return False
    return a == b or _numbered(a) == _numbered(b)


def _numbered(device: torch.device) -> torch.device:
    if device.index is not None or device.type == "cpu":
        return device
    return torch.device(device.type, torch.cuda.current_device() if device.type == "cuda" else 0)


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
