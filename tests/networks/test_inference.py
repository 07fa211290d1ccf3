"""The inference copy: BatchNorm folded into convolutions, same descriptors, network untouched."""

import copy
import re

import pytest
import torch

from aml.networks import BACKBONES, build_network
from aml.networks.inference import fold_sequential_pairs, fold_traced, has_batchnorm, inference_copy


def with_random_statistics(net):
    """BatchNorm with statistics and affine parameters far from identity (as trained ones are)."""
    generator = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=generator) - 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=generator) + 0.5)
            m.bias.data.copy_(torch.rand(m.bias.shape, generator=generator) * 0.4 - 0.2)
    return net


def one_per_family():
    """The smallest architecture of each family (resnet18 for the resnets, ...): the members
    of a family differ in depth and width, not in the kinds of layers the folding meets."""
    families = {}
    for arch, backbone in BACKBONES.items():
        family = (backbone.source, re.sub(r"\d+(_\d+)?$", "", arch))
        families.setdefault(family, []).append((backbone.dim, arch))
    return sorted(min(members)[1] for members in families.values())


def test_every_family_is_folded():
    assert len(one_per_family()) == 9 and {"resnet18", "mobilenet_v2", "mobilenet_v3"} <= set(one_per_family())


@pytest.mark.parametrize("arch", one_per_family())
def test_folded_copy_gives_the_same_descriptors(arch):
    torch.manual_seed(0)
    net = with_random_statistics(build_network(arch, pretrained=False))
    net.train()
    folded = inference_copy(net)
    assert net.training  # the network keeps its mode
    assert (folded is net) == (not has_batchnorm(net.features))  # nothing to fold: no copy
    assert folded is net or not folded.training
    x = torch.rand(2, 3, 72, 64)
    with torch.no_grad():
        net.eval()
        expected = net.descriptors(x)
        got = folded.descriptors(x)
    assert torch.allclose(expected, got, atol=1e-5), (expected - got).abs().max()
    if arch.startswith(("resnet", "mobilenet", "efficientnet")):  # every BatchNorm follows a convolution (densenet's
        assert not has_batchnorm(folded.features)  # precede them); efficientnet's Conv2dSame and BatchNormAct2d traced
        # as modules: it did not trace (the padding's arithmetic), and only its stem and head were folded
    assert has_batchnorm(net.features) == any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                                               for m in net.modules())  # the original keeps its layers


def test_a_weight_standardised_convolution_keeps_its_batchnorm():
    """timm's StdConv2d standardises its weights at every call: a scale folded into them would
    be undone, so its BatchNorm stays (traced or in a Sequential)."""
    from timm.layers import StdConv2d

    seq = with_random_statistics(torch.nn.Sequential(StdConv2d(3, 4, 3), torch.nn.BatchNorm2d(4))).eval()
    x = torch.rand(1, 3, 8, 8)
    expected = seq(x)
    assert fold_sequential_pairs(copy.deepcopy(seq)) == 0
    traced = torch.fx.symbolic_trace(copy.deepcopy(seq))
    assert fold_traced(traced) == 0
    assert torch.allclose(traced(x), expected, atol=1e-6)


def test_sequential_pairs_fold_in_place():
    seq = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.Conv2d(4, 4, 1), torch.nn.ReLU(), torch.nn.BatchNorm2d(4))
    with_random_statistics(seq).eval()
    x = torch.rand(1, 3, 8, 8)
    expected = seq(x)
    assert fold_sequential_pairs(seq) == 1  # the second BatchNorm follows a ReLU: left alone
    assert isinstance(seq[1], torch.nn.Identity) and isinstance(seq[5], torch.nn.BatchNorm2d)
    assert torch.allclose(seq(x), expected, atol=1e-6)


class _Branches(torch.nn.Module):
    """A convolution a BatchNorm alone reads (folded), one whose output a skip reads too, and
    one called twice (left as they are)."""

    def __init__(self):
        super().__init__()
        conv, norm = torch.nn.Conv2d, torch.nn.BatchNorm2d
        self.a, self.b, self.c = conv(3, 3, 3, padding=1), conv(3, 3, 1), conv(3, 3, 1)
        self.bn_a, self.bn_b, self.bn_c = norm(3), norm(3), norm(3)

    def forward(self, x):
        y = self.bn_a(self.a(x))
        z = self.b(y)
        return self.bn_b(z) + z + self.bn_c(self.c(self.c(y)))


def test_traced_pairs_fold_in_place():
    module = with_random_statistics(_Branches()).eval()
    x = torch.rand(1, 3, 8, 8)
    expected = module(x)
    traced = torch.fx.symbolic_trace(module)
    a = traced.a
    assert fold_traced(traced) == 1
    assert traced.a is a and not hasattr(traced, "bn_a")  # folded in place, the BatchNorm gone
    assert isinstance(traced.bn_b, torch.nn.BatchNorm2d) and isinstance(traced.bn_c, torch.nn.BatchNorm2d)
    assert torch.allclose(traced(x), expected, atol=1e-6)


def test_a_shared_convolution_is_left_as_it_is():
    """One convolution in two Sequentials, each with a BatchNorm after it: folding it for one
    would change the other."""
    conv = torch.nn.Conv2d(3, 3, 1)
    module = torch.nn.Sequential(torch.nn.Sequential(conv, torch.nn.BatchNorm2d(3)),
                                 torch.nn.Sequential(conv, torch.nn.BatchNorm2d(3)),
                                 torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), torch.nn.BatchNorm2d(3)))
    with_random_statistics(module).eval()
    x = torch.rand(1, 3, 8, 8)
    expected = module(x)
    assert fold_sequential_pairs(module) == 1  # the third pair only
    assert torch.allclose(module(x), expected, atol=1e-6)


def test_a_module_without_a_trunk_is_used_as_it_is():
    module = torch.nn.Linear(2, 2)
    assert inference_copy(module) is module


@pytest.mark.parametrize("arch, traces", [("resnet18", True), ("efficientnet_lite0", False)])
def test_the_network_is_copied_once(arch, traces, monkeypatch):
    """The fold copies the network once: fx's fuse copies the trunk a second time and each
    convolution a third, and a trunk that does not trace was copied before tracing failed (on
    CUDA, the copies' Python time is most of the fold's)."""
    import copy

    from aml.networks import inference

    def untraceable(self, root):
        raise torch.fx.proxy.TraceError("symbolically traced variables cannot be used as inputs to control flow")

    if not traces:  # every trunk of the table traces: one that does not, as a trunk of a library might
        monkeypatch.setattr(inference._NormActLeaves, "trace", untraceable)
    net = build_network(arch, pretrained=False)
    deepcopy, depth, copied = copy.deepcopy, [0], []

    def counting(x, memo=None, _nil=[]):
        if depth[0] == 0 and isinstance(x, torch.nn.Module):
            copied.append(type(x).__name__)
        depth[0] += 1
        try:
            return deepcopy(x, memo, _nil)
        finally:
            depth[0] -= 1

    monkeypatch.setattr(copy, "deepcopy", counting)
    inference_copy(net)
    assert copied == ["ImageRetrievalNet"]  # torch's fuse_conv_bn_eval copies every convolution again


def test_a_training_network_keeps_its_frozen_batchnorm():
    """Each module's mode comes back, not the network's alone (train() would unfreeze them)."""
    from aml.training.batchnorm import freeze_batchnorm

    net = build_network("resnet18", pretrained=False).train()
    freeze_batchnorm(net)
    modes = {name: module.training for name, module in net.named_modules()}
    inference_copy(net)
    assert {name: module.training for name, module in net.named_modules()} == modes
    assert net.training and not net.features[1].training  # the trunk's first BatchNorm
