"""Checkpoints in the original format, read safely and written atomically.

A checkpoint is a dict ``{epoch, meta, state_dict, min_loss, optimizer}``; ``meta`` rebuilds
the network (architecture, pooling, local_whitening, regional, whitening, mean, std,
outputdim, optionally ``Lw`` = {set: {'ss': {'m','P'}, 'ms': {'m','P'}}} with numpy arrays).
"""

import dataclasses
import logging
import numbers
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, TypedDict, Union, cast

import torch
from torch import nn

from aml.networks.backbones import get_backbone, library_model, load_weights
from aml.networks.inference import ModuleT
from aml.networks.retrieval_net import KEPT_META_KEYS, ImageRetrievalNet, build_network, output_dimension
from aml.utils.bounds import Bound
from aml.utils.errors import named_few
from aml.utils.plain_files import CheckpointError, PathLike, is_state_dict, load_plain_file, save_plain_file
from aml.utils.seeding import global_seed

log = logging.getLogger(__name__)

__all__ = [
    "CheckpointError",
    "load_plain_file",
    "save_plain_file",
    "save_checkpoint",
    "load_checkpoint",
    "checkpoint_state",
    "RunRecord",
    "network_from_checkpoint",
    "checkpoint_dimension",
    "load_trunk_weights",
    "load_network",
]


class _Weights(TypedDict):
    meta: Dict[str, Any]
    state_dict: Dict[str, torch.Tensor]


class Checkpoint(_Weights, total=False):
    """A checkpoint as the original writes it: ``meta`` (what rebuilds the network: the
    original's open dict of architecture, pooling, mean, std, outputdim, ...) and
    ``state_dict`` (the weights), and from a training run ``epoch`` (epochs done), ``min_loss``
    (the best loss so far), ``optimizer`` (torch's optimizer state) and, since aml records them,
    the fields of a `RunRecord`: ``min_loss_of``, ``loss_margin`` and ``pixels``."""

    epoch: int
    min_loss: float
    optimizer: Dict[str, Any]
    min_loss_of: str
    loss_margin: float
    pixels: str


@dataclass(frozen=True)
class RunRecord:
    """What a training checkpoint records of its run beside the network, checked on --resume;
    kept out of ``meta``, which every release's `init_network` reads (an older one refuses a
    key it does not know).

    Attributes:
        min_loss_of: the kind of loss ``min_loss`` is, "validation" or "training" (with
            ``--no-val``); None: not recorded.
        loss_margin: the ``--loss-margin`` trained with (the run folder's name rounds it to two
            decimals); None: not recorded.
        pixels: how mining (and the teacher's descriptors) decoded and encoded images, the
            `aml.descriptors.ExtractionConfig.pixel_path` (``"pil-fp32"`` by default on the CPU;
            it follows ``--decode``, and on CUDA ``--no-amp`` and ``--amp-dtype``); None: not
            recorded.

    Examples:
        >>> from aml.networks import build_network
        >>> net = build_network("resnet18", pretrained=False)
        >>> state = checkpoint_state(net, 1, 0.5, run=RunRecord("training", 0.7))
        >>> state["min_loss_of"], state["loss_margin"], "loss_margin" in state["meta"]
        ('training', 0.7, False)
    """

    min_loss_of: Optional[str] = None
    loss_margin: Optional[float] = None
    pixels: Optional[str] = None

    @classmethod
    def of(cls, state: Mapping[str, Any]) -> "RunRecord":
        """The record a loaded checkpoint holds (aml from e54d8df to 548ef34 wrote the margin into
        ``meta``; earlier ones wrote neither)."""
        margin = state.get("loss_margin", state.get("meta", {}).get("loss_margin"))
        return cls(state.get("min_loss_of"), margin, state.get("pixels"))

    @classmethod
    def given(cls, run: Union["RunRecord", str], min_loss_of: Optional[str] = None) -> "RunRecord":
        """A record as a caller gives it: a string, or ``min_loss_of``, is the kind of best loss
        alone (the spelling of `checkpoint_state`'s and `aml.training.resume.resume_run`'s
        parameter before it recorded more)."""
        record = cls(run) if isinstance(run, str) else run
        return dataclasses.replace(record, min_loss_of=min_loss_of) if min_loss_of is not None else record


#: a checkpoint written outside a training run (a demo's network, a test's)
NOT_RECORDED = RunRecord()


def save_checkpoint(state: Any, path: PathLike) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file in the same folder, fsync,
    rename), so that an interrupted write never corrupts an existing checkpoint."""
    return save_plain_file(state, path)


def load_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Checkpoint:
    """Read a checkpoint without executing code: only tensors, containers, numbers and
    numpy arrays are admitted. Raises `CheckpointError` naming the file otherwise."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder, not a checkpoint file; give the .pth(.tar) file in it")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path or download it again")
    state = load_plain_file(path, map_location)
    if (
        not isinstance(state, dict)
        or not isinstance(state.get("state_dict"), dict)
        or not isinstance(state.get("meta"), dict)
    ):
        if is_state_dict(state):
            raise CheckpointError(
                f"{path} is a plain state dict of {len(state)} tensors (a library's weights, e.g. torchvision's), not "
                "an aml/cirtorch checkpoint with 'meta' and 'state_dict'; to train from it, give it as --trunk-weights"
            )
        found = named_few(state) if isinstance(state, dict) else ""
        raise CheckpointError(
            f"{path} is not an aml/cirtorch checkpoint: expected a dict with 'meta' and 'state_dict', found "
            f"{found or type(state).__name__}"
        )
    odd = next(
        (
            (key, value)
            for key, value in state["state_dict"].items()
            if not isinstance(key, str) or not isinstance(value, torch.Tensor) or value.layout is not torch.strided
        ),
        None,
    )
    if odd is not None:
        key, value = odd
        if not isinstance(key, str):
            what = f"its key is {type(key).__name__} {key!r}, not a string"
        elif isinstance(value, torch.Tensor):
            what = "it holds a sparse tensor, not a dense one"
        else:
            what = f"it holds a {type(value).__name__}, not a tensor"
        raise CheckpointError(
            f"{path}: a state_dict entry ({what}) is not a checkpoint's: the file is damaged or edited; "
            "use another copy"
        )
    return cast(Checkpoint, state)  # its meta and state_dict checked


def checkpoint_state(
    net: ImageRetrievalNet,
    epoch: int,
    min_loss: float,
    optimizer: Optional[torch.optim.Optimizer] = None,
    run: Union[RunRecord, str] = NOT_RECORDED,
    *,
    min_loss_of: Optional[str] = None,
) -> Checkpoint:
    """The dict the training loop saves (the original layout), plus the fields of ``run`` that
    are given, at the top level beside ``min_loss`` (a string, or ``min_loss_of``: the kind of
    best loss alone, as this parameter was before it recorded more)."""
    run = RunRecord.given(run, min_loss_of)
    state: Checkpoint = {
        "epoch": epoch,
        "meta": dict(net.meta),
        "state_dict": net.state_dict(),
        "min_loss": float(min_loss),
        "optimizer": optimizer.state_dict() if optimizer is not None else {},
    }
    if run.min_loss_of is not None:
        state["min_loss_of"] = run.min_loss_of
    if run.loss_margin is not None:
        state["loss_margin"] = float(run.loss_margin)
    if run.pixels is not None:
        state["pixels"] = run.pixels
    return state


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


MAX_OUTPUT_DIM = 65536  # the published networks output 512 or 2048; a larger value would allocate gigabytes
OUTPUT_DIM = Bound(int, f"a descriptor dimension (1 to {MAX_OUTPUT_DIM})", lambda v: 1 <= v <= MAX_OUTPUT_DIM)


_FLAGS = ("local_whitening", "regional", "whitening")


def _check_meta_types(meta: Dict[str, Any], source: str) -> None:
    """Refuse a ``meta`` whose fields are of other types than a checkpoint's (a damaged or
    edited file): names for the architecture and pooling, flags, three numbers of mean/std."""
    for key in ("architecture", "pooling"):
        if not isinstance(meta[key], str):
            raise CheckpointError(
                f"{source}: meta['{key}'] is {type(meta[key]).__name__} {meta[key]!r:.40}, not a "
                "name; the file is damaged or not a retrieval checkpoint"
            )
    for key in _FLAGS:
        if key in meta and not (isinstance(meta[key], (bool, int)) and meta[key] in (0, 1)):
            raise CheckpointError(
                f"{source}: meta['{key}'] is {type(meta[key]).__name__} {meta[key]!r:.40}, not "
                "True or False; the file is damaged"
            )
    if meta.get("teacher") is not None and not isinstance(meta["teacher"], str):
        raise CheckpointError(
            f"{source}: meta['teacher'] is {type(meta['teacher']).__name__} {meta['teacher']!r:.40}, not the "
            "name or path of a network; the file is damaged"
        )
    if meta.get("teacher_fingerprint") is not None and not isinstance(meta["teacher_fingerprint"], str):
        raise CheckpointError(
            f"{source}: meta['teacher_fingerprint'] is {type(meta['teacher_fingerprint']).__name__}, not a "
            "fingerprint; the file is damaged"
        )
    for key in ("mean", "std"):
        values = meta[key]
        if not (
            isinstance(values, (list, tuple))
            and len(values) == 3
            and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values)
        ):
            raise CheckpointError(
                f"{source}: meta['{key}'] is {type(values).__name__} {values!r:.60}, not three "
                "numbers (one per colour channel); the file is damaged"
            )


#: the range of each of a checkpoint's normalisation values (pixels are in [0, 1]; every timm
#: model's lie in it): a zero std divides by zero, a negative one inverts the image
PIXEL_NORMALISATION = {
    "mean": Bound(float, "in [0, 1] (pixels are in [0, 1])", lambda v: 0 <= v <= 1),
    "std": Bound(float, "in (0, 1]", lambda v: 0 < v <= 1),
}


def non_finite_weights(state: Mapping[str, torch.Tensor]) -> List[str]:
    """The names of the floating-point tensors of ``state`` that hold a NaN or an infinity.

    One read by the host for all of them (two when one is bad): on CUDA each read waits for
    the queued kernels, and a network has hundreds of tensors. Each tensor's values times 0,
    summed, are NaN where one is NaN or infinite, else 0 (no sum of zeros overflows): 6 times
    faster on the CPU than ``isfinite(value).all()``, which every checkpoint read and written
    pays, and alike on every device.
    """
    floats = {name: value for name, value in state.items() if value.is_floating_point() and value.numel()}
    if not floats:
        return []
    finite = torch.stack([torch.isfinite((value.detach() * 0).sum()) for value in floats.values()])
    if bool(finite.all()):
        return []
    return [name for name, ok in zip(floats, finite.tolist(), strict=True) if not ok]


def _check_finite(state: Checkpoint, source: str) -> None:
    """Refuse weights with NaN or infinite values, or a normalisation (meta ``mean``/``std``)
    out of `PIXEL_NORMALISATION`: such a network gives descriptors that rank at random."""
    for key, bound in PIXEL_NORMALISATION.items():
        values = state["meta"][key]
        if any(bound.problem(v) for v in values):
            raise CheckpointError(
                f"{source}: meta['{key}'] is {values}, not three numbers {bound.what}; the file is damaged or edited"
            )
    damaged = non_finite_weights(state["state_dict"])
    if damaged:
        bad = int((~torch.isfinite(state["state_dict"][damaged[0]])).sum())
        raise CheckpointError(
            f"{source}: weight {damaged[0]} holds {bad} NaN or infinite value(s); the network cannot "
            "be used (a diverged training run or a damaged file): use an earlier checkpoint"
        )


def _projection_dimension(weights: Optional[Dict[str, torch.Tensor]]) -> Optional[int]:
    """The output channels of a student's 1x1 projection (the last child of ``features`` when
    it is a bias-free 1x1 convolution), or None."""
    indices = [int(m.group(1)) for key in weights or {} if (m := _CHILD_WEIGHT.match(key))]
    if weights is None or not indices:
        return None
    last = weights[f"features.{max(indices)}.weight"]
    return int(last.shape[0]) if last.dim() == 4 and tuple(last.shape[2:]) == (1, 1) else None


_CHILD_WEIGHT = re.compile(r"^features\.(\d+)\.weight$")


def checkpoint_dimension(
    meta: Dict[str, Any],
    teacher: Optional[str] = None,
    source: str = "checkpoint",
    weights: Optional[Dict[str, torch.Tensor]] = None,
) -> int:
    """The descriptor dimension of a checkpoint's network, checked before anything is built.

    Args:
        meta: the checkpoint's ``meta``.
        teacher: the teacher of a student whose ``meta`` has no ``outputdim`` (files of the
            original): its dimension is the teacher's.
        source: what the error names (the file).
        weights: its state dict: a file without ``outputdim`` whose weights end with a 1x1
            projection has that projection's dimension, whatever ``teacher`` says.

    Returns:
        ``meta['outputdim']``, or for files without it the projection's in ``weights``, else
        the one `aml.networks.retrieval_net.output_dimension` gives the architecture and
        ``teacher``.

    Raises:
        CheckpointError: naming ``source``, when it is not a descriptor dimension (1 to
            `MAX_OUTPUT_DIM`), or the architecture is not a name.
    """
    dim = meta.get("outputdim")
    if dim is None:
        arch = meta.get("architecture")
        if not isinstance(arch, str):
            raise CheckpointError(
                f"{source}: meta has no 'outputdim' and no architecture name; not a retrieval checkpoint"
            )
        try:
            dim = output_dimension(arch, teacher)
        except ValueError as err:  # an architecture this aml does not know
            raise CheckpointError(f"{source}: {err}") from None
        projected = _projection_dimension(weights)
        if projected is not None and projected != dim:
            log.info(">> %s: no outputdim in its meta; its projection gives %d dimensions", source, projected)
            dim = projected
    if not isinstance(dim, int) or isinstance(dim, bool) or OUTPUT_DIM.problem(dim):
        raise CheckpointError(
            f"{source}: meta['outputdim'] is {dim!r}, not a descriptor dimension (1 to "
            f"{MAX_OUTPUT_DIM}); the file is damaged or not a retrieval checkpoint"
        )
    return dim


#: the prefix ``torch.nn.DataParallel`` and ``DistributedDataParallel`` give every key of the
#: network they wrap, when its state_dict is saved through them
WRAPPED_PREFIX = "module."


def _unwrapped(weights: Dict[str, torch.Tensor], source: str) -> Dict[str, torch.Tensor]:
    """``weights`` without the prefix of a network saved through (Distributed)DataParallel,
    where every key has it (other code's checkpoints: aml saves the network itself)."""
    if not weights or not all(isinstance(key, str) and key.startswith(WRAPPED_PREFIX) for key in weights):
        return weights
    log.info(
        ">> %s: its weights were saved through DataParallel ('%s' keys): loaded without the prefix",
        source,
        WRAPPED_PREFIX,
    )
    return {key[len(WRAPPED_PREFIX) :]: value for key, value in weights.items()}


def checkpoint_weights(state: Checkpoint, source: str = "checkpoint") -> Dict[str, torch.Tensor]:
    """A checkpoint's weights under the names aml's network of its architecture gives them.

    Args:
        state: the checkpoint (``meta['architecture']`` and ``state_dict``).
        source: what the log names (the file).

    Returns:
        ``state_dict`` without the prefix of a network saved through (Distributed)DataParallel,
        and with an older timm layout's children renamed (`remap_legacy_keys`).
    """
    return remap_legacy_keys(state["meta"]["architecture"], _unwrapped(state["state_dict"], source))


def misfit(err: RuntimeError) -> str:
    """What torch's ``load_state_dict`` error says does not fit: its first problem, and how many more.

    Args:
        err: the error of a strict ``load_state_dict``.

    Returns:
        ``'Missing key(s) in state_dict: ... (and 2 more)'``.
    """
    problems = [line.strip() for line in str(err).splitlines()[1:] if line.strip()] or [str(err)]
    return problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")


#: the mean size of a network's weight tensors (elements) from which building it on the meta
#: device pays: there each tensor's initialisation costs about 0.25 ms (it runs as Python
#: decompositions), a random draw on the CPU about 9 ns per element (measured, one thread:
#: ResNet-18, 96,000 per tensor, 25 ms instead of 105; MobileNetV2, 11,000, 66 instead of 39)
META_BUILD_MIN_ELEMENTS = 30_000


def unfilled(build: Callable[[], ModuleT], weights: Mapping[str, torch.Tensor]) -> ModuleT:
    """``build()``'s module on the CPU, its tensors left for a strict load of ``weights`` to fill.

    Where ``weights``' tensors are large (`META_BUILD_MIN_ELEMENTS`), built on the meta device,
    so no random weight is drawn (a ResNet-18 in 25 ms instead of 105, a VGG16 in 30 instead of
    1,200); its buffers start at zero, as a state dict of torch < 0.4.1 leaves BatchNorm's
    ``num_batches_tracked`` (the load keeps the module's own). Built for real, from seed 0 and
    without moving the caller's generator, where they are small, or where a state dict would
    not fill it all: a module with a non-persistent buffer or a tensor outside its parameters
    and buffers, or one whose construction fails on the meta device (it reads a value).

    Args:
        build: makes the module (with the default device and generator it finds).
        weights: the state dict that will be loaded into it.

    Returns:
        The module; its parameters hold no values yet where it was built on the meta device.
    """
    if sum(w.numel() for w in weights.values()) < META_BUILD_MIN_ELEMENTS * len(weights):
        with global_seed(0):
            return build()
    try:
        with torch.device("meta"):
            skeleton = build()
    except Exception:  # the real build below raises what is the build's own error
        skeleton = None
    if skeleton is not None and all(_state_dict_fills(module) for module in skeleton.modules()):
        skeleton = skeleton.to_empty(device="cpu")
        for buffer in skeleton.buffers():
            buffer.zero_()
        return skeleton
    with global_seed(0):
        return build()


def _state_dict_fills(module: nn.Module) -> bool:
    """Whether ``module``'s own state dict holds each of its tensors: none is a non-persistent
    buffer, nor an attribute (or in a list, tuple or dict attribute) of its own."""

    def holds_tensor(value: Any) -> bool:
        if isinstance(value, (list, tuple)):
            return any(holds_tensor(item) for item in value)
        if isinstance(value, dict):
            return any(holds_tensor(item) for item in value.values())
        return isinstance(value, torch.Tensor)

    own = {k: v for k, v in vars(module).items() if k not in ("_parameters", "_buffers", "_modules")}
    return not module._non_persistent_buffers_set and not holds_tensor(list(own.values()))


def network_from_checkpoint(
    state: Checkpoint, teacher: Optional[str] = None, source: str = "checkpoint"
) -> ImageRetrievalNet:
    """Rebuild the network that ``state['meta']`` describes and load its weights strictly.

    The dimension comes from ``meta['outputdim']`` (for files without it, the one
    `aml.networks.retrieval_net.output_dimension` gives the architecture and ``teacher``);
    ``meta['Lw']`` is kept in ``net.meta``.
    """
    meta = state["meta"]
    missing = [k for k in ("architecture", "pooling", "mean", "std") if k not in meta]
    if missing:
        raise CheckpointError(f"{source}: meta lacks {missing}; not an aml/cirtorch checkpoint")
    state = {**state, "state_dict": _unwrapped(state["state_dict"], source)}  # the dimension reads its names
    _check_meta_types(meta, source)
    _check_finite(state, source)
    arch = meta["architecture"]
    dim = checkpoint_dimension(meta, teacher, source, state["state_dict"])
    try:
        weights = checkpoint_weights(state, source)
        net = unfilled(
            lambda: build_network(
                arch,
                meta["pooling"],
                local_whitening=bool(meta.get("local_whitening", False)),
                regional=bool(meta.get("regional", False)),
                whitening=bool(meta.get("whitening", False)),
                mean=list(meta["mean"]),
                std=list(meta["std"]),
                pretrained=False,
                teacher_dim=dim,
            ),
            weights,
        )
    except ValueError as err:  # an architecture or pooling this aml does not know
        raise CheckpointError(f"{source}: {err}") from None
    try:
        net.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        raise CheckpointError(
            f"{source}: weights do not fit a {arch} network of dimension {dim}: {misfit(err)}; the file is "
            "damaged, or its meta does not describe its weights"
        ) from None
    for key in KEPT_META_KEYS:
        if key in meta:
            net.meta[key] = meta[key]
    return net


def load_trunk_weights(net: ImageRetrievalNet, path: PathLike) -> ImageRetrievalNet:
    """Load a weights file into ``net``'s trunk and name it in ``meta['trunk_weights']``.

    The file may be a trunk's state dict (keys of ``nn.Sequential(*build_trunk(arch, pretrained=False))``, as
    `aml.training.pretraining` writes), the library's whole model (e.g. torchvision's
    ``mobilenet_v2-b0353104.pth``) or any layout of `aml.networks.backbones.LAYOUTS`.
    The student's 1x1 projection, which follows the trunk, keeps its initialisation.

    Raises:
        CheckpointError: naming the file, when it is unreadable or does not fit the trunk.
    """
    arch = net.meta["architecture"]
    model = library_model(arch)
    state = load_plain_file(path)
    damaged = non_finite_weights(state) if is_state_dict(state) else []  # else load_weights names the file
    if damaged:
        raise CheckpointError(
            f"{path}: weight {damaged[0]} holds NaN or infinite values ({len(damaged)} such tensors); the file is "
            "damaged or from a diverged run: give another --trunk-weights"
        )
    try:
        load_weights(arch, model, state, str(path))
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    trunk = nn.Sequential(*get_backbone(arch).children(model))
    net.features[: len(trunk)].load_state_dict(trunk.state_dict())
    net.meta["trunk_weights"] = Path(path).name
    return net


def load_network(path: PathLike, teacher: Optional[str] = None) -> ImageRetrievalNet:
    """Read a checkpoint file and rebuild its network (CPU, eval mode)."""
    net = network_from_checkpoint(load_checkpoint(path), teacher, source=str(path))
    return net.eval()
