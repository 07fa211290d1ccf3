"""Getting a network by what the user typed: a published name, a teacher alias ('vgg16',
'resnet101'), a checkpoint file or an off-the-shelf spec ('ARCH-POOL[-reg][-lwhiten][-whiten]').
What the text stands for is decided once, by `NetworkSpec.parse`, and kept on the
`LoadedNetwork` every loader returns: the network and where it came from."""

import dataclasses
import json
import logging
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch

from aml.data.download import download_file
from aml.data.paths import DataRootLike, data_subdir
from aml.layers.pooling import POOLINGS
from aml.networks.backbones import BACKBONE_FAMILIES, get_backbone
from aml.networks.checkpoint import checkpoint_dimension, load_checkpoint, load_network
from aml.networks.fingerprint import network_fingerprint
from aml.networks.pretrained import PRETRAINED, TEACHERS, published_spelling
from aml.networks.retrieval_net import ImageRetrievalNet, build_network, output_dimension
from aml.utils.errors import ConfigError, DataError, MissingFile

log = logging.getLogger(__name__)
OFFTHESHELF_FLAGS = {"reg": "regional", "lwhiten": "local_whitening", "whiten": "whitening"}


class Source(Enum):
    """Where a network comes from."""

    PUBLISHED = "published"  # a name of the pretrained list (a teacher alias stands for one)
    CHECKPOINT = "checkpoint"  # a checkpoint file
    OFFTHESHELF = "off-the-shelf"  # ARCH-POOL[-reg][-lwhiten][-whiten] with ImageNet weights
    MEMORY = "memory"  # only in memory: a student between two epochs


def teacher_problem(text: str) -> Optional[str]:
    """Why ``text`` names no teacher (neither a published network nor a checkpoint file), or None.

    Args:
        text: a ``--teacher`` as given.

    Returns:
        The flag's one-line refusal, or None when it names one.

    Examples:
        >>> from aml.networks.loading import teacher_problem
        >>> teacher_problem("vgg16") is None, teacher_problem("vgg61")[:28]
        (True, "--teacher 'vgg61' is neither")
    """
    try:
        spec = NetworkSpec.parse(text)
        if spec.source is Source.OFFTHESHELF:  # its model, by name, before any work (a typo: not after the download)
            get_backbone(parse_offtheshelf(text)["architecture"])
    except (ConfigError, ImportError) as err:
        return f"--teacher {text!r}: {err}"
    if spec.path is None or spec.path.is_file():
        return None
    return (
        f"--teacher {text!r} is neither a published network (vgg16, resnet101, a name of "
        "test.py --list-pretrained), a timm model with its released weights (timm:MODEL-POOL, e.g. "
        "timm:vit_small_patch14_dinov2-gem) nor a checkpoint file"
    )


@dataclass(frozen=True)
class NetworkSpec:
    """What the user typed to name a network, told apart once.

    A teacher alias (``vgg16``, ``resnet101``) stands for its published network; a name of the
    pretrained list is published; an off-the-shelf spec is whatever ``--network-offtheshelf``
    gave, and a ``timm:<model>-<pool>`` anywhere (a timm model with its released weights, e.g.
    DINOv2 as a teacher); anything else is a checkpoint file (whether it exists is the
    loader's question).

    Attributes:
        given: the text as the user gave it (recorded in stores, run folder names).
        source: where the network comes from.
        name: what it goes by in logs, feature files, stores and results: a published
            network's list name, a checkpoint's file name without ``.pth...``, an off-the-shelf spec.
        path: the checkpoint file, for a checkpoint.

    Examples:
        >>> from aml.networks.loading import NetworkSpec
        >>> spec = NetworkSpec.parse("vgg16")
        >>> spec.source.value, spec.name, spec.label
        ('published', 'retrievalSfM120k-vgg16-gem', 'vgg16')
        >>> spec = NetworkSpec.parse("runs/x/model_best.pth.tar")
        >>> spec.source.value, spec.name, spec.path
        ('checkpoint', 'model_best', PosixPath('runs/x/model_best.pth.tar'))
        >>> NetworkSpec.parse("resnet101-gem-whiten", offtheshelf=True).named
        True
    """

    given: str
    source: Source
    name: str
    path: Optional[Path] = None

    @classmethod
    def parse(cls, text: Union[str, Path], offtheshelf: bool = False) -> "NetworkSpec":
        """What ``text`` names.

        Args:
            text: a published name, a teacher alias, a checkpoint path, or (``offtheshelf``)
                an off-the-shelf spec.
            offtheshelf: ``text`` came from ``--network-offtheshelf``.

        Returns:
            The spec.

        Raises:
            ConfigError: for an off-the-shelf spec that does not parse (`parse_offtheshelf`).
        """
        if not isinstance(text, (str, Path)):  # str() of a network was read as a path ("File name too long")
            raise ConfigError(
                f"a network is named by a published name or a checkpoint path, got a {type(text).__name__}"
            )
        text = str(text)
        family = text.partition(":")[0] if ":" in text else None
        if offtheshelf:
            parse_offtheshelf(text)
            return cls(text, Source.OFFTHESHELF, text)
        if family in BACKBONE_FAMILIES and not Path(text).exists():  # a timm model as released, e.g. as a teacher
            extra = [flag for flag, option in OFFTHESHELF_FLAGS.items() if option in parse_offtheshelf(text)]
            if extra:  # its whitening layers would be random, other at every load: no teacher
                raise ConfigError(
                    f"{text}: a timm model named as a network is MODEL-POOL ({text.rsplit('-', len(extra))[0]}): "
                    f"the layers of {', '.join('-' + flag for flag in extra)} would have random weights, other ones "
                    "at every load"
                )
            return cls(text, Source.OFFTHESHELF, text)
        published = TEACHERS.get(text, text)
        if published in PRETRAINED:
            return cls(text, Source.PUBLISHED, published)
        spelt = published_spelling(text)
        if spelt is not None and not Path(text).exists():  # VGG16: vgg16, as aml.cli.download reads it
            return cls(spelt, Source.PUBLISHED, TEACHERS.get(spelt, spelt))
        return cls(text, Source.CHECKPOINT, checkpoint_name(text), Path(text))

    @classmethod
    def in_memory(cls, name: str) -> "NetworkSpec":
        """A network that exists only in memory, going by ``name``.

        Args:
            name: what it goes by in logs and results.

        Returns:
            The spec (nothing finds the network again, so nothing is cached for it).
        """
        return cls(name, Source.MEMORY, name)

    @property
    def named(self) -> bool:
        """Whether ``name`` finds the network again (published or off-the-shelf)."""
        return self.source in (Source.PUBLISHED, Source.OFFTHESHELF)

    @property
    def label(self) -> str:
        """How the run folders name it: a published network as the user typed it (the
        original's ``_teach_vgg16``), a checkpoint by its file name."""
        return self.given if self.source is Source.PUBLISHED else self.name

    @property
    def local_file(self) -> Optional[Path]:
        """The checkpoint file when it is on this machine (None for any other network)."""
        return self.path if self.path is not None and self.path.is_file() else None

    def dimension(self) -> Optional[int]:
        """The descriptor dimension, without building the network.

        Returns:
            A published network's listed dimension, an off-the-shelf network's (its trunk's
            width, a student trunk's projection), a checkpoint's ``meta['outputdim']`` (read
            from the file when it is on this machine), else None.
        """
        if self.source is Source.PUBLISHED:
            return PRETRAINED[self.name].dim
        if self.source is Source.OFFTHESHELF:  # as build_network makes it (its whitening, if any, keeps it)
            return output_dimension(parse_offtheshelf(self.given)["architecture"])
        if self.local_file is not None:
            state = load_checkpoint(self.local_file)  # an original file's projection gives its dimension
            return checkpoint_dimension(state["meta"], source=str(self.local_file), weights=state["state_dict"])
        return None


@dataclass(eq=False)
class LoadedNetwork:
    """A network and its provenance, which decide where its whitening and descriptors are kept.

    A network read from a checkpoint ``path`` keeps them next to it; else a ``named`` one (a
    published or off-the-shelf network, found again by ``name``) under its name; else it
    lives only in memory and nothing is cached for it.

    Attributes:
        net: the network (eval mode when loaded from a file or a name).
        spec: what it is and where it came from (`NetworkSpec`).

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
    spec: NetworkSpec
    _hashed: Optional[Tuple[Tuple[Any, ...], str]] = dataclasses.field(default=None, init=False, repr=False)

    @property
    def name(self) -> str:
        """What it goes by in logs, feature files and results (`NetworkSpec.name`)."""
        return self.spec.name

    @property
    def feature_name(self) -> str:
        """What names its feature files and stores: ``name``, with the weights' fingerprint
        appended for a checkpoint (``model_best``, ``model_epochN`` repeat across runs)."""
        return f"{self.name}-{self.fingerprint[:8]}" if self.path is not None else self.name

    @property
    def path(self) -> Optional[Path]:
        """The checkpoint file it was read from, if any."""
        return self.spec.path if self.spec.source is Source.CHECKPOINT else None

    @property
    def named(self) -> bool:
        """Whether ``name`` finds it again (published or off-the-shelf)."""
        return self.spec.named

    @property
    def recorded_teacher(self) -> Optional[str]:
        """The teacher it was trained against, as its training named it: its
        ``meta['teacher']``, else, for a published student, the list's; None: not recorded."""
        recorded = self.net.meta.get("teacher")
        if recorded is None and self.spec.source is Source.PUBLISHED:
            return PRETRAINED[self.spec.name].teacher
        return recorded

    @property
    def fingerprint(self) -> str:
        """The content hash of the network's weights and meta, hashed again only when they
        changed since (`_weights_state`: a network fine-tuned in place, in a notebook, even
        through ``.data``; its caches were keyed by the weights it had when first hashed, and
        served the old descriptors)."""
        state = _weights_state(self.net)
        if self._hashed is None or self._hashed[0] != state:
            self._hashed = (state, network_fingerprint(self.net))
        return self._hashed[1]

    @classmethod
    def in_memory(cls, net: ImageRetrievalNet, name: str) -> "LoadedNetwork":
        """A network that exists only in memory (a student between two epochs).

        Args:
            net: the network.
            name: what it goes by in logs and results.

        Returns:
            The network without a path, not ``named``: nothing is cached for it.
        """
        return cls(net, NetworkSpec.in_memory(name))


def _weights_state(net: torch.nn.Module) -> Tuple[Any, ...]:
    """What changes when a network's weights or meta change: each tensor's identity, memory
    and count of in-place changes (torch's version counter, which an optimizer step and
    ``load_state_dict`` advance), the sum of its values (a change through ``.data``, which
    advances no counter), and the meta."""
    tensors = [*net.parameters(), *net.buffers()]
    meta = json.dumps(getattr(net, "meta", {}), sort_keys=True, default=str)
    return (tuple((id(t), t._version, t.data_ptr()) for t in tensors), _sums(tensors), meta)


def _sums(tensors: List[torch.Tensor]) -> bytes:
    """Each tensor's sum (float64; float32 on MPS, which has no float64), as bytes, so that a
    NaN equals itself, read with one copy to the host per device."""
    by_device: Dict[torch.device, List[torch.Tensor]] = {}
    with torch.no_grad():
        for t in tensors:
            dtype = torch.float32 if t.device.type == "mps" else torch.float64
            by_device.setdefault(t.device, []).append(t.detach().sum(dtype=dtype))
    return b"".join(torch.stack(sums).cpu().numpy().tobytes() for sums in by_device.values())


def check_network(net: Any, what: str = "net") -> None:
    """Refuse what is not a retrieval network (a module with its ``meta``) where one is expected.

    A `LoadedNetwork` (whose ``.net`` is one) or a torchvision model are refused, naming the fix.

    Args:
        net: what was given.
        what: the argument's name, for the message.

    Raises:
        ConfigError: naming what was given and the fix.

    Examples:
        >>> from aml.networks import LoadedNetwork, build_network
        >>> from aml.networks.loading import check_network
        >>> net = build_network("resnet18", pretrained=False)
        >>> check_network(net)
        >>> check_network(LoadedNetwork.in_memory(net, "r18"))
        Traceback (most recent call last):
        ...
        aml.utils.errors.ConfigError: net is a LoadedNetwork: pass its network, net.net
    """
    if isinstance(net, LoadedNetwork):
        raise ConfigError(f"{what} is a LoadedNetwork: pass its network, {what}.net")
    if not isinstance(net, torch.nn.Module) or not isinstance(getattr(net, "meta", None), dict):
        raise ConfigError(
            f"{what} must be a retrieval network with its meta (aml.networks.build_network, "
            f"init_network or load_named_or_file(...).net), got a {type(net).__name__}"
        )


def check_loaded(network: Any, what: str) -> None:
    """Refuse what is not a `LoadedNetwork` where a network with its provenance is expected.

    Args:
        network: what was given.
        what: the argument's name, for the message.

    Raises:
        ConfigError: naming what was given and how to make a `LoadedNetwork` of it.

    Examples:
        >>> from aml.networks import build_network
        >>> from aml.networks.loading import check_loaded
        >>> check_loaded(build_network("resnet18", pretrained=False), "teacher")
        Traceback (most recent call last):
        ...
        aml.utils.errors.ConfigError: teacher must be a LoadedNetwork (a network with its provenance), got a \
ImageRetrievalNet: wrap it, LoadedNetwork.in_memory(net, name)
    """
    if not isinstance(network, LoadedNetwork):
        hint = (
            "wrap it, LoadedNetwork.in_memory(net, name)"
            if isinstance(network, torch.nn.Module)
            else "load it, load_named_or_file(name or path)"
        )
        raise ConfigError(
            f"{what} must be a LoadedNetwork (a network with its provenance), got a {type(network).__name__}: {hint}"
        )


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
        raise ConfigError(
            f"off-the-shelf network {spec!r}: unknown pooling {parts[1]!r}, choose from {sorted(POOLINGS)}"
        )
    for flag in parts[2:]:
        if flag not in OFFTHESHELF_FLAGS:
            raise ConfigError(
                f"off-the-shelf network {spec!r}: unknown option {flag!r}, choose from {sorted(OFFTHESHELF_FLAGS)}"
            )
        params[OFFTHESHELF_FLAGS[flag]] = True
    return params


def pretrained_checkpoint(name: str, data_root: DataRootLike = None, progress: bool = True) -> Path:
    """Download (once) a network of the pretrained list into ``<data_root>/model``; ``progress``: a bar on stderr."""
    entry = PRETRAINED[name]
    path = data_subdir(data_root, "model") / entry.filename
    return download_file(entry.url, path, sha256_prefix=entry.sha256, progress=progress)


def published_whitening_file(name: str, data_root: DataRootLike = None, progress: bool = True) -> Optional[Path]:
    """Download (once) the whitening file a network of the pretrained list is published with.

    Args:
        name: a name of the pretrained list.
        data_root: the data root; the file goes to its ``model/``.
        progress: a progress bar on stderr while it downloads.

    Returns:
        The file, or None for a network published without one.
    """
    url = PRETRAINED[name].whitening_url
    if url is None:
        return None
    return download_file(url, data_subdir(data_root, "model") / url.rsplit("/", 1)[1], progress=progress)


def load_spec(spec: NetworkSpec, teacher: Optional[str] = None, data_root: DataRootLike = None) -> LoadedNetwork:
    """The network a `NetworkSpec` names, in eval mode.

    Args:
        spec: the network as parsed (`NetworkSpec.parse`).
        teacher: the teacher a student checkpoint was trained against, where it does not say.
        data_root: where published weights (and ImageNet's) are kept.

    Returns:
        The network with its provenance.

    Raises:
        FileNotFoundError: for a checkpoint that does not exist (nor is a published name).
        DataError: when a published file holds a network of another dimension than listed.
        ConfigError: for a network only in memory, which no spec can load.

    Examples:
        >>> from aml.networks import NetworkSpec, load_spec
        >>> teacher = load_spec(NetworkSpec.parse("vgg16"), data_root="data")  # doctest: +SKIP
        >>> teacher.name, teacher.spec.label  # doctest: +SKIP
        ('retrievalSfM120k-vgg16-gem', 'vgg16')
    """
    if spec.source is Source.PUBLISHED:
        entry = PRETRAINED[spec.name]
        net = load_network(pretrained_checkpoint(spec.name, data_root), teacher)
        if net.meta["outputdim"] != entry.dim:
            raise DataError(f"{spec.name}: expected a {entry.dim}-d network, the file holds {net.meta['outputdim']}-d")
        return LoadedNetwork(net, spec)
    if spec.source is Source.OFFTHESHELF:
        return LoadedNetwork(build_network(**parse_offtheshelf(spec.given), data_root=data_root).eval(), spec)
    if spec.source is Source.MEMORY:
        raise ConfigError(f"{spec.name} exists only in memory; nothing can load it")
    assert spec.path is not None
    if not spec.path.exists():
        raise MissingFile(
            f"network {spec.given!r} is neither a file nor a name of the pretrained list (see "
            "`python test.py --list-pretrained`, or docs/published.md)"
        )
    return LoadedNetwork(load_network(spec.path, teacher), spec)


def load_named_or_file(
    network_path: Union[str, Path], teacher: Optional[str] = None, data_root: DataRootLike = None
) -> LoadedNetwork:
    """The network a pretrained-list name, a teacher alias or a checkpoint path stands for, in eval mode.

    Args:
        network_path: a name of the pretrained list (downloaded once), a teacher alias
            (``vgg16``, ``resnet101``) or a checkpoint file.
        teacher: the teacher a student checkpoint was trained against, where it does not say.
        data_root: where published weights are kept.

    Returns:
        The network with its provenance: a published one ``named`` by its list name, a
        checkpoint with its ``path`` and its file name without ``.pth...``.

    Raises:
        FileNotFoundError: when ``network_path`` is neither a file nor a name of the list.
        DataError: when a published file holds a network of another dimension than listed.

    Examples:
        >>> from aml.networks import load_named_or_file
        >>> teacher = load_named_or_file("retrievalSfM120k-vgg16-gem", data_root="data")  # doctest: +SKIP
        >>> student = load_named_or_file("runs/.../model_best.pth.tar", teacher="vgg16")  # doctest: +SKIP
        >>> student.name, student.net.meta["outputdim"]  # doctest: +SKIP
        ('model_best', 512)
    """
    return load_spec(NetworkSpec.parse(network_path), teacher, data_root)


def load_test_network(
    network_path: Optional[str] = None,
    offtheshelf: Optional[str] = None,
    teacher: Optional[str] = None,
    data_root: DataRootLike = None,
) -> LoadedNetwork:
    """The network under test, from ``--network-path`` or ``--network-offtheshelf``."""
    if bool(network_path) == bool(offtheshelf):
        raise ConfigError("give exactly one of --network-path and --network-offtheshelf")
    spec = NetworkSpec.parse(offtheshelf, offtheshelf=True) if offtheshelf else NetworkSpec.parse(str(network_path))
    return load_spec(spec, teacher, data_root)


def load_teacher(teacher: str, data_root: DataRootLike = None) -> LoadedNetwork:
    """'vgg16' | 'resnet101' (the published cirtorch teachers), a pretrained name, or a
    checkpoint path of any network the user trained."""
    return load_spec(NetworkSpec.parse(teacher), None, data_root)
