"""Several processes, one job: the thin layer over ``torch.distributed`` that aml uses.

Processes are started by ``torchrun``, which sets RANK, WORLD_SIZE, LOCAL_RANK and the
rendezvous in the environment. `init_from_environment` joins that group (nccl on CUDA,
gloo on the CPU) with a timeout, so a process whose peer died stops with an error instead
of waiting forever. Everything else here reads torch's own process-group state: a single
process (no torchrun) sees a world of size 1 and every function is a no-op.

Rules the package keeps: every descriptor extraction is collective (all ranks call it, each
encodes its shard, every rank gets the whole result); files are written by rank 0 alone,
followed by `barrier` where the other ranks read them.
"""

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, TypeVar

import torch
import torch.distributed as dist

from aml.utils.bounds import digits
from aml.utils.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 1800  # a collective waits this long for a peer before failing (--dist-timeout)


@dataclass(frozen=True)
class World:
    """This process's place in the job."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and prints results."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def launched_by_torchrun() -> bool:
    """Whether the environment describes a group of more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def current_rank() -> int:
    """This process's rank as torchrun set it (0 for a single process), before any group is joined."""
    return int(os.environ.get("RANK", "0"))


def warn_once(logger: logging.Logger, message: str, *args: Any) -> None:
    """Log a warning that every process of a job would give alike (about the flags, the networks
    or a file they all read) from rank 0 alone, rather than once per process.

    Examples:
        >>> import logging
        >>> warn_once(logging.getLogger("aml"), ">> --save-freq %d is above --epochs %d", 5, 3)
    """
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else current_rank()
    if rank == 0:
        logger.warning(message, *args)


#: what torchrun sets for every process besides WORLD_SIZE
TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _check_torchrun_environment() -> None:
    """Refuse a WORLD_SIZE above 1 without the rest of torchrun's environment (a variable left
    over in a shell, or exported by a scheduler): torch's own error is a traceback."""
    missing = [name for name in TORCHRUN_VARIABLES if not os.environ.get(name)]
    if missing:
        raise ConfigError(
            f"WORLD_SIZE={os.environ.get('WORLD_SIZE')} says this is one of several processes, but "
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set: start the job with torchrun, "
            "which sets them all, or unset WORLD_SIZE to run one process"
        )
    if digits(os.environ["MASTER_PORT"]) is None:
        raise ConfigError(
            f"MASTER_PORT={os.environ['MASTER_PORT']} is no port number: start the job with torchrun, which sets "
            "it, or unset WORLD_SIZE to run one process"
        )


def init_from_environment(device: torch.device, timeout_s: float = DEFAULT_TIMEOUT_S) -> World:
    """Join the process group torchrun described (no-op for a single process) and return
    this process's `World`. CUDA processes use the GPU of their LOCAL_RANK; a single process
    makes ``device`` its current GPU (the loaders' page-locked memory goes through it: left
    on GPU 0, ``--gpu-id 1`` opened a context on GPU 0 too)."""
    if not launched_by_torchrun():
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)
        return World()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":  # also in a group joined before: collectives use the current GPU
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        # NCCL bound to this process's GPU: left unsaid, torch guesses it from the global rank
        # (another GPU where a machine runs fewer processes than it has GPUs)
        bound = torch.device("cuda", local) if backend == "nccl" else None
        _check_torchrun_environment()
        try:
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s), device_id=bound)
        except (dist.DistStoreError, dist.DistNetworkError) as err:  # the others never came, or no address
            said = (str(err).splitlines() or [type(err).__name__])[0]
            raise ConfigError(
                f"process {current_rank()} could not join the group of {os.environ['WORLD_SIZE']} processes at "
                f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} ({said}); start every process with "
                "torchrun, or unset WORLD_SIZE to run one"
            ) from None
        log.info(
            ">> process %d of %d joined the group (%s, timeout %ds)",
            dist.get_rank(),
            dist.get_world_size(),
            backend,
            timeout_s,
        )
    return current_world()


def current_world() -> World:
    """The world of the process group this process is in (size 1 when there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def process_device(device: torch.device, world: World) -> torch.device:
    """The device of this process: with several processes on CUDA, the GPU of its local rank."""
    if device.type == "cuda" and world.distributed:
        return torch.device("cuda", world.local_rank)
    return device


def shard_range(count: int, world: World) -> range:
    """The contiguous block of ``range(count)`` this rank handles (sizes differ by at most 1)."""
    base, extra = divmod(count, world.size)
    start = world.rank * base + min(world.rank, extra)
    return range(start, start + base + (world.rank < extra))


#: bytes one step of `gather_columns` holds on the collective's device, every rank's part together
GATHER_BYTES = 64 << 20


def gather_columns(local: torch.Tensor, count: int, world: World) -> torch.Tensor:
    """Every rank's D x n_r block (rank order = `shard_range` order) joined into the
    D x ``count`` whole, on every rank, on ``local``'s device.

    The blocks travel in steps of columns (padded to equal size for the collective), so that
    the collective's device (a GPU under NCCL) holds `GATHER_BYTES` at a time, not every
    rank's block: a set of millions of images gathered whole would not fit on it.
    """
    if not world.distributed:
        return local
    blocks = [shard_range(count, World(rank, world.size)) for rank in range(world.size)]
    longest = len(blocks[0])  # rank 0's block is the longest
    device, rows = _collective_device(), local.shape[0]
    step = max(1, GATHER_BYTES // max(1, rows * local.element_size() * world.size))
    whole = torch.empty(rows, count, dtype=local.dtype, device=local.device)
    for start in range(0, longest, step):  # as many steps on every rank
        stop = min(start + step, longest)
        part = torch.zeros(rows, stop - start, dtype=local.dtype, device=device)
        mine = local[:, start:stop]
        part[:, : mine.shape[1]] = mine.to(device)
        parts = [torch.empty_like(part) for _ in range(world.size)]
        dist.all_gather(parts, part)
        for block, got in zip(blocks, parts, strict=True):
            taken = max(0, min(stop, len(block)) - start)
            whole[:, block.start + start : block.start + start + taken] = got[:, :taken].to(local.device)
    return whole


def gather_objects(value: Any, world: World) -> List[Any]:
    """``[value of rank 0, value of rank 1, ...]`` on every rank (picklable values)."""
    if not world.distributed:
        return [value]
    out: List[Any] = [None] * world.size
    dist.all_gather_object(out, value)
    return out


def all_ranks(found: bool, world: World) -> bool:
    """Whether every rank found what it looked for (a usable cache file, ...): one answer for
    all, so that all take the same collective path. Ranks on several machines may each have
    their own data root, where rank 0 alone wrote the files."""
    if not world.distributed:
        return found
    return all(gather_objects(bool(found), world))


T = TypeVar("T")


def found_by_all(found: Optional[T], collective: bool) -> Optional[T]:
    """``found`` (a cache read, or None) when every rank of a collective call found its own,
    else None on every rank: a rank without the file (another machine's data root) makes all
    encode it again, together.

    Args:
        found: what this rank read.
        collective: whether every rank runs this call (under torchrun); False: this rank alone.

    Returns:
        ``found``, or None.

    Examples:
        >>> from aml.utils.distributed import found_by_all
        >>> found_by_all([1.0], collective=True)  # one process: its own answer
        [1.0]
    """
    if collective and not all_ranks(found is not None, current_world()):
        return None
    return found


def from_main(value: Any, world: World) -> Any:
    """Rank 0's ``value``, on every rank (one decision for all, e.g. the checkpoint to resume)."""
    if not world.distributed:
        return value
    box = [value if world.is_main else None]  # rank 0's sent, the others' never pickled
    dist.broadcast_object_list(box, src=0)
    return box[0]


def share_buffers(module: torch.nn.Module, world: World) -> None:
    """Give every rank rank 0's buffers of ``module``, in place.

    For BatchNorm statistics each rank computed itself: on CUDA, kernels that round otherwise
    from run to run make them differ by a few bits, and DistributedDataParallel, built without
    broadcasting buffers, would keep them apart for the whole run while rank 0's alone are saved.

    Args:
        module: the network, on this rank's device.
        world: this process's place in the job (one process: nothing to do).

    Examples:
        >>> import torch
        >>> from aml.utils.distributed import World, share_buffers
        >>> share_buffers(torch.nn.BatchNorm2d(3), World())  # one process: left as it is
    """
    if not world.distributed:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)


def barrier(world: World) -> None:
    """Wait until every rank got here (after rank 0 wrote what the others read)."""
    if not world.distributed:
        return
    if dist.get_backend() == "nccl":  # on this process's GPU (torch warns, and may pick another, unsaid)
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def concat_lists(parts: Sequence[Sequence[Any]]) -> List[Any]:
    """The per-rank lists of `gather_objects`, joined in rank order."""
    return [item for part in parts for item in part]


def is_peer_failure(error: BaseException) -> bool:
    """Whether ``error`` is a collective that failed because another process died or did not
    answer within the timeout: torch's DistBackendError (NCCL raises every error of its own as
    one, a set-up failure too) or gloo's RuntimeErrors that say so. NCCL's own timeout ends the
    process from its watchdog, without a Python error."""
    if isinstance(error, dist.DistBackendError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(
        marker in text
        for marker in (
            "Timed out waiting",
            "Connection closed by peer",
            "Connection reset by peer",
            "gloo/transport",
        )
    )


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shutdown() -> None:
    """Leave the process group (end of a command), once every rank is there: a rank that tore
    its group down while rank 0 still wrote the results aborted now and then under load
    ("terminate called without an active exception"), failing the whole torchrun job."""
    if dist.is_available() and dist.is_initialized():
        barrier(current_world())
        dist.destroy_process_group()


def main_first(world: World, step: Callable[[], Any]) -> Any:
    """Run ``step`` (downloads, data generation, file caches) on rank 0, then on the other
    ranks once rank 0 is done, so that they find its files in place instead of racing it."""
    result = step() if world.is_main else None
    barrier(world)
    return result if world.is_main else step()
