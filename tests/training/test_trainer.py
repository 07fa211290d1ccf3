"""Optimizer groups, lr schedule, frozen BatchNorm, batched tuple encoding and shape-grouped batches."""

import math

import pytest
import torch

from aml.networks import build_network
from aml.training.batchnorm import freeze_batchnorm
from aml.training.optim import OPTIMIZERS, build_optimizer, parameter_groups, set_epoch_lr
from aml.training.modes import TrainingTuple
from aml.training.tuples import TupleItem, encode_batch, encode_images, shape_grouped_batches


def test_gem_p_gets_ten_times_lr_and_no_weight_decay():
    net = build_network("resnet18", pretrained=False, whitening=True)
    optimizer = build_optimizer(net, "adam", 1e-6, 0.9, 1e-6)
    groups = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    assert groups[id(net.pool.p)]["lr"] == pytest.approx(1e-5) and groups[id(net.pool.p)]["weight_decay"] == 0
    assert groups[id(net.features[0].weight)]["lr"] == 1e-6 and groups[id(net.features[0].weight)]["weight_decay"] == 1e-6
    assert id(net.whiten.weight) in groups
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(net.parameters()))


def test_projection_gets_its_own_lr_only_when_asked():
    net = build_network("mobilenet_v2", pretrained=False, teacher_dim=512)
    original = build_optimizer(net, "adam", 1e-3, 0.9, 1e-6)
    assert len(original.param_groups) == 2  # trunk (with the projection) and GeM p, as the original
    optimizer = build_optimizer(net, "adam", 1e-3, 0.9, 1e-6, projection_lr_mult=0.1)
    groups = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    assert groups[id(net.projection().weight)]["lr"] == pytest.approx(1e-4)
    assert groups[id(net.projection().weight)]["initial_lr"] == pytest.approx(1e-4)
    assert groups[id(net.features[0][0][0].weight)]["lr"] == 1e-3
    assert groups[id(net.pool.p)]["lr"] == pytest.approx(1e-2)
    assert len(groups) == len(list(net.parameters())) == sum(len(g["params"]) for g in optimizer.param_groups)
    set_epoch_lr(optimizer, 0)
    assert groups[id(net.projection().weight)]["lr"] == pytest.approx(1e-4 * math.exp(-0.01))


def test_sgd_and_exponential_decay_per_epoch():
    net = build_network("resnet18", pretrained=False)
    optimizer = build_optimizer(net, "sgd", 0.1, 0.9, 0.0)
    assert optimizer.param_groups[0]["momentum"] == 0.9
    set_epoch_lr(optimizer, 0)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * math.exp(-0.01))
    set_epoch_lr(optimizer, 99)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * math.exp(-1))
    assert optimizer.param_groups[1]["lr"] == pytest.approx(1.0 * math.exp(-1))


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_fused_step_on_the_cpu_is_the_step_of_the_loop_over_tensors(name):
    def stepped(fused):
        torch.manual_seed(0)
        net = build_network("resnet18", pretrained=False)
        if fused:
            optimizer = build_optimizer(net, name, 1e-2, 0.9, 1e-4)
        else:  # the original's update: one tensor at a time
            optimizer = OPTIMIZERS[name].build(parameter_groups(net, 1e-2, 1e-4), 1e-2, 0.9, 1e-4, None)
        for step in range(3):
            for k, p in enumerate(net.parameters()):
                p.grad = torch.full_like(p, 1e-3 * (k + step + 1))
            optimizer.step()
        return optimizer, [p.detach().clone() for p in net.parameters()]

    fused, after = stepped(True)
    loop, reference = stepped(False)
    assert all(g["fused"] for g in fused.param_groups) and not any(g["fused"] for g in loop.param_groups)
    assert max((a - b).abs().max().item() for a, b in zip(after, reference)) < 1e-7


def test_frozen_batchnorm_keeps_running_statistics():
    net = build_network("resnet18", pretrained=False)
    net.train()
    freeze_batchnorm(net)
    before = net.features[1].running_mean.clone()
    net(torch.rand(2, 3, 32, 32) * 5)
    assert torch.equal(before, net.features[1].running_mean)
    assert net.features[0].training and not net.features[1].training


def test_tuple_images_batched_equal_one_by_one_with_gradients():
    torch.manual_seed(0)
    net = build_network("resnet18", pretrained=False)
    net.train()
    freeze_batchnorm(net)
    images = [torch.rand(3, 40, 32), torch.rand(3, 32, 40), torch.rand(3, 40, 32)]
    teacher = torch.rand(512, 10)
    item = TupleItem(TrainingTuple((4, 4, 7, 9), (-1, 1, 0, 0), (False, True, False, False)), images)
    batch = encode_batch(net.descriptors, [item], torch.device("cpu"), teacher)
    single = torch.stack([net.descriptors(x[None])[0] for x in images])
    assert torch.allclose(batch.anchors[0], single[0], atol=1e-6)
    assert torch.allclose(batch.members[0, [1, 2]], single[1:], atol=1e-6)
    assert torch.equal(batch.members[0, 0], teacher[:, 4])
    assert batch.labels.tolist() == [[1, 0, 0]] and batch.target is None
    batch.members.sum().backward()
    assert net.features[0].weight.grad is not None
    assert encode_images(net.descriptors, images, torch.device("cpu")).shape == (3, 512)


def test_a_forward_of_an_empty_batch_is_reached_by_the_backward():
    """Under SyncBatchNorm every rank forwards every rank's image shapes, empty where it has
    none; its backward takes part in SyncBatchNorm's collectives only when reached, so the
    result must hold every forward (the values are the images' own)."""
    torch.manual_seed(0)
    net = build_network("resnet18", pretrained=False).eval()
    images = [torch.rand(3, 40, 32), torch.rand(3, 40, 32)]
    reached = []

    def encode(x):
        out = net.descriptors(x)
        if len(x) == 0:
            out.register_hook(lambda grad: reached.append(tuple(grad.shape)))
        return out

    shapes = [(3, 32, 40), (3, 40, 32), (3, 48, 48)]  # two shapes that other ranks hold
    encoded = encode_images(encode, images, torch.device("cpu"), shapes)
    assert torch.equal(encoded, encode_images(net.descriptors, images, torch.device("cpu")))
    encoded.sum().backward()
    assert reached == [(0, 512), (0, 512)]


def test_tuples_of_a_batch_encoded_together_equal_one_by_one_with_frozen_batchnorm():
    torch.manual_seed(0)
    net = build_network("resnet18", pretrained=False)
    net.train()
    freeze_batchnorm(net)
    teacher = torch.rand(512, 10)
    items = [TupleItem(TrainingTuple((q, q + 1, q + 2), (-1, 1, 0), (False, True, True)), [torch.rand(3, 40, 32)])
             for q in range(3)]
    together = encode_batch(net.descriptors, items, torch.device("cpu"), teacher)
    for b, item in enumerate(items):
        alone = encode_batch(net.descriptors, [item], torch.device("cpu"), teacher)
        assert torch.allclose(together.anchors[b], alone.anchors[0], atol=1e-6)
        assert torch.equal(together.members[b], teacher[:, [b + 1, b + 2]].t())


def test_a_batch_pads_shorter_tuples_and_takes_distances_from_the_teacher_matrix():
    teacher = torch.tensor([[1.0, 0.0, 0.6], [0.0, 1.0, 0.8]])  # columns: images 0, 1, 2
    net = lambda x: x.mean(dim=(2, 3))[:, :2]  # noqa: E731 - a 2-d "network"
    items = [TupleItem(TrainingTuple((2, 0, 1), (-1, 1, 0), (False, True, True)), [torch.ones(3, 4, 4)]),
             TupleItem(TrainingTuple((1, 0), (-1, 1), (False, True)), [torch.zeros(3, 4, 4)])]
    batch = encode_batch(net, items, torch.device("cpu"), teacher, target=True)
    assert torch.equal(batch.members[0], torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert batch.labels.tolist() == [[1, 0], [1, -1]]
    # ||t_m - t_2|| for m = 0, 1: sqrt(0.4^2 + 0.8^2), sqrt(0.6^2 + 0.2^2); ||t_0 - t_1|| = sqrt(2), then padding
    assert torch.allclose(batch.target, torch.tensor([[0.8 ** 0.5, 0.4 ** 0.5], [2 ** 0.5, 0.0]]))
    assert torch.equal(batch.anchors, torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="teacher's descriptors"):
        encode_batch(net, items, torch.device("cpu"), None, target=True)


def test_shape_grouped_batches_are_full_deterministic_and_homogeneous_where_possible():
    keys = ["a"] * 7 + ["b"] * 5 + ["c"] * 2
    batches = shape_grouped_batches(keys, 3, torch.Generator().manual_seed(4))
    assert batches == shape_grouped_batches(keys, 3, torch.Generator().manual_seed(4))
    assert batches != shape_grouped_batches(keys, 3, torch.Generator().manual_seed(5))
    assert all(len(b) == 3 for b in batches) and len(batches) == 4  # 14 items: 4 full batches, 2 dropped
    flat = [i for b in batches for i in b]
    assert len(set(flat)) == len(flat)
    homogeneous = [b for b in batches if len({keys[i] for i in b}) == 1]
    assert sorted(keys[b[0]] for b in homogeneous) == ["a", "a", "b"]  # a: 2 full, b: 1 full; rest mixed
