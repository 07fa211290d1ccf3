"""Any timm model by name (``timm:<model>[.<tag>][+<readout>]``): parsed, built, weights found
offline and loaded, checkpoints, BatchNorm folding; random weights, tiny images."""

import re

import pytest
import torch
from torch import nn

timm = pytest.importorskip("timm")

from aml.data import download  # noqa: E402
from aml.networks import BACKBONES, build_network, get_backbone  # noqa: E402
from aml.networks.backbones import library_model, load_weights  # noqa: E402
from aml.networks.checkpoint import checkpoint_state, load_network, load_trunk_weights, save_checkpoint  # noqa: E402
from aml.networks.imagenet import MIRROR_ENV, WeightsError, find_weights, get_imagenet_weights  # noqa: E402
from aml.networks.inference import has_batchnorm, inference_copy  # noqa: E402
from aml.networks.timm_trunk import TimmTrunk  # noqa: E402
from aml.utils.errors import ConfigError  # noqa: E402

# timm's own test models (a few hundred thousand weights): the families' layers at a small size
VIT = "timm:test_vit"  # 64-d, patch 16, a class token, mean = std = 0.5 in timm's config
CNN = "timm:test_convnext"  # 64-d, LayerNorm, a classifier head with a norm of its own


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network, no mirror, empty caches: every download attempt fails at once."""
    def refuse(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(download.urllib.request, "urlopen", refuse)
    monkeypatch.setattr(download.time, "sleep", lambda seconds: None)
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch-hub"))
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-hub"))


def test_timm_names_are_a_family_parsed_from_the_name():
    assert not any(name.startswith("timm:") for name in BACKBONES)  # no hand list: any timm model
    vit, cls, cnn = get_backbone(VIT), get_backbone(VIT + "+cls"), get_backbone(CNN)
    assert (vit.dim, cls.dim, cnn.dim) == (64, 64, 64) and not vit.student
    weights = get_imagenet_weights(VIT)
    assert weights.mean == weights.std == (0.5, 0.5, 0.5)  # from timm's pretrained config
    assert get_imagenet_weights("timm:convnext_atto").mean == (0.485, 0.456, 0.406)
    dinov2 = get_imagenet_weights("timm:vit_small_patch14_dinov2.lvd142m")
    assert [f.filename for f in dinov2.files] == ["vit_small_patch14_dinov2.lvd142m.safetensors",
                                                  "dinov2_vits14_pretrain.pth"]
    assert [f.sha256 for f in get_imagenet_weights("timm:convnext_atto").files] == [None, "01bb0f51"]  # in its name
    for name, message in ((CNN + "+cls", "not tokens: drop \\+cls"), (VIT + "+mean", "unknown readout 'mean'"),
                          ("timm:convnext_atto.nope", "no pretrained tag 'nope'; its tags: d2_in1k"),
                          ("timm:vit_tinyy_patch16_224", "no model 'vit_tinyy_patch16_224'"),
                          ("timm:swin_tiny_patch4_window7_224", "does not take images of any size and aspect ratio"),
                          ("timm", "unknown architecture"),
                          (CNN + "+", "nothing follows '\\+'; drop it"), (VIT + "+", "nothing follows '\\+'; drop it"),
                          # a register token first, no class token: +cls pooled the register without a word
                          ("timm:test_vit2+cls", "test_vit2 has no class token; use \\+patch"),
                          ("timm:vit_betwixt_patch16_reg4_gap_256+cls", "has no class token")):
        with pytest.raises(ConfigError, match=message) as info:  # one line from the command lines
            get_backbone(name)
        assert "\n" not in str(info.value)
    from aml.networks.timm_trunk import parse_timm_spec  # a meta model built and probed once per name

    parse_timm_spec(VIT.removeprefix("timm:"))
    hits = parse_timm_spec.cache_info().hits
    parse_timm_spec(VIT.removeprefix("timm:"))
    assert parse_timm_spec.cache_info().hits == hits + 1


def test_a_model_without_a_release_builds_and_says_so_when_asked_for_weights(offline, tmp_path):
    arch = "timm:test_vit4"  # timm's config names no file for it
    assert get_imagenet_weights(arch).files == () and build_network(arch, pretrained=False).meta["outputdim"] == 96
    with pytest.raises(WeightsError, match="no file of pretrained weights that aml reads is known .*--not-pretrained"):
        build_network(arch, pretrained=True, data_root=str(tmp_path))


def test_a_vit_trunk_gives_its_patch_tokens_on_their_grid_or_its_class_token():
    torch.manual_seed(0)
    net = build_network(VIT, pretrained=False).eval()
    trunk = net.features[0]
    x = torch.rand(2, 3, 40, 70)  # not multiples of 16: padded to 48 x 80, a 3 x 5 grid
    with torch.no_grad():
        tokens = trunk.body.forward_features(x)
        patches = trunk(x)
        cls = TimmTrunk(trunk.body, "cls")(x)
    assert tokens.shape == (2, 1 + 15, 64) and patches.shape == (2, 64, 3, 5)
    assert torch.equal(patches[:, :, 1, 2], tokens[:, 1 + 1 * 5 + 2])  # row-major patches after the class token
    assert cls.shape == (2, 64, 1, 1) and torch.equal(cls[:, :, 0, 0], tokens[:, 0])
    assert net.descriptors(x).shape == (2, 64) and net.meta["architecture"] == VIT


@pytest.mark.parametrize("arch", [VIT, VIT + "+cls", CNN, "timm:mobilenetv3_small_050"])
def test_every_parameter_of_a_timm_student_learns(arch):
    """No trainable parameter is left without a gradient (the dropped head, the frozen layers its
    features never run): DDP needs them all used."""
    torch.manual_seed(0)
    net = build_network(arch, pretrained=False, teacher_dim=48)
    assert net.projection() is not None and net.meta["outputdim"] == 48
    net.descriptors(torch.rand(2, 3, 32, 48)).sum().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_the_head_layers_its_features_never_run_are_frozen_and_kept(tmp_path):
    """MobileNetV3's conv_head sits in timm's head, outside its classifier: trainable in the
    trunk, it never got a gradient, and DistributedDataParallel stopped at the first step.
    Frozen, it stays in checkpoints (those of earlier versions load, their fingerprints kept)."""
    from aml.training.optim import build_optimizer

    net = build_network("timm:mobilenetv3_small_050", pretrained=False)
    head = net.features[0].body.conv_head
    assert not any(p.requires_grad for p in head.parameters())
    assert sum(p.requires_grad for p in net.parameters()) == len(list(net.parameters())) - len(list(head.parameters()))
    net.descriptors(torch.rand(2, 3, 32, 48)).sum().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
    build_optimizer(net, "adam", 1e-3, 0.9, 1e-6).step()  # no gradient: left as it is
    loaded = load_network(save_checkpoint(checkpoint_state(net, 1, 0.0), tmp_path / "net.pth.tar"))
    assert "features.0.body.conv_head.weight" in loaded.state_dict()


def full_model(arch: str) -> nn.Module:
    """timm's whole model of ``arch``, with its classifier, as released files hold it."""
    torch.manual_seed(1)
    return timm.create_model(get_backbone(arch).model.split("+")[0], pretrained=False)


def test_the_hub_file_in_the_data_root_is_loaded_without_its_head(offline, tmp_path):
    from safetensors.torch import save_file

    released = full_model(CNN)
    folder = tmp_path / "networks"
    folder.mkdir()
    save_file(released.state_dict(), str(folder / "test_convnext.r160_in1k.safetensors"))
    net = build_network(CNN, pretrained=True, data_root=str(tmp_path))
    ours = net.features[0].body.state_dict()
    assert set(released.state_dict()) - set(ours) == {"head.norm.weight", "head.norm.bias", "head.fc.weight",
                                                      "head.fc.bias"}
    assert all(torch.equal(value, released.state_dict()[key]) for key, value in ours.items())
    with pytest.raises(Exception, match="is not a timm:test_vit trunk or model"):
        load_trunk_weights(build_network(VIT, pretrained=False), folder / "test_convnext.r160_in1k.safetensors")


def test_a_vit_file_of_another_patch_size_is_refused_and_another_grid_said(tmp_path, caplog):
    """timm's conversion resampled a ViT-S/32 file's patch kernels and position embeddings to
    fit a ViT-S/16: another model's weights loaded without a word, in timm's layout or any
    other it converts (OpenCLIP's). Position embeddings of another grid alone are those of the
    model trained at another image size: resampled, as timm does, and said."""
    net = build_network(VIT, pretrained=False)
    state = full_model(VIT).state_dict()
    kernel = {**state, "patch_embed.proj.weight": torch.zeros(64, 3, 8, 8)}
    for layout, weights in (("timm", kernel), ("openclip", {f"visual.trunk.{k}": v for k, v in kernel.items()})):
        torch.save(weights, tmp_path / f"{layout}.pth")
        with pytest.raises(Exception, match=re.escape(f"{layout}.pth holds the weights of another model than {VIT} "
                                                      "(a (8, 8) patch kernel where the model's is (16, 16))")):
            load_trunk_weights(net, tmp_path / f"{layout}.pth")
    grid = state["pos_embed"].shape[1] - 1  # a class token, then the grid
    side = int(grid**0.5)
    torch.save({**state, "pos_embed": torch.zeros(1, 1 + 16, 64)}, tmp_path / "grid.pth")
    with caplog.at_level("WARNING", logger="aml.networks.timm_trunk"):
        load_trunk_weights(net, tmp_path / "grid.pth")
    assert f"position embeddings, of a 4x4 grid, are resampled to the model's {side}x{side}" in caplog.text
    caplog.clear()
    torch.save(state, tmp_path / "same.pth")
    with caplog.at_level("WARNING", logger="aml.networks.timm_trunk"):
        load_trunk_weights(net, tmp_path / "same.pth")  # the model's own shapes load, without a word
    assert not caplog.text


@pytest.mark.parametrize("name, dim", [("inception_v3", 2048), ("vit_small_r26_s32_224", 384)])
def test_models_that_take_any_image_size_are_taken(name, dim):
    """The probe ran a model in training mode on one image (BatchNorm of a 1 x 1 map refused
    Inception); a hybrid ViT's token grid ignored its CNN stem's stride (a reshape error)."""
    from aml.networks.timm_trunk import parse_timm_spec

    assert parse_timm_spec(name)[1] == dim


def test_a_vit_whose_only_final_norm_is_in_its_head_is_said(caplog, monkeypatch):
    """EVA02's tokens were read before any final norm (its fc_norm goes with the head), while the
    docs said only the *_gap* ViTs lose theirs."""
    from aml.networks import timm_trunk

    monkeypatch.setattr(timm_trunk, "parse_timm_spec", timm_trunk.parse_timm_spec.__wrapped__)  # no cached parse
    with caplog.at_level("WARNING", logger="aml.networks.timm_trunk"):
        timm_trunk.parse_timm_spec("eva02_tiny_patch14_224")
        timm_trunk.parse_timm_spec("test_vit")  # a final norm of its own: nothing to say
    assert caplog.text.count("only final norm is in its head (fc_norm, after pooling)") == 1
    assert "timm:eva02_tiny_patch14_224: eva02_tiny_patch14_224's only final norm" in caplog.text


def test_one_timm_network_is_told_apart_from_two_however_it_is_spelled():
    """timm:X, timm:X+patch (the default readout) and timm:X.<default tag> are one network (a
    compatibility matrix took it twice); the fingerprints stored with descriptors keep the name
    as the network records it (a spelling's meaning depends on timm's version)."""
    from aml.networks.fingerprint import network_fingerprint, one_spelling, spelling_free_fingerprint

    def built(architecture):
        torch.manual_seed(0)
        return build_network(architecture, pretrained=False)

    plain = built("timm:test_vit")
    for spelled in ("timm:test_vit+patch", "timm:test_vit.r160_in1k"):
        assert spelling_free_fingerprint(built(spelled)) == spelling_free_fingerprint(plain)
        assert network_fingerprint(built(spelled)) != network_fingerprint(plain)  # as recorded before
    assert spelling_free_fingerprint(built("timm:test_vit+cls")) != spelling_free_fingerprint(plain)
    assert spelling_free_fingerprint(built("resnet18")) == network_fingerprint(built("resnet18"))
    # a tag that is not the default one stays, and a name this timm cannot read stays as it is
    assert one_spelling("timm:resnet50.a1h_in1k") == "timm:resnet50.a1h_in1k"
    assert one_spelling("timm:a_model_of_another_timm") == "timm:a_model_of_another_timm"


def test_a_refused_vit_is_refused_without_a_word_of_its_head_norm(caplog, monkeypatch):
    """BEiT (fc_norm in its head, a grid of one size) was warned of as if taken, then refused."""
    from aml.networks import timm_trunk

    monkeypatch.setattr(timm_trunk, "parse_timm_spec", timm_trunk.parse_timm_spec.__wrapped__)  # no cached parse
    with caplog.at_level("WARNING", logger="aml.networks.timm_trunk"):
        with pytest.raises(ConfigError, match="beit_base_patch16_224 does not take images of any size"):
            timm_trunk.parse_timm_spec("beit_base_patch16_224")
    assert "final norm" not in caplog.text


def test_a_model_whose_features_are_a_list_is_one_line():
    from aml.networks.timm_trunk import parse_timm_spec

    with pytest.raises(ConfigError, match=r"timm:crossvit_9_240: crossvit_9_240's features are neither a feature map "
                                          r"nor a ViT's tokens \(list for one image\)"):
        parse_timm_spec("crossvit_9_240")


def test_a_hashed_release_with_other_bytes_is_refused_and_a_missing_file_named(offline, tmp_path):
    folder = tmp_path / "networks"
    folder.mkdir()
    (folder / "convnext_atto_d2-01bb0f51.pth").write_bytes(b"not the release")
    with pytest.raises(WeightsError, match="convnext_atto_d2-01bb0f51.pth is not convnext_atto_d2-01bb0f51.pth"):
        find_weights("timm:convnext_atto", str(tmp_path))
    with pytest.raises(WeightsError) as info:
        build_network(VIT, pretrained=True, data_root=str(tmp_path))
    message = str(info.value)
    assert "\n" not in message and str(folder / "test_vit.r160_in1k.safetensors") in message
    assert "https://huggingface.co/timm/test_vit.r160_in1k/resolve/main/model.safetensors" in message


def test_the_hugging_face_cache_is_searched(offline, tmp_path):
    weights = get_imagenet_weights(VIT)
    hub = weights.files[0].hub
    snapshot = tmp_path / "hf-hub" / f"models--{hub.repo.replace('/', '--')}" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / hub.member).write_bytes(b"x")
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc")
    assert find_weights(VIT, str(tmp_path / "root"), download=False)[0] == snapshot / hub.member


def test_dinov2s_original_release_is_converted_by_timm():
    arch = "timm:vit_small_patch14_dinov2"
    model = library_model(arch)
    torch.manual_seed(2)
    original = {key: torch.randn_like(value) for key, value in model.state_dict().items()}
    original["mask_token"] = torch.zeros(1, 384)  # DINOv2's release holds its masking token; timm drops it
    assert load_weights(arch, model, dict(original), "dinov2_vits14_pretrain.pth", "timm") == "timm"
    assert torch.equal(model.state_dict()["blocks.11.ls2.gamma"], original["blocks.11.ls2.gamma"])


def test_dinov2s_original_release_with_registers_is_converted_by_timm():
    """Its position embeddings hold the class token's, which timm's model has none of (1370
    tokens for 1369): another length than the model's, not another grid; refused by the check
    of files of another grid."""
    arch = "timm:vit_small_patch14_reg4_dinov2"
    model = library_model(arch)
    ours = model.state_dict()
    torch.manual_seed(3)
    original = {key: torch.randn_like(value) for key, value in ours.items() if key not in ("reg_token", "pos_embed")}
    original["pos_embed"] = torch.randn(1, ours["pos_embed"].shape[1] + 1, 384)  # the class token's position first
    original["register_tokens"] = torch.randn_like(ours["reg_token"])
    original["mask_token"] = torch.zeros(1, 384)
    assert load_weights(arch, model, dict(original), "dinov2_vits14_reg4_pretrain.pth", "timm") == "timm"
    assert torch.equal(model.state_dict()["pos_embed"], original["pos_embed"][:, 1:])


@pytest.mark.parametrize("arch", [VIT + "+cls", CNN])
def test_a_checkpoint_rebuilds_a_timm_network_without_any_download(offline, arch, tmp_path):
    torch.manual_seed(0)
    net = build_network(arch, pretrained=False, teacher_dim=48).eval()
    path = save_checkpoint(checkpoint_state(net, 1, 0.0), tmp_path / "student.pth.tar")
    loaded = load_network(path)
    x = torch.rand(1, 3, 37, 52)
    with torch.no_grad():
        assert torch.equal(loaded.descriptors(x), net.descriptors(x))
    assert loaded.meta["architecture"] == arch and loaded.meta["mean"] == list(get_imagenet_weights(arch).mean)


def test_batchnorm_of_a_timm_cnn_is_folded_with_the_same_descriptors():
    torch.manual_seed(0)
    net = build_network("timm:test_resnet", pretrained=False).eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    folded = inference_copy(net)
    x = torch.rand(2, 3, 48, 40)
    with torch.no_grad():
        assert torch.allclose(folded.descriptors(x), net.descriptors(x), atol=1e-5)
    assert has_batchnorm(net.features) and not has_batchnorm(folded.features)
    vit = build_network(VIT, pretrained=False)
    assert inference_copy(vit) is vit  # LayerNorm only: nothing to fold


def test_a_vit_in_channels_last_gives_the_same_descriptors():
    torch.manual_seed(0)
    net = build_network(VIT, pretrained=False).eval()
    x = torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        expected = net.descriptors(x)
        net.to(memory_format=torch.channels_last)
        got = net.descriptors(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("spec, message", [("timm:nosuchmodel-gem", "no model 'nosuchmodel'"),
                                           ("timm:test_convnext+-gem", "nothing follows")])
def test_an_offtheshelf_timm_name_that_cannot_work_is_one_line(spec, message, synth_root):
    """test.py -noff timm:<unknown>-gem ended in a ValueError traceback (-a had one line)."""
    from aml.cli import test as test_cli
    from aml.cli.arguments import one_line_errors

    with pytest.raises(SystemExit) as info, one_line_errors():
        test_cli.main(["-noff", spec, "-d", "synth-oxford", "--data-root", str(synth_root), "--device", "cpu"])
    assert str(info.value.code).startswith("error: ") and message in str(info.value.code)


def test_two_threads_converting_files_at_once_leave_timms_resampling_as_it_was():
    """Each conversion replaces timm's resampling functions and puts back what it found: two
    threads at once put back each other's replacements, and the module kept them for good."""
    import threading
    import time
    import types

    from aml.networks.timm_trunk import _guarded_resampling

    def resample_patch_embed(*args, **kwargs):
        return None

    def resample_abs_pos_embed(*args, **kwargs):
        return None

    module = types.SimpleNamespace(resample_patch_embed=resample_patch_embed,
                                   resample_abs_pos_embed=resample_abs_pos_embed)
    first_inside, second_starts, first_done = threading.Event(), threading.Event(), threading.Event()

    def first():
        with _guarded_resampling(module):
            first_inside.set()
            second_starts.wait(10)
            time.sleep(0.2)  # the second thread tries to replace them meanwhile
        first_done.set()

    def second():  # enters while the first is inside, leaves after it
        first_inside.wait(10)
        second_starts.set()
        with _guarded_resampling(module):
            first_done.wait(10)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert module.resample_patch_embed is resample_patch_embed
    assert module.resample_abs_pos_embed is resample_abs_pos_embed
