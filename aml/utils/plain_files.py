"""Reading and writing files of plain data (tensors, containers, numbers, numpy arrays).

Checkpoints, trunk weights, whitening and search stores all go through these two functions:
``torch.load(weights_only=True)`` with an allow-list of numpy's own types, so no file can run
code, and the atomic writer, so no interrupted write leaves a half-written file in place.
"""

from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

from aml.utils.atomic import atomic_write
from aml.utils.errors import AmlError
from aml.utils.types import PathLike


class CheckpointError(AmlError, RuntimeError):
    """A saved file (checkpoint, weights, store) is missing, truncated, foreign or does not fit."""


def _numpy_globals() -> list:
    """What numpy arrays and scalars need to unpickle (numpy 1.x names included). The two
    functions are taken from what numpy's own pickling returns, not from a private module."""
    reconstruct = np.zeros(1).__reduce__()[0]
    scalar = np.float64(0).__reduce__()[0]
    dtypes = [np.dtype] + [type(np.dtype(c)) for c in "?bBhHiIlLqQefdgFDG"]
    return [
        reconstruct,
        scalar,
        np.ndarray,
        *dtypes,
        (reconstruct, "numpy.core.multiarray._reconstruct"),
        (scalar, "numpy.core.multiarray.scalar"),
    ]


def _load_safetensors(path: PathLike, map_location: Union[str, torch.device]) -> Any:
    """The tensors of a ``.safetensors`` file (a format that holds nothing but tensors)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=str(map_location))
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist; check the path or download it again") from None
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(
            f"cannot read {path}: it is truncated or not a safetensors file ({err}). Download or copy it again."
        ) from err


def load_plain_file(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Any:
    """``torch.load`` that admits only tensors, containers, numbers and numpy arrays (a
    ``.safetensors`` file is read with safetensors, which holds tensors only).

    Raises:
        CheckpointError: naming ``path``, when it is missing, truncated or holds anything else.
    """
    if Path(path).suffix == ".safetensors":
        return _load_safetensors(path, map_location)
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist; check the path or download it again") from None
    except Exception as err:  # damaged bytes make torch.load raise anything: AssertionError, LookupError, ...
        raise CheckpointError(
            f"cannot read {path}: it is truncated, corrupt or not a PyTorch file made of plain data "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). Download or copy it again."
        ) from err


def save_plain_file(obj: Any, path: PathLike) -> Path:
    """``torch.save`` through the atomic writer: an existing ``path`` is replaced only whole."""
    return atomic_write(path, lambda out: torch.save(obj, out))
