"""Resuming a run from its folder: the checkpoint is checked against the run's network,
mode, loss and optimizer before anything is loaded into them."""

import logging
import math
import numbers
from pathlib import Path
from typing import Any, Mapping, Optional, Tuple, Union

import torch

from aml.networks.checkpoint import (
    NOT_RECORDED,
    Checkpoint,
    CheckpointError,
    RunRecord,
    checkpoint_weights,
    load_checkpoint,
    misfit,
)
from aml.networks.backbones import get_backbone
from aml.networks.retrieval_net import ImageRetrievalNet
from aml.training.optim import optimizer_name
from aml.training.run_folder import CHECKPOINT_PATTERN, earlier_checkpoint, epoch_checkpoints, latest_checkpoint
from aml.utils.distributed import current_world, from_main, warn_once
from aml.utils.errors import ConfigError

log = logging.getLogger(__name__)


# the meta a resumed run must share with its checkpoint, and the flag that sets each: a pooling
# without weights (mac, spoc, rmac) loads into any other, and trained on as another network
SHAPING_FLAGS = {
    "pooling": "--pool",
    "regional": "--regional",
    "whitening": "--whitening",
    "local_whitening": "--local-whitening",
    "outputdim": "an output dimension",
    "mode": "--mode",
    "loss": "--loss",
}


def _check_meta(path: Path, theirs: dict, net: ImageRetrievalNet) -> None:
    if theirs.get("architecture") != net.meta["architecture"]:
        raise CheckpointError(
            f"cannot resume from {path}: it holds a {theirs.get('architecture')} network, this run "
            f"trains {net.meta['architecture']}; resume with the flags the run was started with, or "
            "choose another --directory"
        )
    for key, flag in SHAPING_FLAGS.items():  # mode and loss recorded since aml records them; older checkpoints pass
        old, new = theirs.get(key), net.meta.get(key)
        if old is not None and new is not None and old != new:
            raise CheckpointError(
                f"cannot resume from {path}: it was trained with {flag} {old}, this run trains "
                f"with {flag} {new}; resume with the flags the run was started with{_width_hint(key, old, net)}"
            )
    old, new = theirs.get("teacher_fingerprint"), net.meta.get("teacher_fingerprint")
    if old is not None and new is not None and old != new:  # e.g. a retrained teacher copied over the file
        raise CheckpointError(
            f"cannot resume from {path}: it was trained against other teacher weights than those of "
            f"--teacher {net.meta.get('teacher')} (fingerprint {old}, now {new}); resume with the teacher the run "
            "was started with, or start a new run"
        )


def _width_hint(key: str, old: Any, net: ImageRetrievalNet) -> str:
    """Which flag sets a std run's dimension: --teacher, whose dimension a trunk projects to
    unless it keeps its width (the default vgg16); a run of a trunk that kept its width though
    --teacher named another teacher (aml before 2026-12-07) trains on with the default."""
    if key != "outputdim" or net.meta.get("mode") != "std":
        return ""
    backbone = get_backbone(net.meta["architecture"])
    if old == backbone.dim and not backbone.student:
        return (
            f" (in --mode std, --teacher sets the dimension; {net.meta['architecture']} keeps its width {old} with "
            "the default --teacher vgg16: give it, with this file as --resume, to train on in a folder of its own)"
        )
    return f" (in --mode std, --teacher sets the dimension: give a teacher of {old} dimensions, as the run was started)"


def _check_margin(path: Path, state: Mapping[str, Any], run: RunRecord) -> None:
    """Refuse to go on in a run folder with another ``--loss-margin`` than its checkpoint's (the
    folder's name rounds it: m0.12 for 0.12 and 0.125); a branch in a folder of its own may
    change it (its model_best is chosen among its own epochs)."""
    old, new = RunRecord.of(state).loss_margin, run.loss_margin
    if old is not None and new is not None and old != new:
        raise CheckpointError(
            f"cannot resume from {path}: it was trained with --loss-margin {old}, this run trains with "
            f"--loss-margin {new}; resume with the flags the run was started with, or train from it in another "
            "folder (another --directory or --comment)"
        )


def _check_training_state(path: Path, state: Mapping[str, Any], optimizer: torch.optim.Optimizer) -> None:
    """Refuse a checkpoint that holds no training state to resume, or that of another optimizer."""
    saved = state.get("optimizer")
    groups = saved.get("param_groups") if isinstance(saved, dict) else None
    if not groups or state.get("epoch") is None or state.get("min_loss") is None:
        raise CheckpointError(
            f"cannot resume from {path}: it holds a network but no training state (optimizer, epoch, best loss); "
            "it cannot continue a run: start a new one (another --directory)"
        )
    epoch = _scalar(state["epoch"])
    if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 0:
        raise CheckpointError(
            f"cannot resume from {path}: its epoch {epoch!r} is not a count of epochs done; the file was edited or "
            "damaged: resume from another checkpoint of the run"
        )
    _best_loss_of(path, state)
    # by the settings every torch since 1.0 saves: a newer torch's own (foreach, fused, ...) an older file lacks
    theirs = optimizer_name(groups[0]) if isinstance(groups[0], Mapping) else None
    ours = optimizer_name(optimizer.param_groups[0])
    if theirs != ours:
        trained = f"--optimizer {theirs}" if theirs else "an optimizer that is none of aml's (or a newer torch's)"
        raise CheckpointError(
            f"cannot resume from {path}: it was trained with {trained}, this run with --optimizer {ours}; resume "
            "with the flags the run was started with" + ("" if theirs else ", and the torch that saved it")
        )
    _check_multipliers(path, groups, optimizer)


def _check_multipliers(path: Path, groups: list, optimizer: torch.optim.Optimizer) -> None:
    """Refuse a checkpoint whose parameter groups' learning rates stand in other ratios to the
    trunk's than this run's (another ``--proj-lr-mult`` than 1 with both): loaded, they would
    train the projection at the checkpoint's multiplier under a folder named by this one's.
    Other counts of groups are refused where the state is loaded."""
    ours = [group.get("initial_lr", group["lr"]) for group in optimizer.param_groups]
    theirs = [group.get("initial_lr", group.get("lr")) for group in groups]
    if len(ours) != len(theirs) or not all(isinstance(lr, (int, float)) and lr > 0 for lr in theirs):
        return
    for k, (mine, saved) in enumerate(zip(ours[1:], theirs[1:], strict=True), start=1):
        if not math.isclose(mine / ours[0], saved / theirs[0], rel_tol=1e-6):
            raise ConfigError(
                f"cannot resume from {path}: its optimizer's parameter group {k} learns at {saved / theirs[0]:g} "
                f"times the trunk's learning rate, this run's at {mine / ours[0]:g}; resume with the flags the run "
                "was started with (e.g. the same --proj-lr-mult)"
            )


def _best_loss_of(path: Path, state: Mapping[str, Any]) -> float:
    """A checkpoint's best loss so far (``min_loss``): a number, or +inf before any.

    Raises:
        CheckpointError: naming ``path``, for anything else (NaN or -inf would keep its
            ``model_best`` for ever; a string ended the resume in a ValueError).
    """
    value = _scalar(state["min_loss"])
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != value or value == float("-inf"):
        raise CheckpointError(
            f"cannot resume from {path}: its best loss {value!r} is not a number; the file was edited or "
            "damaged: resume from another checkpoint of the run"
        )
    return float(value)


def _scalar(value: Any) -> Any:
    """A one-element tensor as its number (a checkpoint may hold the loss so); anything else as it is."""
    return value.item() if isinstance(value, torch.Tensor) and value.numel() == 1 else value


LATEST = "latest"  # --resume latest: the run folder's latest checkpoint, said without a warning

# the optimizer settings a resumed run takes from its checkpoint, whatever the command line says
RESUMED_SETTINGS = ("initial_lr", "momentum", "betas", "weight_decay")


def _check_best_loss_kind(path: Path, state: Mapping[str, Any], min_loss_of: Optional[str]) -> None:
    """Refuse a checkpoint whose best loss is of another kind (validation vs training) than the
    run's: the two are not comparable, and model_best would be chosen across them."""
    theirs = RunRecord.of(state).min_loss_of
    if theirs is not None and min_loss_of is not None and theirs != min_loss_of:
        flag = {"training": "with --no-val", "validation": "without --no-val"}
        raise CheckpointError(
            f"cannot resume from {path}: its model_best was chosen by {theirs} loss, this run chooses by "
            f"{min_loss_of} loss, and the two are not comparable; resume {flag[theirs]}, as the run was started"
        )


# a run's training precision (net.meta["autocast"]) as a resume names it, and the flags that keep it
PRECISIONS = {"bfloat16": ("bfloat16 autocast", "with --amp"), "off": ("float32", "without --amp")}


def _warn_of_other_precision(path: Path, theirs: Mapping[str, Any], net: ImageRetrievalNet) -> None:
    """Name a resume whose forward passes run in another precision than the checkpoint's epochs
    (``--amp`` added or dropped): allowed (e.g. float32 after a bfloat16 run diverged), not silent."""
    old, new = theirs.get("autocast"), net.meta.get("autocast")
    if old in PRECISIONS and new in PRECISIONS and old != new:
        warn_once(
            log,
            "resuming from %s: its epochs were trained in %s, this run goes on in %s; resume %s to train on as it was",
            path,
            PRECISIONS[old][0],
            PRECISIONS[new][0],
            PRECISIONS[old][1],
        )


def _warn_of_other_pixels(path: Path, state: Mapping[str, Any], run: RunRecord) -> None:
    """Name a resume that mines (and encodes the teacher's descriptors) with other pixels than
    the checkpoint's epochs: another ``--decode`` or device, on CUDA another ``--no-amp`` or
    ``--amp-dtype``; allowed, not silent (the descriptors differ by rounding)."""
    old, new = RunRecord.of(state).pixels, run.pixels
    if old is not None and new is not None and old != new:
        warn_once(
            log,
            "resuming from %s: its epochs mined with images encoded as %s, this run encodes them as %s (another "
            "--decode, --no-amp, --amp-dtype or device); resume with the flags and device the run was started with "
            "to train on as it was",
            path,
            old,
            new,
        )


#: optimizer states that are running means of squares: a negative value makes the step's
#: square root NaN (Adam's and AdamW's second moments, RMSprop's mean)
SQUARED_STATES = ("exp_avg_sq", "max_exp_avg_sq", "square_avg")


def _check_optimizer_state(path: Path, saved: Mapping[str, Any], optimizer: torch.optim.Optimizer) -> None:
    """Refuse an optimizer state whose tensors (Adam's moments, SGD's momentum) do not have
    their parameters' shapes (torch loads them as they are, and its fused step then writes
    past their ends: a crash, or other memory overwritten), or hold values no training writes
    (non-finite, or a negative mean of squares: the first step makes the weights NaN, which
    would be blamed on the learning rate)."""
    groups, state = saved.get("param_groups") or [], saved.get("state") or {}
    ours = [param for group in optimizer.param_groups for param in group["params"]]
    theirs = [index for group in groups for index in group.get("params", [])]
    for param, index in zip(ours, theirs, strict=False):  # other counts: load_state_dict names them
        for name, value in (state.get(index) or {}).items():
            if not isinstance(value, torch.Tensor) or value.dim() == 0:
                continue
            problem = None
            if value.shape != param.shape:
                problem = f"has shape {tuple(value.shape)}, the parameter {tuple(param.shape)}"
            elif value.is_floating_point() and not bool(torch.isfinite(value).all()):
                problem = "holds non-finite values"
            elif name in SQUARED_STATES and bool((value < 0).any()):
                problem = "holds negative values (a mean of squares)"
            if problem is not None:
                raise CheckpointError(
                    f"cannot resume from {path}: its optimizer's {name} of parameter {index} {problem}; the file "
                    "was edited or damaged: resume from another checkpoint of the run"
                )


def _warn_of_resumed_settings(path: Path, saved: Mapping[str, Any], optimizer: torch.optim.Optimizer) -> None:
    """Name the optimizer settings of this command that the checkpoint's state overrides (those
    of the trunk's group: the others' learning rates are multiples of its)."""
    ours, theirs = optimizer.param_groups[0], saved["param_groups"][0]
    differ = [
        f"{key} {theirs[key]} (this command: {ours[key]})"
        for key in RESUMED_SETTINGS
        if key in ours and key in theirs and ours[key] != theirs[key]
    ]
    if differ:
        warn_once(
            log,
            "resuming from %s continues with its optimizer's settings: %s; to train with other settings, start "
            "a new run",
            path,
            "; ".join(differ),
        )


def resume_run(
    run_dir: Path,
    name: str,
    net: ImageRetrievalNet,
    optimizer: torch.optim.Optimizer,
    run: Union[RunRecord, str] = NOT_RECORDED,
    *,
    min_loss_of: Optional[str] = None,
) -> Optional[Tuple[int, float]]:
    """Load ``run_dir/name`` (else ``name`` itself, a path), or the latest model_epochN there
    (else its model_best), into ``net`` and ``optimizer``; returns (epochs done, best loss so
    far: the lower of the checkpoint's and the run's ``model_best``; from a checkpoint outside
    ``run_dir``, a branch, only the latter: the checkpoint's was another folder's, perhaps of
    a loss on another scale), or None when the folder holds no checkpoint.
    ``run`` is what this run's checkpoints record (`RunRecord`; a string, or ``min_loss_of``:
    the kind of best loss alone, as this parameter was before): a checkpoint of ``run_dir`` that recorded
    another kind of best loss or another margin is refused."""
    run = RunRecord.given(run, min_loss_of)
    path = from_main(_resumed_path(run_dir, name), current_world())  # one for all ranks (a shared folder seen late)
    if path is None:
        log.info(">> No checkpoint found at '%s'", run_dir / "model_epoch0.pth.tar")
        if name:  # as the original, the run starts; what was asked for is said
            missed = "%s holds no checkpoint (a flag of the folder's name differs from the run's?)"
            missed = missed if name == LATEST else "no such file in %s, which holds no checkpoint"
            warn_once(log, f">> --resume %s: {missed}: training starts from scratch", name, run_dir)
        return None
    state = _load_resumed(run_dir, path)
    branch = path.parent.resolve() != run_dir.resolve()  # a checkpoint of another folder
    _check_meta(path, state["meta"], net)
    if not branch:  # a branch chooses its model_best among its own epochs
        _check_margin(path, state, run)
        _check_best_loss_kind(path, state, run.min_loss_of)
    _check_training_state(path, state, optimizer)
    _check_nothing_overwritten(run_dir, path, int(state["epoch"]))
    try:
        net.load_state_dict(checkpoint_weights(state, str(path)))
    except RuntimeError as err:
        raise CheckpointError(
            f"cannot resume from {path}: its weights do not fit this run's network ({misfit(err)}); resume with "
            "the flags the run was started with"
        ) from None
    _warn_of_resumed_settings(path, state["optimizer"], optimizer)
    _warn_of_other_precision(path, state["meta"], net)
    _warn_of_other_pixels(path, state, run)
    _check_optimizer_state(path, state["optimizer"], optimizer)
    try:
        optimizer.load_state_dict(state["optimizer"])
    except ValueError as err:
        raise ConfigError(
            f"cannot resume from {path}: its optimizer state does not match this run's parameter "
            f"groups ({err}); resume with the flags the run was started with (e.g. the same "
            "--proj-lr-mult)"
        ) from None
    if "batchnorm_calibrated" in state["meta"]:
        net.meta["batchnorm_calibrated"] = state["meta"]["batchnorm_calibrated"]
    log.info(">> Loaded checkpoint '%s' (epoch %d)", path, int(state["epoch"]))
    best = _model_best_loss(run_dir, net, run.min_loss_of)
    if branch:  # its folder's model_best is of its own epochs
        log.info(">> %s: model_best is chosen among this run's epochs, not against %s's best loss", run_dir, path)
        return int(state["epoch"]), best
    return int(state["epoch"]), min(_best_loss_of(path, state), best)


def _resumed_path(run_dir: Path, name: str) -> Optional[Path]:
    """The checkpoint ``--resume name`` names: ``run_dir/name``, else ``name`` as a path, else
    (a name, not a path) the folder's latest model_epochN or else its model_best; None when
    the folder holds none.

    Raises:
        CheckpointError: for a folder, or a path that is not there.
    """
    path: Optional[Path] = next((p for p in (run_dir / name, Path(name)) if p.is_file()), None)
    if path == Path(name) and path.parent == Path(".") and path.resolve().parent != run_dir.resolve():
        warn_once(  # a bare name, meant for the run folder perhaps: said, since it branches from elsewhere
            log, ">> --resume %s is not in %s: training on from the working folder's %s", name, run_dir, path.resolve()
        )
    folder = next((p for p in (run_dir / name, Path(name)) if name and p.is_dir()), None)
    if path is None and folder is not None:
        raise CheckpointError(f"--resume {name}: {folder} is a folder; give a checkpoint file in it")
    if path is None and Path(name).parent != Path("."):  # a path, not a name in the run folder
        raise CheckpointError(
            f"--resume {name}: no such file; give a checkpoint file, or a file name of the run folder {run_dir} "
            "(any other name resumes from its latest model_epochN)"
        )
    if path is None:  # the latest model_epochN; else model_best (--save-freq above the epochs done)
        path = latest_checkpoint(run_dir) or earlier_checkpoint(run_dir)
        if path is not None and name not in ("", LATEST):
            warn_once(log, ">> --resume %s is not in the run folder: resuming from its latest, %s", name, path.name)
    return path


def _load_resumed(run_dir: Path, path: Path) -> Checkpoint:
    """The checkpoint ``path``; a damaged one of the run folder names the run's previous
    checkpoint to resume from instead."""
    try:
        return load_checkpoint(path)
    except CheckpointError as err:
        if path.parent.resolve() != run_dir.resolve():
            raise
        found = CHECKPOINT_PATTERN.match(path.name)
        last = int(found.group(1)) if found else None  # model_best or another name: any epoch before it
        previous = [p.name for n, p in epoch_checkpoints(run_dir).items() if p != path and (last is None or n < last)]
        if not previous:
            raise
        raise CheckpointError(
            f"{err} Or move it out of the run folder and resume from the run's previous checkpoint: "
            f"--resume {previous[-1]}"
        ) from None


def _check_nothing_overwritten(run_dir: Path, path: Path, epoch: int) -> None:
    """Refuse a resume whose epochs would overwrite checkpoints of ``run_dir``: those of later
    epochs of its run, or, from a file outside the folder, any (two runs would mix there)."""
    problem = from_main(_overwritten(run_dir, path, epoch), current_world())  # one decision for all ranks
    if problem:
        raise ConfigError(problem)


def _overwritten(run_dir: Path, path: Path, epoch: int) -> Optional[str]:
    """What resuming from ``path`` (at ``epoch``) in ``run_dir`` would overwrite, said with the
    fix, or None."""
    branch = f"or train from it in another folder (another --directory or --comment, with --resume {path})"
    own = earlier_checkpoint(run_dir)
    if own is not None and path.parent.resolve() != run_dir.resolve():  # the file itself may be a link
        return (
            f"cannot resume from {path}: it lies outside {run_dir}, which holds checkpoints ({own.name}) that "
            f"training on from it would overwrite or mix with; continue the folder's run with --resume latest, "
            f"{branch}"
        )
    later = [p.name for n, p in epoch_checkpoints(run_dir).items() if n > epoch]
    if later:
        return (
            f"cannot resume from {path} (epoch {epoch}): {run_dir} holds checkpoints of later epochs "
            f"({', '.join(later)}) that training on from it would overwrite; continue the folder's run from "
            f"its latest with --resume latest, {branch}"
        )
    return None


def _model_best_loss(run_dir: Path, net: ImageRetrievalNet, min_loss_of: Optional[str]) -> float:
    """The loss of the run's ``model_best`` (inf without one, or one of another network): a
    resumed run replaces it only with a better one, also when it resumes from an epoch before
    it (a crash between the two writes, an earlier ``--resume model_epochN``)."""
    best = run_dir / "model_best.pth.tar"
    if not best.is_file():
        return float("inf")
    state = load_checkpoint(best)
    if state["meta"].get("architecture") != net.meta["architecture"] or state.get("min_loss") is None:
        return float("inf")
    _check_best_loss_kind(best, state, min_loss_of)
    return _best_loss_of(best, state)
