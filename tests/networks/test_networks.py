import pytest
import torch

from aml.networks import build_network, init_network, multiscale_power
from aml.networks.backbones import BACKBONES, build_trunk
from aml.networks.retrieval_net import output_dimension


def test_student_gets_projection_to_teacher_dimension():
    net = build_network("mobilenet_v2", pretrained=False, teacher="resnet101")
    assert net.meta["outputdim"] == 2048
    assert net.features[1].weight.shape == (2048, 1280, 1, 1) and net.features[1].bias is None
    assert isinstance(net.features[2], torch.nn.ReLU)
    assert net.projection() is net.features[1]
    # any trunk: a resnet18 recorded as resnet101's student was 512-d, a space its teacher's database is not in
    other = init_network({"architecture": "resnet18", "pretrained": False, "teacher": "resnet101"})
    assert other.meta["outputdim"] == 2048 and other.projection().weight.shape == (2048, 512, 1, 1)
    assert build_network("resnet18", pretrained=False, teacher="vgg16").projection() is None  # 512 already


def test_init_network_keeps_a_trunks_width_with_the_originals_default_teacher():
    """The original's test.py passed teacher='vgg16' for every network: a published ResNet101
    teacher then got a 1x1 projection to 512, and its state_dict did not load."""
    net = init_network({"architecture": "resnet101", "pooling": "gem", "pretrained": False, "teacher": "vgg16"})
    assert net.meta["outputdim"] == 2048 and net.projection() is None and "teacher" not in net.meta
    net.load_state_dict(build_network("resnet101", pretrained=False).state_dict())
    named = init_network({"architecture": "resnet101", "pretrained": False, "teacher": "retrievalSfM120k-vgg16-gem"})
    assert named.meta["outputdim"] == 2048 and "teacher" not in named.meta  # the alias's full name: alike
    spread = init_network({**net.meta, "pretrained": False, "teacher": "vgg16"})  # a meta spread: outputdim too
    assert spread.meta["outputdim"] == 2048 and "teacher" not in spread.meta
    student = init_network({"architecture": "mobilenet_v2", "pretrained": False, "teacher": "vgg16"})
    assert student.meta["outputdim"] == 512 and student.meta["teacher"] == "vgg16"  # a student projects, as there
    # a timm trunk, which the original never had, keeps its width as main.py's std runs of one do (the
    # two built it apart); another teacher projects it
    vit = init_network({"architecture": "timm:test_vit", "pretrained": False, "teacher": "vgg16"})
    assert vit.meta["outputdim"] == 64 and vit.projection() is None and "teacher" not in vit.meta
    assert init_network({"architecture": "timm:test_vit", "pretrained": False, "teacher": "resnet101"}
                        ).meta["outputdim"] == 2048


@pytest.mark.parametrize("architecture, width", [("densenet121", 1024), ("densenet161", 2208)])
def test_init_network_keeps_a_densenets_width_with_the_resnet101_teacher_as_the_original(architecture, width):
    """The original's table for teacher='resnet101' listed DenseNets at their own width: they got
    a random 1x1 projection to 2048 (and no published whitening) without a word."""
    net = init_network({"architecture": architecture, "pretrained": False, "teacher": "resnet101"})
    assert net.meta["outputdim"] == width and net.projection() is None and "teacher" not in net.meta
    spread = init_network({**net.meta, "pretrained": False, "teacher": "resnet101"})  # a meta spread: outputdim too
    assert spread.meta["outputdim"] == width and spread.projection() is None
    # a resnet18 (a KeyError there) is projected, and main.py's students of resnet101 are 2048-d
    assert init_network({"architecture": "resnet18", "pretrained": False, "teacher": "resnet101"}).projection()
    assert build_network(architecture, pretrained=False, teacher="resnet101").meta["outputdim"] == 2048


def test_projection_is_found_only_where_there_is_one():
    assert build_network("resnet18", pretrained=False).projection() is None  # ends with a residual stage
    assert build_network("vgg16", pretrained=False).projection() is None  # 3x3 conv + ReLU
    projected = build_network("resnet18", pretrained=False, teacher_dim=256)
    assert projected.projection().weight.shape == (256, 512, 1, 1)


def test_output_is_columns_of_unit_norm():
    net = build_network("resnet18", pretrained=False).eval()
    out = net(torch.rand(3, 3, 64, 48))
    assert out.shape == (512, 3)
    assert torch.allclose(out.norm(dim=0), torch.ones(3), atol=1e-5)


def test_teacher_trunk_keeps_native_width_unless_asked():
    assert output_dimension("resnet18", teacher="resnet101") == 512
    assert output_dimension("resnet18", teacher_dim=2048) == 2048
    net = build_network("resnet18", pretrained=False, teacher_dim=256).eval()
    assert net(torch.rand(1, 3, 32, 32)).shape == (256, 1)


def test_whitening_layers_and_regional_pooling():
    net = build_network("resnet18", "gem", local_whitening=True, regional=True, whitening=True, pretrained=False)
    keys = net.state_dict().keys()
    assert {"lwhiten.weight", "whiten.weight", "pool.rpool.p", "pool.whiten.weight"} <= set(keys)
    out = net.eval()(torch.rand(1, 3, 64, 64))
    assert out.shape == (512, 1)


def test_msp_is_gem_p_only_for_plain_gem_multiscale():
    net = build_network("resnet18", pretrained=False)
    assert multiscale_power(net, [1]) == 1.0
    assert multiscale_power(net, [1, 0.5]) == pytest.approx(3.0)
    assert multiscale_power(build_network("resnet18", "mac", pretrained=False), [1, 0.5]) == 1.0
    assert multiscale_power(build_network("resnet18", whitening=True, pretrained=False), [1, 0.5]) == 1.0


def test_unknown_architecture_and_pooling_are_clear_errors():
    with pytest.raises(ValueError, match="unknown architecture .resnet9000.; choose one of "):
        build_network("resnet9000", pretrained=False)
    with pytest.raises(ValueError, match="pooling"):
        build_network("resnet18", "avgmax", pretrained=False)
    with pytest.raises(ValueError, match="unknown parameters"):
        init_network({"architecture": "resnet18", "gpu": True})


def test_init_network_is_cirtorch_compatible_and_device_agnostic():
    net = init_network({"architecture": "vgg16", "pooling": "gem", "pretrained": False})
    assert net.meta["outputdim"] == 512
    assert all(p.device.type == "cpu" for p in net.parameters())


def test_init_network_takes_a_checkpoint_meta_as_cirtorch_code_passes_it():
    import numpy as np

    lw = {"retrieval-SfM-120k": {"ss": {"m": np.zeros((512, 1)), "P": np.eye(512)}}}
    meta = {"architecture": "vgg16", "local_whitening": False, "pooling": "gem", "regional": False,
            "whitening": False, "mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2], "outputdim": 512, "Lw": lw}
    net = init_network({**meta, "pretrained": False})
    assert net.meta["outputdim"] == 512 and net.meta["Lw"] is lw and net.meta["mean"] == [0.5, 0.5, 0.5]
    student = init_network({"architecture": "mobilenet_v2", "pooling": "gem", "outputdim": 2048, "teacher": "resnet101",
                            "seed": 3, "pretrained": False})
    assert student.projection().out_channels == 2048 and student.meta["seed"] == 3
    with pytest.raises(ValueError, match="outputdim 2048 disagrees with the teacher's dimension 512"):
        init_network({"architecture": "mobilenet_v2", "outputdim": 2048, "teacher": "vgg16", "pretrained": False})
    with pytest.raises(ValueError, match=r"unknown parameters \['outputdims'\]"):
        init_network({**meta, "pretrained": False, "outputdims": 512})


def test_pretrained_without_internet_names_file_and_place(tmp_path, monkeypatch):
    from aml.data import download

    def refuse(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(download.urllib.request, "urlopen", refuse)
    with pytest.raises(download.DownloadError) as info:
        build_network("resnet18", pretrained=True, data_root=str(tmp_path))
    message = str(info.value)
    assert "resnet18-f37072fd.pth" in message and str(tmp_path / "networks") in message


def test_timm_students_build():
    pytest.importorskip("timm")
    net = build_network("efficientnet_b3", pretrained=False, teacher="vgg16").eval()
    assert net(torch.rand(1, 3, 64, 64)).shape == (512, 1)
    assert net.state_dict()["features.5.weight"].shape == (512, 1536, 1, 1)


def test_published_whitening_layers_are_not_loaded_after_a_projection_and_a_damaged_one_is_named(tmp_path,
                                                                                                  monkeypatch):
    """-a resnet50 -w with a vgg16 teacher: the 2048-d published whitening went into a 512-d
    layer after the projection (a size-mismatch traceback after the teacher's extraction); a
    file of other bytes under its name was loaded, and a damaged one gave an IndexError."""
    from aml.data import download
    from aml.data.download import DownloadError
    from aml.networks.checkpoint import CheckpointError
    from aml.networks.pretrained import FINAL_WHITENING
    from aml.networks.retrieval_net import _load_published_layers

    projected = build_network("resnet50", "gem", whitening=True, teacher_dim=512, pretrained=False)
    before = projected.whiten.weight.clone()
    _load_published_layers(projected, tmp_path)  # nothing to download, nothing loaded
    assert torch.equal(projected.whiten.weight, before) and not (tmp_path / "whiten").exists()
    own = build_network("resnet50", "gem", whitening=True, pretrained=False)
    path = tmp_path / "whiten" / FINAL_WHITENING["resnet50-gem"].rsplit("/", 1)[1]
    path.parent.mkdir()
    torch.save({"weight": torch.zeros(512, 512), "bias": torch.zeros(512)}, path)  # another layer's
    with pytest.raises(DownloadError, match=rf"{path.name} is not the file .* names"):  # its name's hash
        _load_published_layers(own, tmp_path)
    monkeypatch.setattr(download, "download_file", lambda url, dest, **kwargs: dest)  # as if it had passed
    with pytest.raises(CheckpointError, match=rf"{path.name} does not hold the resnet50-gem whitening layer .*delete "
                                              r"it to download it again"):
        _load_published_layers(own, tmp_path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=path.name):
        _load_published_layers(own, tmp_path)


def test_a_network_built_with_numpy_statistics_saves_a_checkpoint_that_loads(tmp_path):
    """mean/std given as numpy numbers were stored as they were, and the checkpoint was then
    refused as 'damaged or edited'."""
    import numpy as np

    from aml.networks.checkpoint import checkpoint_state, load_network, save_checkpoint

    net = build_network("resnet18", pretrained=False, mean=list(np.float32([0.5] * 3)), std=list(np.float64([0.25] * 3)))
    assert all(type(v) is float for v in net.meta["mean"] + net.meta["std"])
    path = save_checkpoint(checkpoint_state(net, 1, 0.0), tmp_path / "net.pth.tar")
    assert load_network(path).meta["std"] == [0.25, 0.25, 0.25]


@pytest.mark.parametrize("arch", sorted(BACKBONES))
def test_every_backbone_gives_the_width_its_entry_declares(arch):
    """Only one backbone per family was ever built: a declared width that the trunk does not
    give (meta['outputdim'] then says another dimension than the descriptors have) went unseen.
    Built on the meta device: shapes without weights or arithmetic."""
    with torch.device("meta"):
        trunk = torch.nn.Sequential(*build_trunk(arch, False, None))
        width = trunk(torch.empty(1, 3, 64, 64)).shape[1]
        net = build_network(arch, pretrained=False)
    assert width == BACKBONES[arch].dim
    projection = net.projection()
    assert net.meta["outputdim"] == (projection.out_channels if projection is not None else width)
    assert projection is None or projection.in_channels == width


def test_a_misspelled_teacher_or_a_network_given_as_a_name_is_refused():
    """teacher="resnet-101" built a 512-d student without a word (recorded as its teacher); a
    network object where a name belongs was read as a path: "File name too long"."""
    from aml.networks import LoadedNetwork, load_named_or_file
    from aml.utils.errors import ConfigError

    with pytest.raises(ConfigError, match=r"unknown teacher 'resnet-101': name a published one \(resnet101, vgg16"):
        build_network("mobilenet_v2", pretrained=False, teacher="resnet-101")
    assert build_network("mobilenet_v2", pretrained=False, teacher="/my/teacher.pth.tar",
                         teacher_dim=64).meta["outputdim"] == 64
    net = build_network("resnet18", pretrained=False)
    with pytest.raises(ConfigError, match=r"published name or a checkpoint path, got a LoadedNetwork"):
        load_named_or_file(LoadedNetwork.in_memory(net, "r18"))


def test_a_teacher_dim_that_is_no_dimension_is_refused_and_numpy_statistics_are_taken():
    """teacher_dim=0 was ignored without a word and -5 was torch's RuntimeError; a numpy mean
    was "the truth value of an array is ambiguous"."""
    import numpy as np

    from aml.utils.errors import ConfigError

    for dim in (0, -5, 2.5, True):
        with pytest.raises(ConfigError, match=r"teacher_dim .*: the dimension to project to is a whole number > 0"):
            build_network("resnet18", pretrained=False, teacher_dim=dim)
    net = build_network("resnet18", pretrained=False, mean=np.array([0.5, 0.5, 0.5]), std=np.array([0.25] * 3))
    assert net.meta["mean"] == [0.5] * 3 and net.meta["std"] == [0.25] * 3


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_a_network_converted_to_another_dtype_runs_with_its_head_in_float32_or_more(dtype):
    """The head ran in float32 whatever the weights: a network converted with .half(),
    .bfloat16() or .double(), as cirtorch users do for inference, ended in a dtype error where
    its head has weights (a whitening, a student's projection); a 16-bit head would overflow."""
    head = torch.float64 if dtype == torch.float64 else torch.float32
    for net in (build_network("resnet18", pretrained=False, whitening=True),
                build_network("mobilenet_v2", pretrained=False, teacher_dim=256),
                build_network("resnet18", pretrained=False, pooling="mac")):
        reference = net.eval().to(head)
        images = torch.rand(2, 3, 64, 48)
        with torch.no_grad():
            expected = reference.descriptors(images.to(head))
            converted = net.to(dtype)
            out = converted(images.to(dtype))
        assert out.dtype == head and out.shape[1] == 2 and all(p.dtype == dtype for p in converted.parameters())
        # the trunk ran in the 16-bit dtype, the head in float32: no overflow, rounding only
        assert torch.allclose(out.T, expected, atol=0.05 if dtype != torch.float64 else 1e-12)
    big = build_network("resnet18", pretrained=False).eval()  # GeM's x^p of activations past 40 overflows float16
    with torch.no_grad():
        big.features[-1][-1].bn2.weight.mul_(60.0)
        half = big.half()(torch.rand(1, 3, 64, 48).half())
    assert torch.isfinite(half).all()
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():  # autocast: the head stays float32
        assert build_network("resnet18", pretrained=False).eval()(torch.rand(1, 3, 64, 48)).dtype == torch.float32
