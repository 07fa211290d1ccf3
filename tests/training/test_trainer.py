"""Optimizer groups, lr schedule, frozen BatchNorm, batched tuple encoding and shape-grouped batches."""

import math

import pytest
import torch

from aml.networks import build_network
from aml.training.optim import OPTIMIZERS, build_optimizer, freeze_batchnorm, parameter_groups, set_epoch_lr
from aml.training.tuples import encode_images, encode_tuples, shape_grouped_batches


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
            optimizer = OPTIMIZERS[name](parameter_groups(net, 1e-2, 1e-4), 1e-2, 0.9, 1e-4, None)
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
    item = {"images": images, "image_slots": [0, 2, 3], "teacher_slots": [1], "teacher": torch.rand(512, 1),
            "labels": torch.tensor([-1.0, 1, 0, 0])}
    batched = encode_tuples(net.descriptors, [item], torch.device("cpu"))[0]
    single = torch.stack([net.descriptors(x[None])[0] for x in images], dim=1)
    assert torch.allclose(batched[:, [0, 2, 3]], single, atol=1e-6)
    assert torch.equal(batched[:, 1], item["teacher"][:, 0])
    batched.sum().backward()
    assert net.features[0].weight.grad is not None
    assert encode_images(net.descriptors, images, torch.device("cpu")).shape == (3, 512)


def test_tuples_of_a_batch_encoded_together_equal_one_by_one_with_frozen_batchnorm():
    torch.manual_seed(0)
    net = build_network("resnet18", pretrained=False)
    net.train()
    freeze_batchnorm(net)
    items = [{"images": [torch.rand(3, 40, 32)], "image_slots": [0], "teacher_slots": [1, 2],
              "teacher": torch.rand(512, 2), "labels": torch.tensor([-1.0, 1, 0])} for _ in range(3)]
    together = encode_tuples(net.descriptors, items, torch.device("cpu"))
    for item, out in zip(items, together):
        assert torch.allclose(out, encode_tuples(net.descriptors, [item], torch.device("cpu"))[0], atol=1e-6)
        assert torch.equal(out[:, 1:], item["teacher"])


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


def test_with_teacher_takes_columns_and_distances_from_the_teacher_matrix():
    from aml.training.tuples import with_teacher

    teacher = torch.tensor([[1.0, 0.0, 0.6], [0.0, 1.0, 0.8]])  # columns: images 0, 1, 2
    item = {"members": [2, 0, 1], "teacher_slots": [1, 2], "image_slots": [0]}
    with_teacher([item], teacher)
    assert torch.equal(item["teacher"], torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    # ||t_m - t_2|| for m = 2, 0, 1: 0, sqrt(0.4^2 + 0.8^2), sqrt(0.6^2 + 0.2^2)
    assert torch.allclose(item["target"], torch.tensor([0.0, 0.8 ** 0.5, 0.4 ** 0.5]))
    with_teacher([item], None)
    assert item["teacher"] is None and item["target"] is None
