"""The training step's parallel pieces in one process (torchrun runs: test_distributed.py)."""

import pytest
import torch

from aml.losses import TupleBatch
from aml.networks import build_network
from aml.training.parallel import Parallel, batch_split_problem, to_sync_batchnorm, without_buffer_broadcast
from aml.utils.distributed import World


def test_in_one_process_every_piece_is_a_pass_through():
    net = build_network("squeezenet1_1", pretrained=False)
    parallel = Parallel(net, World(), torch.device("cpu"), batch_size=5, sync_batchnorm=False)
    assert parallel.encode == net.descriptors and parallel.ddp is None and parallel.loss_scale == 1
    batches = [[3, 1, 4], [1, 5, 9]]
    assert parallel.my_part(batches) == batches
    assert parallel.shapes([torch.zeros(3, 4, 4)]) == ()
    batch = TupleBatch.pairs(torch.eye(2), torch.eye(2))
    assert parallel.whole_batch(batch) is batch
    assert parallel.global_losses(torch.tensor([0.5, 0.25]), relational=False) == [0.5, 0.25]
    with parallel.no_sync(False):
        pass


def test_a_global_batch_must_split_evenly_over_the_processes():
    assert batch_split_problem(6, World(size=2)) is None
    assert batch_split_problem(5, World(rank=1, size=2)) == ("--batch-size 5 does not split over 2 processes: it is "
                                                             "the global number of tuples per step; use a multiple of 2")
    with pytest.raises(ValueError, match="does not split over 3 processes"):
        Parallel(build_network("squeezenet1_1", pretrained=False), World(size=3), torch.device("cpu"), 4, False)


def test_every_rank_starts_from_rank_0s_buffers(monkeypatch):
    """torch before 2.13 (the GPU machines') builds DistributedDataParallel with
    broadcast_buffers=False without sharing the buffers: BatchNorm statistics a rank computed
    itself (a trunk pretrained per machine) stayed apart for the whole run, rank 0's alone saved."""
    import aml.training.parallel as parallel

    shared = []
    monkeypatch.setattr(parallel, "DistributedDataParallel", lambda module, device_ids=None, **keyword: module)
    monkeypatch.setattr(parallel, "share_buffers", lambda module, world: shared.append((module, world)))
    net = build_network("squeezenet1_1", pretrained=False)
    Parallel(net, World(rank=1, size=2), torch.device("cpu"), 4, False)
    assert shared == [(net, World(rank=1, size=2))]


def test_buffers_are_not_broadcast_under_the_keyword_the_installed_torch_knows():
    class Before213:  # torch 2.11's DistributedDataParallel (the GPU machine's torch)
        def __init__(self, module, device_ids=None, broadcast_buffers=True):
            pass

    class Since213:
        def __init__(self, module, device_ids=None, broadcast_buffers=None, forward_sync_buffers=None):
            pass

    assert without_buffer_broadcast(Before213) == {"broadcast_buffers": False}
    assert without_buffer_broadcast(Since213) == {"forward_sync_buffers": False}
    installed = "forward_sync_buffers" if torch.__version__ >= (2, 13) else "broadcast_buffers"
    assert without_buffer_broadcast() == {installed: False}


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3", "efficientnet_lite0"])
def test_sync_batchnorm_keeps_the_network(arch):
    """Every BatchNorm becomes a SyncBatchNorm and the descriptors stay (torch's converter drops
    the activation inside timm's BatchNormAct2d: EfficientNet's came out at cosine 0.65)."""
    import copy

    torch.manual_seed(0)
    net = build_network(arch, pretrained=False).eval()
    synced = to_sync_batchnorm(copy.deepcopy(net))
    plain_norms = [m for m in synced.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                   and not isinstance(m, torch.nn.SyncBatchNorm)]
    assert plain_norms == [] and any(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules())
    x = torch.rand(2, 3, 64, 48)
    with torch.no_grad():
        assert torch.allclose(synced.descriptors(x), net.descriptors(x), atol=1e-6)


def test_synchronised_forwards_meet_the_shapes_in_the_order_of_the_whole_batch(monkeypatch):
    """Sorted, two processes updated BatchNorm's running statistics shape by shape in another
    order than one process (first met first), another network after a step."""
    import aml.training.parallel as parallel_module

    net = build_network("squeezenet1_1", pretrained=False)
    parallel = Parallel(net, World(), torch.device("cpu"), batch_size=4, sync_batchnorm=False)
    parallel.world, parallel.sync_batchnorm = World(rank=0, size=2), True  # as on 2 GPUs
    tall, wide, square = torch.zeros(3, 8, 6), torch.zeros(3, 6, 8), torch.zeros(3, 7, 7)
    ranks = [[tall, wide], [wide, square]]  # the global batch: tall, wide, wide, square
    monkeypatch.setattr(parallel_module, "gather_objects", lambda mine, world: [
        list(dict.fromkeys(tuple(image.shape) for image in part)) for part in ranks])
    assert parallel.shapes(ranks[0]) == ((3, 8, 6), (3, 6, 8), (3, 7, 7))


def test_batch_statistics_under_torchrun_on_the_cpu_are_refused_with_the_reason():
    """SyncBatchNorm shares batch statistics across processes on GPUs only (docs/distributed.md)."""
    from aml.utils.errors import ConfigError

    net = build_network("squeezenet1_1", pretrained=False)
    with pytest.raises(ConfigError, match=r"--train-batchnorm under torchrun needs CUDA"):
        Parallel(net, World(rank=0, size=2), torch.device("cpu"), batch_size=4, sync_batchnorm=True)


def test_autocast_with_synchronised_batchnorm_is_refused_under_torchrun(monkeypatch, tmp_path):
    """A rank's empty forward (a shape only another rank has) made SyncBatchNorm share bfloat16
    statistics where the others shared float32 ones: NCCL gathers buffers of two sizes."""
    from aml.cli import train as train_cli
    from aml.training import runner
    from aml.training.config import TrainSettings
    from aml.training.parallel import sync_batchnorm_problem

    both, cuda = TrainSettings(train_batchnorm=True, autocast=True), torch.device("cuda")
    assert sync_batchnorm_problem(both, World(), cuda) is None  # one process: no SyncBatchNorm
    assert sync_batchnorm_problem(TrainSettings(train_batchnorm=True), World(size=2), cuda) is None
    assert sync_batchnorm_problem(TrainSettings(autocast=True), World(size=2), cuda) is None
    for settings in (both, TrainSettings(train_batchnorm=True)):  # refused before any work (it was at the trainer)
        assert sync_batchnorm_problem(settings, World(size=2), torch.device("cpu")).startswith(
            "--train-batchnorm under torchrun needs CUDA")
    assert sync_batchnorm_problem(both, World(size=2), cuda).startswith("--amp with --train-batchnorm under torchrun")
    monkeypatch.setattr(runner, "init_from_environment", lambda *args: World(rank=0, size=2))
    monkeypatch.setattr(runner, "resolve_device", lambda *args: cuda)
    with pytest.raises(ValueError, match=r"--amp with --train-batchnorm under torchrun: .* train without one of them"):
        train_cli.main(["--directory", str(tmp_path), "-d", "synth-sfm", "-a", "squeezenet1_1", "--not-pretrained",
                        "-b", "4", "--train-batchnorm", "--amp", "--device", "cpu", "--epochs", "1"])
    assert not any(tmp_path.iterdir())  # refused before the run folder


def test_the_losses_of_every_rank_meet_in_one_tensor_collective(monkeypatch):
    """One all_gather of tensors per step (no pickled objects); a relational loss's values are
    rank 0's on every rank, so that all decide alike on their finiteness."""
    import torch.distributed as dist

    from aml.utils import distributed

    parallel = Parallel(build_network("squeezenet1_1", pretrained=False), World(), torch.device("cpu"), 4, False)
    parallel.world = World(rank=1, size=2)  # rank 1 of 2, its collective faked below
    monkeypatch.setattr(distributed, "_collective_device", lambda: torch.device("cpu"))
    calls = []

    def all_gather(parts, part):
        calls.append(part.shape)
        parts[0].copy_(torch.tensor([[0.5, 0.25]]))  # rank 0's values
        parts[1].copy_(part)

    monkeypatch.setattr(dist, "all_gather", all_gather)
    monkeypatch.setattr(dist, "all_gather_object", lambda *args: pytest.fail("losses pickled"))
    assert parallel.global_losses(torch.tensor([1.0, 2.0]), relational=False) == [0.5, 0.25, 1.0, 2.0]
    assert parallel.global_losses(torch.tensor([1.0, 2.0]), relational=True) == [0.5, 0.25]
    assert calls == [(1, 2), (1, 2)]
