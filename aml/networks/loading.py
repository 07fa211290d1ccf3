"""Getting a network by what the user typed: a pretrained name, a checkpoint file, an
off-the-shelf spec ('ARCH-POOL[-reg][-lwhiten][-whiten]') or a teacher name."""

import logging
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from aml.data.download import download_file
from aml.data.paths import data_subdir
from aml.networks.checkpoint import load_network
from aml.networks.pretrained import PRETRAINED, TEACHERS
from aml.networks.retrieval_net import ImageRetrievalNet, build_network
from aml.layers.pooling import POOLINGS

log = logging.getLogger(__name__)
OFFTHESHELF_FLAGS = {"reg": "regional", "lwhiten": "local_whitening", "whiten": "whitening"}


def checkpoint_name(path) -> str:
    """The name a checkpoint file goes by (run folders, feature files, stores): its file name
    without ``.pth`` and what follows (``model_best.pth.tar`` -> ``model_best``)."""
    return Path(path).name.split(".pth")[0]


def parse_offtheshelf(spec: str) -> Dict[str, Any]:
    """'resnet101-gem-reg-whiten' -> build_network keyword arguments (ImageNet weights)."""
    parts = spec.split("-")
    if len(parts) < 2:
        raise ValueError(f"off-the-shelf network {spec!r} must look like ARCH-POOL[-reg][-lwhiten][-whiten]")
    params: Dict[str, Any] = {"architecture": parts[0], "pooling": parts[1], "pretrained": True}
    if parts[1] not in POOLINGS:
        raise ValueError(f"off-the-shelf network {spec!r}: unknown pooling {parts[1]!r}, choose from {sorted(POOLINGS)}")
    for flag in parts[2:]:
        if flag not in OFFTHESHELF_FLAGS:
            raise ValueError(f"off-the-shelf network {spec!r}: unknown option {flag!r}, choose from {sorted(OFFTHESHELF_FLAGS)}")
        params[OFFTHESHELF_FLAGS[flag]] = True
    return params


def pretrained_checkpoint(name: str, data_root: Optional[str] = None) -> Path:
    """Download (once) a network of the pretrained list into ``<data_root>/model``."""
    entry = PRETRAINED[name]
    return download_file(entry.url, data_subdir(data_root, "model") / entry.filename, sha256_prefix=entry.sha256)


def load_named_or_file(network_path: str, teacher: Optional[str] = None,
                       data_root: Optional[str] = None) -> Tuple[ImageRetrievalNet, str]:
    """A pretrained-list name or a checkpoint path -> (network in eval mode, display name)."""
    if network_path in PRETRAINED:
        entry = PRETRAINED[network_path]
        net = load_network(pretrained_checkpoint(network_path, data_root), teacher)
        if net.meta["outputdim"] != entry.dim:
            raise ValueError(f"{network_path}: expected a {entry.dim}-d network, the file holds "
                             f"{net.meta['outputdim']}-d")
        return net, network_path
    path = Path(network_path)
    if not path.exists():
        raise FileNotFoundError(
            f"network {network_path!r} is neither a file nor a name of the pretrained list "
            f"(see README or `python test.py --list-pretrained`)"
        )
    return load_network(path, teacher), checkpoint_name(path)


def load_test_network(network_path: Optional[str] = None, offtheshelf: Optional[str] = None,
                      teacher: Optional[str] = None, data_root: Optional[str] = None) -> Tuple[ImageRetrievalNet, str]:
    """The network under test, from ``--network-path`` or ``--network-offtheshelf``."""
    if bool(network_path) == bool(offtheshelf):
        raise ValueError("give exactly one of --network-path and --network-offtheshelf")
    if network_path:
        return load_named_or_file(network_path, teacher, data_root)
    net = build_network(**parse_offtheshelf(offtheshelf), data_root=data_root)
    return net.eval(), offtheshelf


def load_teacher(teacher: str, data_root: Optional[str] = None) -> Tuple[ImageRetrievalNet, str]:
    """'vgg16' | 'resnet101' (the published cirtorch teachers), a pretrained name, or a
    checkpoint path of any network the user trained."""
    return load_named_or_file(TEACHERS.get(teacher, teacher), None, data_root)
