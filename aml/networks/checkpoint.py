"""Checkpoints in the original format, read safely and written atomically.

A checkpoint is a dict ``{epoch, meta, state_dict, min_loss, optimizer}``; ``meta`` rebuilds
the network (architecture, pooling, local_whitening, regional, whitening, mean, std,
outputdim, optionally ``Lw`` = {set: {'ss': {'m','P'}, 'ms': {'m','P'}}} with numpy arrays).
"""

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import torch

from aml.networks.backbones import get_backbone
from aml.utils.atomic import atomic_write
from aml.networks.pretrained import TEACHER_DIMS
from aml.networks.retrieval_net import KEPT_META_KEYS, ImageRetrievalNet, build_network

PathLike = Union[str, Path]


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, foreign or does not fit the network."""


def _numpy_globals() -> list:
    """What numpy arrays and scalars need to unpickle (numpy 1.x names included). The two
    functions are taken from what numpy's own pickling returns, not from a private module."""
    reconstruct = np.zeros(1).__reduce__()[0]
    scalar = np.float64(0).__reduce__()[0]
    dtypes = [np.dtype] + [type(np.dtype(c)) for c in "?bBhHiIlLqQefdgFDG"]
    return [reconstruct, scalar, np.ndarray, *dtypes,
            (reconstruct, "numpy.core.multiarray._reconstruct"), (scalar, "numpy.core.multiarray.scalar")]


def save_checkpoint(state: Any, path: PathLike) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file in the same folder, fsync,
    rename), so that an interrupted write never corrupts an existing checkpoint."""
    return atomic_write(path, lambda out: torch.save(state, out))


def load_plain_file(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Any:
    """``torch.load`` that admits only tensors, containers, numbers and numpy arrays."""
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist; check the path or download it again") from None
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, OSError, zipfile.BadZipFile) as err:
        raise CheckpointError(
            f"cannot read {path}: it is truncated, corrupt or not a PyTorch file made of plain data "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). Download or copy it again."
        ) from err


def save_plain_file(obj: Any, path: PathLike) -> Path:
    """Atomic ``torch.save`` (the same writer as checkpoints)."""
    return save_checkpoint(obj, path)


def load_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """Read a checkpoint without executing code: only tensors, containers, numbers and
    numpy arrays are admitted. Raises :class:`CheckpointError` naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path or download it again")
    state = load_plain_file(path, map_location)
    if not isinstance(state, dict) or "state_dict" not in state or "meta" not in state:
        found = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{path} is not an aml/cirtorch checkpoint: expected a dict with 'meta' and 'state_dict', found {found}"
        )
    return state


def checkpoint_state(net: ImageRetrievalNet, epoch: int, min_loss: float,
                     optimizer: Optional[torch.optim.Optimizer] = None) -> Dict[str, Any]:
    """The dict the training loop saves (the original layout)."""
    return {
        "epoch": epoch,
        "meta": dict(net.meta),
        "state_dict": net.state_dict(),
        "min_loss": float(min_loss),
        "optimizer": optimizer.state_dict() if optimizer is not None else {},
    }


_CHILD = re.compile(r"^features\.(\d+)\.(.*)$")


def remap_legacy_keys(arch: str, state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename trunk children of checkpoints made with an older timm layout (efficientnet_b3
    of 2020: act1/act2 were children, so later indices are shifted)."""
    mapping = get_backbone(arch).legacy_children
    if not mapping or not any(k.startswith(f"features.{max(mapping)}.") for k in state_dict):
        return state_dict
    renamed = {}
    for key, value in state_dict.items():
        match = _CHILD.match(key)
        if match and int(match.group(1)) in mapping:
            key = f"features.{mapping[int(match.group(1))]}.{match.group(2)}"
        renamed[key] = value
    return renamed


def network_from_checkpoint(state: Dict[str, Any], teacher: Optional[str] = None,
                            source: str = "checkpoint") -> ImageRetrievalNet:
    """Rebuild the network that ``state['meta']`` describes and load its weights strictly.

    The dimension comes from ``meta['outputdim']`` (``teacher`` is the fallback for files
    without it); ``meta['Lw']`` is kept in ``net.meta``.
    """
    meta = state["meta"]
    missing = [k for k in ("architecture", "pooling", "mean", "std") if k not in meta]
    if missing:
        raise CheckpointError(f"{source}: meta lacks {missing}; not an aml/cirtorch checkpoint")
    arch = meta["architecture"]
    dim = meta.get("outputdim") or TEACHER_DIMS.get(teacher or "vgg16")
    net = build_network(
        arch, meta["pooling"], local_whitening=meta.get("local_whitening", False),
        regional=meta.get("regional", False), whitening=meta.get("whitening", False),
        mean=meta["mean"], std=meta["std"], pretrained=False, teacher_dim=dim,
    )
    weights = remap_legacy_keys(arch, state["state_dict"])
    try:
        net.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{source}: weights do not fit a {arch} network of dimension {dim}: {err}") from err
    for key in KEPT_META_KEYS:
        if key in meta:
            net.meta[key] = meta[key]
    return net


def load_trunk_weights(net: ImageRetrievalNet, path: PathLike) -> ImageRetrievalNet:
    """Load a trunk's state dict (keys of ``nn.Sequential(*build_trunk(arch))``, as written by
    :mod:`aml.training.pretraining`) into ``net.features`` and name the file in
    ``meta['trunk_weights']``; the student's 1x1 projection, which follows the trunk, keeps its
    initialisation. A file that does not fit is refused by name."""
    state = load_plain_file(path)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a trunk state dict (a mapping of names to tensors)")
    trunk = len(net.features) - (net.projection() is not None) * 2
    try:
        missing, unexpected = net.features.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit the {net.meta['architecture']} trunk: "
                              f"{str(err).splitlines()[-1].strip()}") from err
    missing = [key for key in missing if int(key.split(".", 1)[0]) < trunk]
    if missing or unexpected:
        raise CheckpointError(f"{path} is not a {net.meta['architecture']} trunk: {len(missing)} of its weights "
                              f"missing (e.g. {missing[:2]}), {len(unexpected)} unknown (e.g. {unexpected[:2]})")
    net.meta["trunk_weights"] = Path(path).name
    return net


def load_network(path: PathLike, teacher: Optional[str] = None) -> ImageRetrievalNet:
    """Read a checkpoint file and rebuild its network (CPU, eval mode)."""
    net = network_from_checkpoint(load_checkpoint(path), teacher, source=str(path))
    return net.eval()
