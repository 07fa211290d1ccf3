"""BatchNorm in training: frozen statistics, and the calibration of a random trunk whose
activations vanish."""

import torch

from aml.networks import build_network
from aml.training.batchnorm import VANISHING, calibrate_batchnorm, calibrate_if_vanishing


def images(count=20):
    generator = torch.Generator().manual_seed(0)
    return {f"img{i}.jpg": torch.rand(3, 48 if i % 2 else 40, 48, generator=generator) for i in range(count)}


def test_a_random_mobilenet_is_calibrated_once_and_then_no_longer_vanishes():
    torch.manual_seed(0)
    net = build_network("mobilenet_v2", pretrained=False, teacher_dim=64)
    pool = images()
    with torch.no_grad():
        net.eval()
        before = net.features(torch.stack([pool["img0.jpg"]])).abs().mean().item()
    assert before < VANISHING  # identity BatchNorm: the activations sink below GeM's eps
    assert calibrate_if_vanishing(net, list(pool), pool.__getitem__, torch.Generator().manual_seed(1), torch.device("cpu"))
    with torch.no_grad():
        net.eval()
        after = net.features(torch.stack([pool["img0.jpg"]])).abs().mean().item()
    assert after > 100 * VANISHING
    assert not calibrate_if_vanishing(net, list(pool), pool.__getitem__, torch.Generator().manual_seed(1),
                                      torch.device("cpu"))


def test_calibration_sets_the_running_statistics_to_the_data_and_restores_the_mode():
    net = torch.nn.Sequential(torch.nn.BatchNorm2d(3))
    net.eval()
    batches = [torch.full((2, 3, 4, 4), 2.0), torch.full((2, 3, 4, 4), 4.0)]
    assert calibrate_batchnorm(net, batches) == 4
    assert torch.allclose(net[0].running_mean, torch.full((3,), 3.0))  # the cumulative mean of the batches' means
    assert not net.training and net[0].momentum == 0.1


def test_calibration_keeps_every_modules_mode():
    """A training network with frozen BatchNorm comes back so, calibrated or not."""
    from aml.training.batchnorm import freeze_batchnorm

    torch.manual_seed(0)
    net = build_network("mobilenet_v2", pretrained=False, teacher_dim=64).train()
    freeze_batchnorm(net)
    modes = {name: module.training for name, module in net.named_modules()}
    pool = images()
    for expected in (True, False):  # calibrated, then found not vanishing
        assert calibrate_if_vanishing(net, list(pool), pool.__getitem__, torch.Generator().manual_seed(1),
                                      torch.device("cpu")) == expected
        assert {name: module.training for name, module in net.named_modules()} == modes
    calibrate_batchnorm(net, [torch.stack([pool["img0.jpg"]])])
    assert {name: module.training for name, module in net.named_modules()} == modes


def test_under_torchrun_rank_0_decides_whether_to_calibrate(monkeypatch):
    """Each rank measured its own level: ranks near the threshold could decide apart, and with
    SyncBatchNorm the calibration's forwards are collectives the others never join."""
    from aml.training import batchnorm
    from aml.utils.distributed import World

    monkeypatch.setattr(batchnorm, "current_world", lambda: World(rank=1, size=2))
    said = []

    def rank_0s(value, world):
        said.append((value, world.size))
        return 1.0  # rank 0 measured activations that do not vanish

    monkeypatch.setattr(batchnorm, "from_main", rank_0s)
    torch.manual_seed(0)
    net = build_network("mobilenet_v2", pretrained=False, teacher_dim=64)
    pool = images()
    assert not calibrate_if_vanishing(net, list(pool), pool.__getitem__, torch.Generator().manual_seed(1),
                                      torch.device("cpu"))
    assert len(said) == 1 and said[0][0] < VANISHING and said[0][1] == 2  # its own level vanished


def test_under_torchrun_every_rank_takes_rank_0s_calibrated_statistics(monkeypatch):
    """Each rank kept the statistics it computed itself (DistributedDataParallel broadcasts no
    buffers): on CUDA, a few bits apart for the whole run, while rank 0's alone were saved."""
    import torch.distributed as dist

    from aml.training import batchnorm
    from aml.utils.distributed import World

    sent = []
    monkeypatch.setattr(batchnorm, "current_world", lambda: World(rank=1, size=2))
    monkeypatch.setattr(dist, "broadcast_object_list", lambda box, src: box.__setitem__(0, 0.0))  # rank 0: vanishing
    monkeypatch.setattr(dist, "broadcast", lambda tensor, src: sent.append((tensor, src)))
    torch.manual_seed(0)
    net = build_network("mobilenet_v2", pretrained=False, teacher_dim=64)
    pool = images()
    assert calibrate_if_vanishing(net, list(pool), pool.__getitem__, torch.Generator().manual_seed(1), torch.device("cpu"))
    assert {id(tensor) for tensor, _ in sent} == {id(buffer) for buffer in net.buffers()}
    assert {src for _, src in sent} == {0}
