"""Getting a network by what the user typed: a pretrained name, a checkpoint file, an
off-the-shelf spec ('ARCH-POOL[-reg][-lwhiten][-whiten]') or a teacher name. Every loader
returns a `LoadedNetwork`: the network and where it came from."""

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

from aml.data.download import download_file
from aml.data.paths import data_subdir
from aml.networks.checkpoint import load_network
from aml.networks.fingerprint import network_fingerprint
from aml.networks.pretrained import PRETRAINED, TEACHERS
from aml.networks.retrieval_net import ImageRetrievalNet, build_network
from aml.layers.pooling import POOLINGS
from aml.utils.errors import ConfigError, DataError

log = logging.getLogger(__name__)
OFFTHESHELF_FLAGS = {"reg": "regional", "lwhiten": "local_whitening", "whiten": "whitening"}


@dataclass(eq=False)
class LoadedNetwork:
    """A network and its provenance, which decide where its whitening and descriptors are kept.

    A network read from a checkpoint ``path`` keeps them next to it; else a ``named`` one (a
    published or off-the-shelf network, found again by ``name``) under its name; else it
    lives only in memory and nothing is cached for it.

    Attributes:
        net: the network (eval mode when loaded from a file or a name).
        name: what it goes by in logs, feature files and results (a checkpoint's file name
            without ``.pth...``, a published name, an off-the-shelf spec).
        path: the checkpoint file it was read from, if any.
        named: whether ``name`` finds it again (published or off-the-shelf).

    Examples:
        >>> from aml.networks import LoadedNetwork, build_network
        >>> student = LoadedNetwork.in_memory(build_network("resnet18", pretrained=False), "resnet18-random")
        >>> student.name, student.path, student.named, len(student.fingerprint)
        ('resnet18-random', None, False, 16)
        >>> from aml.networks import load_named_or_file
        >>> student = load_named_or_file("runs/.../model_best.pth.tar")  # doctest: +SKIP
        >>> student.name, student.path, student.fingerprint  # doctest: +SKIP
        ('model_best', PosixPath('runs/.../model_best.pth.tar'), '3f2a...')
    """

    net: ImageRetrievalNet
    name: str
    path: Optional[Path] = None
    named: bool = False

    @functools.cached_property
    def fingerprint(self) -> str:
        """The content hash of the network's weights and meta (computed once: a loaded
        network is not trained further; a network in training gets a new LoadedNetwork)."""
        return network_fingerprint(self.net)

    @classmethod
    def in_memory(cls, net: ImageRetrievalNet, name: str) -> "LoadedNetwork":
        """A network that exists only in memory (a student between two epochs).

        Args:
            net: the network.
            name: what it goes by in logs and results.

        Returns:
            The network without a path, not ``named``: nothing is cached for it.
        """
        return cls(net, name)


def checkpoint_name(path) -> str:
    """The name a checkpoint file goes by (run folders, feature files, stores): its file name
    without ``.pth`` and what follows (``model_best.pth.tar`` -> ``model_best``)."""
    return Path(path).name.split(".pth")[0]


def parse_offtheshelf(spec: str) -> Dict[str, Any]:
    """'resnet101-gem-reg-whiten' -> build_network keyword arguments (ImageNet weights)."""
    parts = spec.split("-")
    if len(parts) < 2:
        raise ConfigError(f"off-the-shelf network {spec!r} must look like ARCH-POOL[-reg][-lwhiten][-whiten]")
    params: Dict[str, Any] = {"architecture": parts[0], "pooling": parts[1], "pretrained": True}
    if parts[1] not in POOLINGS:
        raise ConfigError(f"off-the-shelf network {spec!r}: unknown pooling {parts[1]!r}, choose from {sorted(POOLINGS)}")
    for flag in parts[2:]:
        if flag not in OFFTHESHELF_FLAGS:
            raise ConfigError(f"off-the-shelf network {spec!r}: unknown option {flag!r}, choose from {sorted(OFFTHESHELF_FLAGS)}")
        params[OFFTHESHELF_FLAGS[flag]] = True
    return params


def pretrained_checkpoint(name: str, data_root: Optional[str] = None) -> Path:
    """Download (once) a network of the pretrained list into ``<data_root>/model``."""
    entry = PRETRAINED[name]
    return download_file(entry.url, data_subdir(data_root, "model") / entry.filename, sha256_prefix=entry.sha256)


def load_named_or_file(network_path, teacher: Optional[str] = None,
                       data_root: Optional[str] = None) -> LoadedNetwork:
    """The network a pretrained-list name or a checkpoint path stands for, in eval mode.

    Args:
        network_path (str | Path): a name of the pretrained list (downloaded once) or a
            checkpoint file.
        teacher: the teacher a student checkpoint was trained against, where it does not say.
        data_root: where published weights are kept.

    Returns:
        The network with its provenance: a published one ``named`` by its list name, a
        checkpoint with its ``path`` and its file name without ``.pth...``.

    Raises:
        FileNotFoundError: when ``network_path`` is neither a file nor a name of the list.
        ValueError: when a published file holds a network of another dimension than listed.

    Examples:
        >>> from aml.networks import load_named_or_file
        >>> teacher = load_named_or_file("retrievalSfM120k-vgg16-gem", data_root="data")  # doctest: +SKIP
        >>> student = load_named_or_file("runs/.../model_best.pth.tar", teacher="vgg16")  # doctest: +SKIP
        >>> student.name, student.net.meta["outputdim"]  # doctest: +SKIP
        ('model_best', 512)
    """
    if str(network_path) in PRETRAINED:
        name = str(network_path)
        entry = PRETRAINED[name]
        net = load_network(pretrained_checkpoint(name, data_root), teacher)
        if net.meta["outputdim"] != entry.dim:
            raise DataError(f"{name}: expected a {entry.dim}-d network, the file holds {net.meta['outputdim']}-d")
        return LoadedNetwork(net, name, named=True)
    path = Path(network_path)
    if not path.exists():
        raise FileNotFoundError(
            f"network {str(network_path)!r} is neither a file nor a name of the pretrained list "
            f"(see README or `python test.py --list-pretrained`)"
        )
    return LoadedNetwork(load_network(path, teacher), checkpoint_name(path), path)


def load_test_network(network_path: Optional[str] = None, offtheshelf: Optional[str] = None,
                      teacher: Optional[str] = None, data_root: Optional[str] = None) -> LoadedNetwork:
    """The network under test, from ``--network-path`` or ``--network-offtheshelf``."""
    if bool(network_path) == bool(offtheshelf):
        raise ConfigError("give exactly one of --network-path and --network-offtheshelf")
    if network_path:
        return load_named_or_file(network_path, teacher, data_root)
    net = build_network(**parse_offtheshelf(offtheshelf), data_root=data_root)
    return LoadedNetwork(net.eval(), offtheshelf, named=True)


def load_teacher(teacher: str, data_root: Optional[str] = None) -> LoadedNetwork:
    """'vgg16' | 'resnet101' (the published cirtorch teachers), a pretrained name, or a
    checkpoint path of any network the user trained."""
    return load_named_or_file(TEACHERS.get(teacher, teacher), None, data_root)
