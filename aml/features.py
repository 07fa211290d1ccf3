"""Descriptors of whole data sets: feature files for training, an on-disk cache for
database descriptors at test time, and network fingerprints that key them."""

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch

from aml.data.images import image_transform
from aml.extraction import extract_vectors
from aml.utils.atomic import atomic_write

log = logging.getLogger(__name__)


def network_fingerprint(net: torch.nn.Module) -> str:
    """A content hash of the weights and the meta that shape the descriptors."""
    digest = hashlib.sha1()
    meta = {k: v for k, v in getattr(net, "meta", {}).items() if k != "Lw"}
    digest.update(json.dumps(meta, sort_keys=True, default=str).encode())
    for key, value in sorted(net.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def describe_images(net, images: Sequence[str], image_size: int, scales: Sequence[float] = (1,),
                    msp: float = 1.0, bbxs=None, **options: Any) -> np.ndarray:
    """D x N float32 descriptors of ``images`` with the network's own mean/std transform."""
    transform = image_transform(net.meta["mean"], net.meta["std"])
    return extract_vectors(net, images, image_size, transform, bbxs=bbxs, ms=list(scales), msp=msp, **options).numpy()


def _atomic_save(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda out: np.save(out, array))


def cached_descriptors(net, images: Sequence[str], image_size: int, scales: Sequence[float], msp: float,
                       cache_dir: Optional[Path], tag: str, fingerprint: Optional[str] = None,
                       **options: Any) -> np.ndarray:
    """:func:`describe_images`, cached in ``cache_dir`` under a key of (network content,
    image list, image size, scales, msp), so a database is encoded once per network.
    ``fingerprint`` spares hashing the weights again when the caller already did."""
    if cache_dir is None:
        return describe_images(net, images, image_size, scales, msp, **options)
    fingerprint = fingerprint or network_fingerprint(net)
    key = hashlib.sha1(json.dumps([fingerprint, list(map(str, images)), image_size,
                                   [float(s) for s in scales], round(float(msp), 6)]).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"{tag}_{key}.npy"
    if path.exists():
        vecs = np.load(path)
        if vecs.shape[1] == len(images):
            log.info(">> %s: database descriptors read from cache %s", tag, path)
            return vecs
    vecs = describe_images(net, images, image_size, scales, msp, **options)
    _atomic_save(path, vecs.astype(np.float32))
    return vecs


def write_feature_file(vecs: np.ndarray, images: Sequence[str], path: Path,
                       settings: Optional[Dict[str, Any]] = None) -> Path:
    """Save D x N features as ``path`` (.npy), the image list next to it (_img_list.txt)
    and, when given, how they were made (``path`` + '.json': network, image size, ...)."""
    _atomic_save(path, np.ascontiguousarray(vecs, dtype=np.float32))
    listing = path.with_name(path.name[:-len(".npy")] + "_img_list.txt")
    listing.write_text("".join(f"{image}\n" for image in images))
    if settings is not None:
        Path(str(path) + ".json").write_text(json.dumps(settings, sort_keys=True))
    return path


def feature_file_settings(path: Path) -> Optional[Dict[str, Any]]:
    """The settings written next to a feature file, if any."""
    sidecar = Path(str(path) + ".json")
    return json.loads(sidecar.read_text()) if sidecar.is_file() else None


def feature_file_name(dataset: str, network: str, split: Optional[str] = None) -> str:
    """``<dataset>[-val]_<network>.npy`` (the train split, and test sets, carry no suffix)."""
    suffix = "-val" if split == "val" else ""
    return f"{dataset}{suffix}_{network}.npy"


def load_feature_file(path: Path, expected_columns: int, expected_dim: Optional[int] = None) -> np.ndarray:
    """Read a D x N teacher feature file and check its shape against the data set."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feature file {path} does not exist; create it with extract_features.py")
    try:
        vecs = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"feature file {path} is not a readable .npy array ({err}); extract it again") from err
    if vecs.ndim != 2 or vecs.shape[1] != expected_columns:
        raise ValueError(f"feature file {path} has shape {vecs.shape}, expected D x {expected_columns} "
                         "(one column per image of the split, in db order)")
    if expected_dim is not None and vecs.shape[0] != expected_dim:
        raise ValueError(f"feature file {path} holds {vecs.shape[0]}-d descriptors but the student outputs "
                         f"{expected_dim}-d; use the matching --teacher")
    return vecs.astype(np.float32, copy=False)
