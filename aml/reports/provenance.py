"""What a measurement was made on: the machine, the libraries and the command, recorded next
to every result file (demo, benchmarks) so that a number can be traced and reproduced."""

import os
import platform
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

import torch


def cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(
    command: Optional[Sequence[str]] = None, device: Optional[Union[str, torch.device]] = None
) -> Dict[str, str]:
    """Machine, CPU kernels, versions, date and command line as strings.

    Args:
        command: the command line (None: this process's).
        device: what the measurement ran on: a CUDA device is recorded as the accelerator,
            any other records none (None, unknown: the machine's first GPU, if it has one).

    Returns:
        The strings, by name.

    Example:
        >>> provenance(["python", "-m", "aml.demo"], device="cpu")["command"]
        'python -m aml.demo'
    """
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores",
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": str(torch.get_num_threads()),
        "kernels": " ".join(
            f"{k}={os.environ[k]}" for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if k in os.environ
        )
        or "default",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": _torchvision(),
        **_accelerator(device),
        **_commit(),
        "command": shlex.join(command if command is not None else _command_line()),  # as a shell reads it
    }


def _accelerator(device: Optional[Union[str, torch.device]]) -> Dict[str, str]:
    """The CUDA device ``device`` (None: the machine's first, if any) with its CUDA and cuDNN
    versions; nothing for another device or a machine without CUDA."""
    used = torch.device("cuda", 0) if device is None else torch.device(device)
    if used.type != "cuda" or not torch.cuda.is_available():
        return {}
    return {
        "accelerator": f"{torch.cuda.get_device_name(used)} (CUDA {torch.version.cuda}, cuDNN "
        f"{torch.backends.cudnn.version()})"
    }


#: the folder that holds the ``aml`` package: a git checkout's top level when aml runs from one
SOURCE_ROOT = Path(__file__).resolve().parents[2]


def _git(arguments: Sequence[str], folder: Path) -> Optional[str]:
    """What ``git <arguments>`` prints in ``folder``, or None."""
    try:
        found = subprocess.run(["git", *arguments], capture_output=True, text=True, timeout=10, cwd=folder)
    except (OSError, subprocess.SubprocessError):
        return None
    return found.stdout.strip() if found.returncode == 0 and found.stdout.strip() else None


def _commit(source_root: Path = SOURCE_ROOT) -> Dict[str, str]:
    """The git commit of aml's tree, ``-dirty`` when it holds uncommitted changes
    (``$AML_COMMIT`` where the tree travelled without .git); nothing when aml is installed
    inside another project's checkout (git would name that project's commit)."""
    if os.environ.get("AML_COMMIT"):
        return {"commit": os.environ["AML_COMMIT"]}
    top = _git(["rev-parse", "--show-toplevel"], source_root)
    if top is None or Path(top).resolve() != source_root.resolve():
        return {}
    commit = _git(["describe", "--always", "--dirty", "--abbrev=7"], source_root)
    return {"commit": commit} if commit else {}


def _torchvision() -> str:
    try:
        import torchvision
    except ImportError:
        return "not installed"
    return torchvision.__version__


def _command_line() -> list:
    """This process's command line as typed: ``python -m aml.demo ...`` for a module run with -m."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:
        module = spec.name[: -len(".__main__")] if spec.name.endswith(".__main__") else spec.name
        return ["python", "-m", module, *sys.argv[1:]]
    return ["python", *sys.argv]
