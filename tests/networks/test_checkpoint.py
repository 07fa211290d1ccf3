"""Checkpoints: round trips, the published key layouts, and bad files."""

import os
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from aml.networks import build_network
from aml.networks.backbones import BACKBONES
from aml.networks.checkpoint import (CheckpointError, checkpoint_state, load_checkpoint, load_network,
                                     network_from_checkpoint, save_checkpoint)

IMAGENET = dict(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])


def cirtorch_meta(arch, dim, **extra):
    return {"architecture": arch, "local_whitening": False, "pooling": "gem", "regional": False,
            "whitening": False, "outputdim": dim, **IMAGENET, **extra}


def prefixed(prefix, state):
    return OrderedDict((f"{prefix}{k}", v) for k, v in state.items())


def lw(dim):
    rng = np.random.default_rng(0)
    entry = {"m": rng.random((dim, 1)), "P": rng.random((dim, dim))}
    return {"retrieval-SfM-120k": {"ss": entry, "ms": entry}}


def save_like_original(tmp_path, name, state):
    """torch.save of a plain dict, as the original code and cirtorch do (not our writer)."""
    path = tmp_path / name
    torch.save(state, path)
    return path


def test_published_vgg16_teacher_layout_loads_with_lw(tmp_path):
    vgg = list(torchvision.models.vgg16(weights=None).features.children())[:-1]
    state_dict = prefixed("features.", torch.nn.Sequential(*vgg).state_dict())
    state_dict["pool.p"] = torch.tensor([2.8])
    expected = {f"features.{i}.{w}" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28) for w in ("weight", "bias")}
    assert set(state_dict) == expected | {"pool.p"}
    path = save_like_original(tmp_path, "retrievalSfM120k-vgg16-gem-b4dcdc6.pth",
                              {"meta": cirtorch_meta("vgg16", 512, Lw=lw(512)), "state_dict": state_dict})
    net = load_network(path)
    assert net.gem_p() == pytest.approx(2.8)
    assert net.meta["Lw"]["retrieval-SfM-120k"]["ms"]["P"].shape == (512, 512)
    assert torch.equal(net.features[28].weight, state_dict["features.28.weight"])


def test_published_mobilenet_v2_student_layout(tmp_path):
    trunk = torchvision.models.mobilenet_v2(weights=None).features
    state_dict = prefixed("features.0.", trunk.state_dict())
    state_dict["features.1.weight"] = torch.randn(2048, 1280, 1, 1)
    state_dict["pool.p"] = torch.tensor([3.1])
    assert len(state_dict) == 314
    checkpoint = {"epoch": 30, "meta": cirtorch_meta("mobilenet_v2", 2048), "state_dict": state_dict,
                  "min_loss": 0.12, "optimizer": {}}
    net = load_network(save_like_original(tmp_path, "mobilenet_v2_gem_contr_resnet101.pth.tar", checkpoint))
    assert net.meta["outputdim"] == 2048
    assert torch.equal(net.features[1].weight, state_dict["features.1.weight"])


def test_published_efficientnet_layout_with_old_timm_children(tmp_path):
    timm = pytest.importorskip("timm")
    children = list(timm.create_model("tf_efficientnet_b3", pretrained=False).children())[:-2]
    # 2020 timm: conv_stem, bn1, act1, blocks, conv_head, bn2, act2 (+ projection, ReLU)
    old_indices = {0: 0, 1: 1, 2: 3, 3: 4, 4: 5}
    state_dict = OrderedDict()
    for new, old in old_indices.items():
        state_dict.update(prefixed(f"features.{old}.", children[new].state_dict()))
    state_dict["features.7.weight"] = torch.randn(512, 1536, 1, 1)
    state_dict["pool.p"] = torch.tensor([3.0])
    path = save_like_original(tmp_path, "efficientnet_b3_gem_contr_vgg16.pth.tar",
                              {"meta": cirtorch_meta("efficientnet_b3", 512), "state_dict": state_dict})
    net = load_network(path)
    assert torch.equal(net.features[5].weight, state_dict["features.7.weight"])
    assert torch.equal(net.features[3].weight, state_dict["features.4.weight"])


def test_round_trip_keeps_weights_meta_and_optimizer(tmp_path):
    net = build_network("resnet18", pretrained=False)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.rand(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    path = save_checkpoint(checkpoint_state(net, 4, 0.25, optimizer), tmp_path / "run" / "model_epoch4.pth.tar")
    state = load_checkpoint(path)
    assert state["epoch"] == 4 and state["min_loss"] == 0.25 and state["optimizer"]["state"]
    again = network_from_checkpoint(state)
    for key, value in net.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    assert [p.name for p in tmp_path.joinpath("run").iterdir()] == ["model_epoch4.pth.tar"]


def test_atomic_write_keeps_old_file_when_interrupted(tmp_path, monkeypatch):
    path = save_checkpoint({"meta": {}, "state_dict": {}, "epoch": 1}, tmp_path / "model_best.pth.tar")
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"meta": {}, "state_dict": {}, "epoch": 2}, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model_best.pth.tar"]


def test_truncated_checkpoint_is_named(tmp_path):
    path = save_checkpoint(checkpoint_state(build_network("resnet18", pretrained=False), 1, 0.0), tmp_path / "m.pth.tar")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="m.pth.tar.*truncated"):
        load_checkpoint(path)


def test_a_checkpoint_this_user_may_not_read_is_not_called_damaged(tmp_path, lock, monkeypatch):
    """Another user's file was 'truncated, corrupt or not a PyTorch file ... fetched anew once
    deleted': a shared teacher deleted for want of permissions."""
    import safetensors.torch

    from aml.utils.errors import NoAccess

    def load_file(path, device):  # what safetensors (in Rust) raises for a file this user may not read
        raise FileNotFoundError(f"No such file or directory: {path}")

    monkeypatch.setattr(safetensors.torch, "load_file", load_file)
    for name in ("m.pth.tar", "m.safetensors"):
        path = tmp_path / name
        path.write_bytes(b"weights")
        lock(path)
        with pytest.raises(NoAccess, match=rf"{name} cannot be read \(Permission denied\): it is another user's or "
                                           r"locked, not damaged"):
            load_checkpoint(path)


@pytest.mark.parametrize("damage, what", [
    (lambda state: state.__setitem__(3, torch.zeros(1)), r"a state_dict entry \(its key is int 3, not a string\)"),
    (lambda state: state.__setitem__("fc.bias", torch.zeros(3).to_sparse()), r"a state_dict entry \(it holds a sparse tensor, not a dense one\)"),
    (lambda state: state.__setitem__("fc.bias", [0.0]), r"a state_dict entry \(it holds a list, not a tensor\)"),
])
def test_a_state_dict_of_other_keys_or_tensors_is_named(tmp_path, damage, what):
    """An int key ended in AttributeError inside load_state_dict, a sparse tensor in NotImplementedError."""
    state = checkpoint_state(build_network("squeezenet1_1", pretrained=False), 1, 0.0)
    damage(state["state_dict"])
    path = save_checkpoint(state, tmp_path / "edited.pth.tar")
    with pytest.raises(CheckpointError, match=r"edited.pth.tar: " + what + r" is not a checkpoint's: the file is damaged or edited"):
        load_checkpoint(path)


def test_a_torchscript_export_is_named_for_what_it_is(tmp_path):
    path = tmp_path / "student.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
    with warnings.catch_warnings(record=True) as said:  # torch's advice to call torch.jit.load is not the user's
        warnings.simplefilter("always")
        with pytest.raises(CheckpointError, match=r"student.pt is a TorchScript program .* give the checkpoint or weights "
                                                  r"file \(for an export, the .pth.tar checkpoint"):
            load_checkpoint(path)
    assert not said


def test_foreign_checkpoint_is_named(tmp_path):
    path = tmp_path / "classifier.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"classifier.pth is a plain state dict of 122 tensors \(a library's "
                                              r"weights, e.g. torchvision's\), not an aml/cirtorch checkpoint"):
        load_checkpoint(path)
    torch.save({f"layer{k}": k for k in range(300)}, path)  # the keys were all listed: a line of kilobytes
    with pytest.raises(CheckpointError, match=r"found layer0, layer1, layer10, .*, layer106 and 290 more$"):
        load_checkpoint(path)


@pytest.mark.parametrize("content, what", [
    (b"", r"is empty \(0 bytes\): the copy or the download stopped"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF", "is a JPEG image, not a PyTorch file"),
    (b"\x93NUMPY\x01\x00", r"is a numpy array \(.npy\), not a PyTorch file"),
    (None, r"holds a pickled torchvision.models.resnet.ResNet object \(torch.save of a whole model\), whose loading "
           r"could run code: aml loads tensors only; save its state_dict instead"),
], ids=["empty", "jpeg", "npy", "whole-module"])
def test_a_file_that_is_no_checkpoint_is_named_for_what_it_is(tmp_path, content, what):
    """torch's own message passed through: an EOFError with no text, or its advice to load
    with weights_only=False (which runs the file's code), with terminal colour codes."""
    path = tmp_path / "model.pth"
    if content is None:
        torch.save(torchvision.models.resnet18(weights=None), path)
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=what) as info:
        load_checkpoint(path)
    assert "weights_only" not in str(info.value) and "\x1b" not in str(info.value)


def test_checkpoint_that_runs_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"meta": {}, "state_dict": {}, "x": Evil()}, path)
    with pytest.raises(CheckpointError, match="evil.pth"):
        load_checkpoint(path)
    assert not os.path.exists("pwned")


def test_weights_of_wrong_shape_are_a_clear_error(tmp_path):
    state = checkpoint_state(build_network("mobilenet_v2", pretrained=False), 1, 0.0)
    state["meta"]["outputdim"] = 2048
    with pytest.raises(CheckpointError, match="do not fit a mobilenet_v2 network of dimension 2048"):
        network_from_checkpoint(state)


@pytest.mark.parametrize("damage", ["weight", "mean"])
def test_a_network_with_non_finite_values_is_refused_by_name(tmp_path, damage):
    state = checkpoint_state(build_network("resnet18", pretrained=False), 1, 0.0)
    if damage == "weight":
        state["state_dict"]["features.4.0.conv1.weight"][0, 0, 0, 0] = float("nan")
        expected = r"diverged.pth.tar: weight features.4.0.conv1.weight holds 1 NaN or infinite value"
    else:
        state["meta"]["mean"] = [0.485, float("nan"), 0.406]
        expected = r"diverged.pth.tar: meta\['mean'\] is \[0.485, nan, 0.406\], not three numbers in \[0, 1\]"
    path = save_checkpoint(state, tmp_path / "diverged.pth.tar")
    with pytest.raises(CheckpointError, match=expected):
        load_network(path)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_every_non_finite_value_is_found_in_every_float_dtype(dtype):
    """A NaN among finite values, an infinity of either sign, the largest finite value of the
    dtype (not an infinity), empty and integer tensors (never reported)."""
    from aml.networks.checkpoint import non_finite_weights

    big = torch.finfo(dtype).max
    values = {"nan": [1.0, float("nan"), -2.0], "inf": [[0.0], [float("inf")]], "minus_inf": [float("-inf"), 3.0],
              "largest": [big, -big], "empty": [[], []], "ok": [[0.25, -1.5], [2.0, 3.0]]}
    state = {name: torch.tensor(value, dtype=dtype) for name, value in values.items()}
    state["count"] = torch.tensor([7])
    state["weight"] = torch.nn.Parameter(torch.tensor([0.5, float("nan")], dtype=dtype))  # a live network's
    assert non_finite_weights(state) == ["nan", "inf", "minus_inf", "weight"]
    assert non_finite_weights({"empty": torch.empty(0), "count": torch.tensor(3)}) == []


def test_fuzzed_checkpoint_bytes_end_in_a_checkpoint_error(tmp_path):
    from aml.utils.plain_files import save_plain_file

    state = {"meta": {"architecture": "resnet18", "pooling": "gem", "mean": [0.5] * 3, "std": [0.5] * 3,
                      "outputdim": 512}, "state_dict": {"features.0.weight": torch.ones(4, 3)}, "epoch": 1}
    original = save_plain_file(state, tmp_path / "m.pth.tar").read_bytes()
    rng = np.random.default_rng(int(os.environ.get("AML_TEST_SEED", "0")))
    path = tmp_path / "fuzzed.pth.tar"
    outcomes = {"refused": 0, "read": 0}
    for trial in range(300):
        data = bytearray(original)
        if trial % 3 == 0:
            data = bytearray(rng.integers(0, 256, int(rng.integers(1, 3000)), dtype=np.uint8).tobytes())
        else:
            for position in rng.integers(0, len(data), int(rng.integers(1, 20))):
                data[position] = int(rng.integers(0, 256))
        path.write_bytes(bytes(data))
        try:
            load_checkpoint(path)
            outcomes["read"] += 1
        except CheckpointError as err:
            assert "fuzzed.pth.tar" in str(err)
            outcomes["refused"] += 1
    assert outcomes["refused"] >= 100  # random bytes, at least, are refused


@pytest.mark.filterwarnings("ignore")  # torch warns of odd pickle protocols, numpy of what it could not free
def test_every_truncation_and_single_bit_flip_of_the_pickle_ends_in_a_checkpoint_error(tmp_path):
    """Exhaustive over the pickle of one small checkpoint (with a numpy whitening in its meta):
    torch.load of damaged bytes raised AssertionError and LookupError (an encoding name hit)."""
    import zipfile

    from aml.utils.plain_files import save_plain_file

    state = {"meta": {"architecture": "resnet18", "pooling": "gem", "mean": [0.5] * 3, "std": [0.5] * 3,
                      "Lw": {"set": {"ss": {"m": np.zeros((2, 1)), "P": np.eye(2)}}}},
             "state_dict": OrderedDict(w=torch.ones(2)), "epoch": 1}
    original = save_plain_file(state, tmp_path / "m.pth.tar").read_bytes()
    members = zipfile.ZipFile(tmp_path / "m.pth.tar").infolist()
    pickle_end = min(m.header_offset for m in members if not m.filename.endswith("data.pkl"))
    path = tmp_path / "damaged.pth.tar"
    variants = [original[:end] for end in range(0, len(original), 7)]
    variants += [original[:i] + bytes([original[i] ^ 1]) + original[i + 1:] for i in range(pickle_end)]
    read = 0
    for data in variants:
        path.write_bytes(data)
        try:
            load_checkpoint(path)
            read += 1
        except CheckpointError as err:
            assert "damaged.pth.tar" in str(err)
    assert read < len(variants) // 2


class _Reduces:
    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


@pytest.mark.parametrize("inside, found", [
    (_Reduces(torch._utils._rebuild_tensor_v2, torch.zeros(3).untyped_storage(), 0, (3,), (1,), False, OrderedDict(),
              "not a dict"), "AssertionError: expected dict, got str"),
    (_Reduces(__import__("codecs").encode, "abc", "no-such-codec"), "LookupError: unknown encoding: no-such-codec"),
], ids=["assertion", "encoding"])
def test_what_torch_load_raises_on_crafted_files_is_a_checkpoint_error(tmp_path, inside, found):
    path = tmp_path / "crafted.pth"
    torch.save({"meta": {}, "state_dict": {"w": inside}}, path)
    with pytest.raises(CheckpointError, match=f"cannot read {path}: .*{found}"):
        load_checkpoint(path)


META_DAMAGES = [("architecture", ["resnet18"], r"meta\['architecture'\] is list \['resnet18'\], not a name"),
                ("architecture", "resnet9", r"unknown architecture 'resnet9'; choose one of"),
                ("pooling", {"gem": 1}, r"meta\['pooling'\] is dict"),
                ("pooling", "gemx", r"unknown pooling 'gemx'; choose one of gem"),
                ("whitening", torch.zeros(2), r"meta\['whitening'\] is Tensor .*, not True or False"),
                ("regional", "yes", r"meta\['regional'\] is str 'yes', not True or False"),
                ("mean", np.zeros(3), r"meta\['mean'\] is ndarray .*, not three numbers"),
                ("std", [0.2, 0.2], r"meta\['std'\] is list \[0.2, 0.2\], not three numbers"),
                ("std", [0.2, "0.2", 0.2], r"meta\['std'\] is list .*, not three numbers"),
                ("outputdim", torch.zeros(2), r"meta\['outputdim'\] is tensor"),
                ("outputdim", True, r"meta\['outputdim'\] is True, not a descriptor dimension"),
                ("outputdim", 0, r"meta\['outputdim'\] is 0, not a descriptor dimension"),
                # a zero std was torchvision's ValueError, a negative one inverted the images silently
                ("std", [0.0, 0.0, 0.0], r"meta\['std'\] is \[0.0, 0.0, 0.0\], not three numbers in \(0, 1\]"),
                ("std", [-0.2, 0.2, 0.2], r"meta\['std'\] is \[-0.2, 0.2, 0.2\], not three numbers in \(0, 1\]"),
                ("mean", [1e30, 0.5, 0.5], r"meta\['mean'\] is \[1e\+30, 0.5, 0.5\], not three numbers in \[0, 1\]"),
                ("teacher", 5, r"meta\['teacher'\] is int 5, not the name or path of a network")]


@pytest.mark.parametrize("key, value, message", META_DAMAGES, ids=[f"{k}={v!r:.12}" for k, v, _ in META_DAMAGES])
def test_meta_of_the_wrong_types_is_named(key, value, message):
    state = {"meta": {"architecture": "mobilenet_v2", "pooling": "gem", "mean": [0.5] * 3, "std": [0.5] * 3,
                      "outputdim": 64, key: value}, "state_dict": {}}
    with pytest.raises(CheckpointError, match=f"edited.pth: {message}"):
        network_from_checkpoint(state, source="edited.pth")


def test_a_folder_or_an_implausible_dimension_is_named(tmp_path):
    with pytest.raises(CheckpointError, match=r"is a folder, not a checkpoint file"):
        load_checkpoint(tmp_path)
    state = checkpoint_state(build_network("resnet18", pretrained=False), 1, 0.0)
    state["meta"]["outputdim"] = 1_500_000
    with pytest.raises(CheckpointError, match=r"meta\['outputdim'\] is 1500000, not a descriptor dimension"):
        network_from_checkpoint(state)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pth")


def test_a_checkpoint_goes_by_its_file_name_without_the_pth_suffixes():
    from aml.networks.loading import checkpoint_name

    assert checkpoint_name("runs/x/model_best.pth.tar") == "model_best"
    assert checkpoint_name(Path("/a/retrievalSfM120k-vgg16-gem-b4dcdc6.pth")) == "retrievalSfM120k-vgg16-gem-b4dcdc6"
    assert checkpoint_name("model_epoch3.pth.tar") == "model_epoch3"


@pytest.mark.parametrize("outputdim, found", [(None, 512), (10**9, None), ("512", None)])
def test_a_teachers_dimension_is_read_checked_from_its_file(tmp_path, outputdim, found):
    """main.py -m std with a student trunk read --teacher's meta['outputdim'] unchecked: a file
    without it (the original's) was a KeyError, 10**9 an allocation of 5 TB."""
    from aml.networks.loading import NetworkSpec

    state = checkpoint_state(build_network("resnet18", pretrained=False), 1, 0.0)
    state["meta"].pop("outputdim")
    if outputdim is not None:
        state["meta"]["outputdim"] = outputdim
    spec = NetworkSpec.parse(str(save_checkpoint(state, tmp_path / "teacher.pth.tar")))
    if found is not None:
        assert spec.dimension() == found
    else:
        with pytest.raises(CheckpointError, match=rf"teacher.pth.tar: meta\['outputdim'\] is {outputdim!r}, not a"):
            spec.dimension()


def test_an_originals_student_without_outputdim_takes_its_projections_dimension(tmp_path):
    """The original's student files have no outputdim: a 2048-d one loaded with the default
    teacher failed in two lines of torch's size-mismatch list, naming no fix."""
    trunk = torchvision.models.mobilenet_v2(weights=None).features
    state_dict = prefixed("features.0.", trunk.state_dict())
    state_dict["features.1.weight"] = torch.randn(2048, 1280, 1, 1)
    state_dict["pool.p"] = torch.tensor([3.0])
    meta = {key: value for key, value in cirtorch_meta("mobilenet_v2", 2048).items() if key != "outputdim"}
    net = network_from_checkpoint({"meta": meta, "state_dict": state_dict})  # no --teacher: vgg16's 512 before
    assert net.meta["outputdim"] == 2048 and torch.equal(net.features[1].weight, state_dict["features.1.weight"])
    # as --teacher (a --feat-path file's dimension is checked against it) the file says the same, unbuilt
    from aml.networks.loading import NetworkSpec

    torch.save({"meta": meta, "state_dict": state_dict}, tmp_path / "student2048.pth.tar")
    assert NetworkSpec.parse(str(tmp_path / "student2048.pth.tar")).dimension() == 2048
    state_dict["features.0.0.0.weight"] = torch.randn(8, 3, 3, 3)
    with pytest.raises(CheckpointError) as info:
        network_from_checkpoint({"meta": meta, "state_dict": state_dict}, source="x.pth")
    message = str(info.value)
    assert message.startswith("x.pth: weights do not fit a mobilenet_v2 network of dimension 2048: size mismatch for "
                              "features.0.0.0.weight") and "\n" not in message
    assert message.endswith("the file is damaged, or its meta does not describe its weights")


def test_a_folder_given_as_a_plain_file_is_named_a_folder(tmp_path):
    """--whitening-file FOLDER was called truncated or corrupt, to be downloaded again."""
    from aml.utils.plain_files import load_plain_file

    with pytest.raises(CheckpointError, match=rf"^{tmp_path} is a folder, not a PyTorch file; give the file in it$"):
        load_plain_file(tmp_path)


def test_a_checkpoint_saved_through_data_parallel_loads_without_the_prefix(tmp_path):
    """Other code saves a network through (Distributed)DataParallel: every key begins with
    'module.', and the file was called damaged, the prefix hidden in "(and 1 more)"."""
    net = build_network("resnet18", pretrained=False).eval()
    state = checkpoint_state(net, 3, 0.1)
    state["state_dict"] = OrderedDict((f"module.{key}", value) for key, value in state["state_dict"].items())
    torch.save(state, tmp_path / "wrapped.pth.tar")
    loaded = load_network(tmp_path / "wrapped.pth.tar").eval()
    image = torch.rand(1, 3, 40, 32)
    assert torch.equal(loaded(image), net(image))
    state["state_dict"]["extra"] = torch.zeros(1)  # not every key wrapped: not DataParallel's, refused as it was
    torch.save(state, tmp_path / "mixed.pth.tar")
    with pytest.raises(CheckpointError, match="weights do not fit a resnet18 network"):
        load_network(tmp_path / "mixed.pth.tar")


def test_loading_a_checkpoint_leaves_the_callers_random_state(tmp_path):
    """The network was built with random weights, then overwritten: the caller's generator had
    moved, so a seeded script drew other numbers after loading a teacher."""
    path = save_checkpoint(checkpoint_state(build_network("resnet18", pretrained=False), 1, 0.0), tmp_path / "n.pth")
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    load_network(path)
    assert torch.equal(torch.rand(3), expected)


TIMM_NAMES = ["timm:vit_tiny_patch16_224", "timm:convnext_atto"]


@pytest.mark.parametrize("arch", sorted(BACKBONES) + TIMM_NAMES)
def test_every_architecture_is_rebuilt_without_drawing_weights(arch):
    """Each network a checkpoint may hold can be built on the meta device (a VGG16 in 30 ms
    instead of 1.2 s), as it is where its weights are large: every tensor of each module is one
    its state dict carries, so the strict load fills them all."""
    from aml.networks.checkpoint import _state_dict_fills

    with torch.device("meta"):  # unfilled's way: built without a value read
        net = build_network(arch, pretrained=False, teacher_dim=24)
    assert all(_state_dict_fills(module) for module in net.modules())  # and so it keeps it
    tensors = dict(net.named_parameters()) | dict(net.named_buffers())
    assert set(net.state_dict()) == set(tensors)


@pytest.mark.parametrize("arch", ["squeezenet1_1", "resnet18", "mobilenet_v2", "efficientnet_lite0"] + TIMM_NAMES)
def test_a_checkpoint_gives_back_its_network_exactly(arch):
    """Filled by the strict load: each tensor the state dict's (none left as to_empty gave it),
    the same descriptors, and the caller's generator where it was."""
    torch.manual_seed(5)  # not the weights a build from seed 0 (the fallback's) would draw
    source = build_network(arch, pretrained=False, teacher_dim=24).eval()
    state = checkpoint_state(source, 1, 0.0)
    before = torch.random.get_rng_state()
    rebuilt = network_from_checkpoint(state).eval()
    assert torch.equal(torch.random.get_rng_state(), before)
    expected, got = source.state_dict(), rebuilt.state_dict()
    assert list(got) == list(expected) and all(torch.equal(got[k], expected[k]) for k in expected)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(rebuilt(images), source(images))


class _WithSideTensors(torch.nn.Module):
    """Tensors a state dict does not carry: a non-persistent buffer, or a plain attribute."""

    def __init__(self, kind: str):
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)
        if kind == "buffer":
            self.register_buffer("table", torch.arange(4.0), persistent=False)
        elif kind == "attribute":
            self.table = torch.arange(4.0)
        elif kind == "list":
            self.tables = [{"table": torch.arange(4.0)}]
        else:  # a construction that reads a value
            self.size = int(torch.arange(4.0).sum().item())


def _large_weights():
    """A state dict whose tensors are large enough for a build on the meta device."""
    from aml.networks.checkpoint import META_BUILD_MIN_ELEMENTS

    return {"weight": torch.empty(META_BUILD_MIN_ELEMENTS)}


@pytest.mark.parametrize("kind", ["buffer", "attribute", "list", "value"])
def test_a_module_a_state_dict_would_not_fill_is_built_for_real(kind):
    from aml.networks.checkpoint import unfilled

    before = torch.random.get_rng_state()
    module = unfilled(lambda: _WithSideTensors(kind), _large_weights())
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.manual_seed(0)
    assert torch.equal(module.linear.weight, torch.nn.Linear(3, 2).weight)  # drawn from seed 0
    if kind != "value":
        table = module.tables[0]["table"] if kind == "list" else module.table
        assert torch.equal(table, torch.arange(4.0))


def test_the_meta_device_is_taken_where_the_weights_are_large():
    """On the meta device each tensor's initialisation costs 0.25 ms (MobileNetV2 66 ms instead
    of 39); the random draws it saves pay from tensors of 30,000 elements on average."""
    from aml.networks.checkpoint import unfilled

    def build():
        built.append(torch.empty(0).device.type)
        return torch.nn.Linear(3, 2)

    built = []
    small = unfilled(build, {"weight": torch.empty(6), "bias": torch.empty(2)})
    large = unfilled(build, _large_weights())
    assert built == ["cpu", "meta"] and small.weight.device.type == large.weight.device.type == "cpu"


def test_a_batchnorm_state_dict_without_its_counters_loads_them_as_zero(tmp_path):
    """torch < 0.4.1 saved no ``num_batches_tracked``; the load keeps the module's own counter,
    which a network built on the meta device holds as memory never written: its fingerprint
    (the descriptor store's key) then changed from one load to the next."""
    from aml.descriptors import network_fingerprint

    torch.manual_seed(0)
    state = checkpoint_state(build_network("resnet18", pretrained=False), 1, 0.0)
    state["state_dict"] = {k: v for k, v in state["state_dict"].items() if not k.endswith("num_batches_tracked")}
    path = save_checkpoint(state, tmp_path / "old.pth.tar")
    first, second = load_network(path), load_network(path)
    counters = [b for name, b in first.named_buffers() if name.endswith("num_batches_tracked")]
    assert len(counters) == 20 and all(int(b) == 0 for b in counters)
    assert network_fingerprint(first) == network_fingerprint(second)
