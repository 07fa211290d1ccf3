"""--device: a name that is not a device, or one this machine lacks, is one line naming it."""

import pytest
import torch

from aml.utils.devices import DeviceError, parse_device, resolve_device


@pytest.mark.parametrize("name, message", [("foo", "--device 'foo' is not a device; give auto, cpu, cuda or cuda:N"),
                                           ("cuda:-1", "--device 'cuda:-1' is not a device"),
                                           ("meta", "--device 'meta': aml runs on cpu, cuda, mps devices")])
def test_a_name_that_is_not_a_device_is_named(name, message):
    with pytest.raises(DeviceError, match=message):
        resolve_device(name)


def test_devices_this_machine_lacks_are_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match="--device cuda:1: CUDA is not available on this machine"):
        resolve_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto", "1,0") == torch.device("cuda:1") and parse_device("cuda:1").index == 1
    with pytest.raises(DeviceError, match="--device cuda:2: this machine has 2 GPU"):
        resolve_device("cuda:2")
    with pytest.raises(DeviceError, match="--gpu-id 'x' is not a GPU number"):
        resolve_device("auto", "x")


def test_a_device_without_a_number_is_the_current_one(monkeypatch):
    """extract_vectors copied the network at every call for --device cuda: a parameter sits on
    cuda:0, and torch.device('cuda:0') == torch.device('cuda') is False."""
    from aml.utils.devices import same_device

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    cuda = torch.device("cuda")
    assert torch.device("cuda:0") != cuda  # what the comparison was
    assert same_device(torch.device("cuda:1"), cuda) and not same_device(torch.device("cuda:0"), cuda)
    assert same_device(torch.device("cuda:0"), torch.device("cuda:0")) and not same_device(cuda, torch.device("cpu"))
    assert same_device(torch.device("cpu"), torch.device("cpu"))


def test_python_calls_on_a_device_this_machine_lacks_get_amls_error(monkeypatch):
    """ExtractionConfig(device='cuda'), rank_database(device='cuda') and DBA on a machine without
    CUDA ended in torch's RuntimeError at the first copy (main.py's --device got aml's line)."""
    import numpy as np

    from aml.descriptors import ExtractionConfig
    from aml.evaluation import database_augmentation, rank_database
    from aml.evaluation.ranking import nearest

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = ExtractionConfig(device="cuda")
    with pytest.raises(DeviceError, match=r"ExtractionConfig\(device='cuda'\): CUDA is not available on this "
                                          r"machine; use 'cpu'$"):
        config.device_for()
    assert config.pixel_path() == "workers-fp16"  # a GPU's descriptors are still named on the CPU
    database = np.eye(4, dtype=np.float32)
    for call in (lambda: rank_database(database, database[:, :1], device="cuda"),
                 lambda: nearest(database, database[:, :1], 1, device="cuda"),
                 lambda: database_augmentation(database, 1, device="cuda:1")):
        with pytest.raises(DeviceError, match=r"device='cuda(:1)?': CUDA is not available on this machine; use 'cpu'"):
            call()
    with pytest.raises(DeviceError, match=r"device='gpu': 'gpu' is not a device"):
        rank_database(database, database[:, :1], device="gpu")


def test_a_device_is_labelled_with_its_gpus_model(monkeypatch):
    from aml.utils.devices import device_label

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: f"GPU model of {torch.device(device)}")
    assert device_label("cuda") == "cuda:2 (GPU model of cuda)"  # no number: the current GPU
    assert device_label("cuda:1") == "cuda:1 (GPU model of cuda:1)"
    assert device_label(torch.device("cpu")) == "the CPU" and device_label("mps") == "mps"
