"""The training step over several processes (torchrun): the DistributedDataParallel wrapper,
each rank's part of a global mini-batch, and what all ranks must agree on. In one process
every piece is a pass-through, so the trainer has one code path.

Every rank builds the same tuples (extraction is collective) and takes its contiguous slice
of each global mini-batch of ``batch_size`` tuples; DistributedDataParallel averages the
gradients, where one process sums them over tuples, so tuple losses are scaled by the number
of ranks before backward. A relational loss relates the whole global batch: its rows are
gathered (with gradients) and the loss is computed alike on every rank. With batch
statistics (``train_batchnorm``) BatchNorm becomes SyncBatchNorm (CUDA only), whose forward
passes are collectives, so all ranks make the same forward calls."""

import contextlib
import inspect
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from aml.losses import TupleBatch
from aml.networks.retrieval_net import ImageRetrievalNet
from aml.training.config import TrainSettings
from aml.utils.distributed import World, concat_lists, gather_columns, gather_objects, shard_range, share_buffers
from aml.utils.errors import ConfigError


class DescriptorModel(nn.Module):
    """The network's B x D descriptors as a forward, which DistributedDataParallel wraps."""

    def __init__(self, net: ImageRetrievalNet):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.descriptors(x)


def without_buffer_broadcast(ddp: type = DistributedDataParallel) -> Dict[str, Any]:
    """The keyword that keeps ``ddp`` from broadcasting buffers at every forward.

    Every rank holds the same buffers (BatchNorm's statistics are frozen, or synchronised by
    SyncBatchNorm), so the broadcast would only cost time. torch 2.13 renamed the keyword
    (``broadcast_buffers``, deprecated since, became ``forward_sync_buffers``); older releases
    know only the old name.

    Args:
        ddp: the DistributedDataParallel class of the installed torch.

    Returns:
        ``{"forward_sync_buffers": False}``, or ``{"broadcast_buffers": False}`` before torch 2.13.
    """
    known = inspect.signature(ddp).parameters
    return {"forward_sync_buffers" if "forward_sync_buffers" in known else "broadcast_buffers": False}


def batch_split_problem(batch_size: int, world: World) -> Optional[str]:
    """Why a global batch of ``batch_size`` tuples cannot be shared out over ``world`` (None: it can)."""
    if batch_size % world.size == 0:
        return None
    return (
        f"--batch-size {batch_size} does not split over {world.size} processes: it is the global number of "
        f"tuples per step; use a multiple of {world.size}"
    )


_SYNC_BATCHNORM_NEEDS_CUDA = (
    "--train-batchnorm under torchrun needs CUDA (SyncBatchNorm shares batch statistics across processes on GPUs "
    "only); on the CPU train it in one process"
)


def sync_batchnorm_problem(settings: TrainSettings, world: World, device: torch.device) -> Optional[str]:
    """Why ``settings`` cannot train with SyncBatchNorm in ``world`` (None: they can, or need not).

    With autocast, a rank's empty forward (an image shape only another rank has, which every
    rank runs alike) makes SyncBatchNorm share its statistics in bfloat16, where a rank with
    images shares float32 ones (``torch.batch_norm_stats`` on CUDA): NCCL would gather buffers
    of two sizes (a hang, or other statistics). Off CUDA, SyncBatchNorm does not run at all.
    """
    if not (world.distributed and settings.train_batchnorm):
        return None
    if device.type != "cuda":
        return _SYNC_BATCHNORM_NEEDS_CUDA
    if not settings.autocast:
        return None
    return (
        "--amp with --train-batchnorm under torchrun: SyncBatchNorm shares bfloat16 statistics from a process "
        "whose batch lacks an image shape another has and float32 ones from the others, which the processes "
        "cannot gather; train without one of them, or in one process"
    )


def to_sync_batchnorm(net: nn.Module) -> nn.Module:
    """In place: every BatchNorm of ``net`` (not itself one) becomes a SyncBatchNorm with its
    parameters and statistics.

    timm's BatchNormAct2d (EfficientNet, MobileNetV3, timm trunks) becomes timm's
    SyncBatchNormAct, which keeps its activation: torch's converter makes it a plain
    SyncBatchNorm, whose forward skips the activation and dropout left inside it.

    Args:
        net: the network.

    Returns:
        ``net``.
    """
    if any(type(m).__module__.startswith("timm.") for m in net.modules()):
        from timm.layers import convert_sync_batchnorm

        return convert_sync_batchnorm(net)
    return nn.SyncBatchNorm.convert_sync_batchnorm(net)


class _GatheredRows(torch.autograd.Function):
    """Every rank's rows (as many on each), one after another in rank order, with gradients:
    each rank's loss reads all of them, so a rank's rows get the sum of every rank's gradient
    for them (torch.distributed.nn's all_gather did the same; torch 2.14 deprecates it)."""

    @staticmethod
    def forward(ctx: Any, rows: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.count = dist.get_rank(), rows.shape[0]
        parts = [torch.empty_like(rows) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, rows.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        total = grad.contiguous().clone()
        dist.all_reduce(total)  # gloo has no reduce_scatter: the sum of the whole, then this rank's part
        return total[ctx.rank * ctx.count : (ctx.rank + 1) * ctx.count]


class Parallel:
    """How this process takes part in a training step (a pass-through in one process)."""

    def __init__(
        self, net: ImageRetrievalNet, world: World, device: torch.device, batch_size: int, sync_batchnorm: bool
    ):
        self.world, self.ddp, self.sync_batchnorm = world, None, False
        self.encode = net.descriptors
        if not world.distributed:
            return
        problem = batch_split_problem(batch_size, world)
        if problem:
            raise ConfigError(problem)
        if sync_batchnorm:
            if device.type != "cuda":
                raise ConfigError(_SYNC_BATCHNORM_NEEDS_CUDA)
            to_sync_batchnorm(net)
        ids = [device.index] if device.type == "cuda" else None
        self.ddp = DistributedDataParallel(DescriptorModel(net), device_ids=ids, **without_buffer_broadcast())
        share_buffers(net, world)  # torch before 2.13 skips the buffers at construction with broadcast_buffers=False
        self.encode, self.sync_batchnorm = self.ddp, sync_batchnorm

    @property
    def loss_scale(self) -> int:
        """What a tuple loss is multiplied by before backward (DDP averages over ranks)."""
        return self.world.size

    def my_part(self, batches: List[List[int]]) -> List[List[int]]:
        """This rank's contiguous slice of every global mini-batch."""
        if not self.world.distributed:
            return batches
        return [[batch[k] for k in shard_range(len(batch), self.world)] for batch in batches]

    def no_sync(self, sync: bool):
        """Outside a step's last backward, DistributedDataParallel must not reduce gradients."""
        return self.ddp.no_sync() if self.ddp is not None and not sync else contextlib.nullcontext()

    def shapes(self, images: Sequence[torch.Tensor]) -> Tuple[tuple, ...]:
        """With SyncBatchNorm: every image shape on any rank, in the order the global batch meets
        them, so that all ranks make the same forward calls; else () (each rank its own)."""
        if not self.sync_batchnorm:
            return ()
        # in the order the whole batch meets them, as one process does (the ranks hold contiguous
        # slices): the running statistics of BatchNorm are updated shape by shape
        mine = list(dict.fromkeys(tuple(image.shape) for image in images))
        return tuple(dict.fromkeys(concat_lists(gather_objects(mine, self.world))))

    def whole_batch(self, batch: TupleBatch) -> TupleBatch:
        """For a relational loss: every rank's (student, teacher) rows, gathered with gradients."""
        if not self.world.distributed:
            return batch
        return TupleBatch.pairs(
            _GatheredRows.apply(batch.anchors),
            _GatheredRows.apply(batch.members[:, 0]),
        )

    def global_losses(self, losses: torch.Tensor, relational: bool) -> List[float]:
        """Every rank's loss values (a 1-D tensor each, as long on every rank) in global batch
        order, read back in one copy; a relational loss's, alike on every rank, as rank 0 has
        them (one decision on their finiteness for all). The ranks' values meet on the devices,
        not as pickled objects, which would cost a collective of sizes, a wait and copies both
        ways on every step."""
        if self.world.distributed:
            gathered = gather_columns(losses[None, :], len(losses) * self.world.size, self.world)[0]
            losses = gathered[: len(losses)] if relational else gathered
        return losses.cpu().tolist()
