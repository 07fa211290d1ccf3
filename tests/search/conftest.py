"""The search tests' networks."""

import pytest
import torch

from aml.networks import build_network
from aml.networks.checkpoint import checkpoint_state, save_checkpoint


@pytest.fixture(scope="module")
def random_teacher(tmp_path_factory):
    """A random resnet18 (calibrated BatchNorm) and a student that records it as its teacher."""
    from aml.training.batchnorm import calibrate_batchnorm

    folder = tmp_path_factory.mktemp("random")
    torch.manual_seed(3)
    net = build_network("resnet18", pretrained=False)
    calibrate_batchnorm(net, [torch.rand(8, 3, 64, 64)])
    state = checkpoint_state(net, 0, 0.0)
    teacher = save_checkpoint(state, folder / "teacher.pth.tar")
    state["meta"]["teacher"] = str(teacher)
    return teacher, save_checkpoint(state, folder / "student.pth.tar")
