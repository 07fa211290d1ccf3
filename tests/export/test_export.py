"""The exported student equals PyTorch, at any image size, with whitening folded in."""

import numpy as np
import pytest
import torch
from PIL import Image

from aml.cli import export as export_cli
from aml.evaluation.whitening import whitenapply
from aml.export import DeployedStudent, ExportError, check_exports, export_student, generated_images
from aml.networks import build_network
from aml.networks.checkpoint import checkpoint_state, save_checkpoint


@pytest.fixture(scope="module")
def student():
    torch.manual_seed(0)
    return build_network("mobilenet_v2", pretrained=False, teacher_dim=512).eval()


@pytest.fixture(scope="module")
def whitening():
    rng = np.random.default_rng(0)
    return 0.01 * rng.normal(size=(512, 1)), np.linalg.qr(rng.normal(size=(512, 512)))[0]


def test_deployed_graph_is_the_package_pipeline(student, whitening):
    model = DeployedStudent(student, whitening)
    image = generated_images(((96, 128),))[0]
    mean = torch.tensor(student.meta["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(student.meta["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        plain = student.descriptors((image - mean) / std).numpy().T
        ours = model(image).numpy().T
    assert np.allclose(ours, whitenapply(plain, *whitening), atol=1e-5)


def test_torchscript_and_onnx_match_pytorch_at_several_sizes(student, whitening, tmp_path):
    files, diffs = export_student(student, tmp_path, whitening)
    assert set(diffs) == {"torchscript", "onnx"} and max(diffs.values()) < 1e-5
    import onnx

    graph = onnx.load(str(files["onnx"])).graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    loaded = torch.jit.load(str(files["torchscript"]))
    image = generated_images(((150, 210),), seed=3)[0]
    with torch.no_grad():
        assert torch.allclose(loaded(image), DeployedStudent(student, whitening)(image), atol=1e-5)


def test_a_wrong_export_is_caught(student, tmp_path):
    model = DeployedStudent(student)
    files = {"torchscript": tmp_path / "other.pt"}
    permutation = np.eye(512)[::-1].copy()  # the same network with its dimensions reversed: a wrong graph
    other = DeployedStudent(student, (np.zeros((512, 1)), permutation))
    torch.jit.trace(other, generated_images(((64, 64),))[0]).save(str(files["torchscript"]))
    assert check_exports(model, files)["torchscript"] > 1e-3
    with pytest.raises(ExportError, match="differs from PyTorch"):
        import aml.export.student as export

        real = export.check_exports
        export.check_exports = lambda model, files, images=None: {"torchscript": 0.5}
        try:
            export_student(student, tmp_path / "x", onnx=False)
        finally:
            export.check_exports = real


def test_an_onnx_graph_onnxruntime_cannot_load_or_run_is_an_export_error(student, tmp_path, monkeypatch):
    """An EVA02 student's graph failed onnxruntime's shape inference: its traceback ended the export."""
    onnxruntime = pytest.importorskip("onnxruntime")
    (tmp_path / "student.onnx").write_bytes(b"not a graph onnxruntime can run")
    with pytest.raises(ExportError, match=r"onnxruntime .* cannot load the ONNX graph of this network \(.+\); export "
                                          r"with --no-onnx"):
        check_exports(DeployedStudent(student), {"onnx": tmp_path / "student.onnx"})

    class FailsOnRun:
        def __init__(self, *args, **kwargs):
            pass

        def run(self, *args):
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code")

    monkeypatch.setattr(onnxruntime, "InferenceSession", FailsOnRun)
    with pytest.raises(ExportError, match=r"does not run in onnxruntime on a 224 x 224 image \(\[ONNXRuntimeError\]"):
        check_exports(DeployedStudent(student), {"onnx": tmp_path / "student.onnx"})


def test_a_refused_export_keeps_the_earlier_files_and_leaves_nothing(student, earlier_export, tmp_path, monkeypatch):
    """The files are checked before they replace an earlier export's (they were renamed into
    place first, so a refused export destroyed the good files and left the bad ones)."""
    import aml.export.student as export

    earlier = {p.name: p.read_bytes() for p in earlier_export.iterdir()}
    for name, content in earlier.items():
        (tmp_path / name).write_bytes(content)
    monkeypatch.setattr(export, "check_exports", lambda model, files, images=None: {"torchscript": 0.5})
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_student(student, tmp_path, onnx=False)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == earlier


def test_an_export_replaces_its_files_and_names_those_an_earlier_one_left(student, earlier_export, tmp_path, caplog):
    (tmp_path / "student.pt").write_bytes((earlier_export / "student.pt").read_bytes())
    (tmp_path / "student-int8.onnx").write_bytes((earlier_export / "student-int8.onnx").read_bytes())
    files, _ = export_student(student, tmp_path, onnx=False)
    assert files == {"torchscript": tmp_path / "student.pt"} and torch.jit.load(str(files["torchscript"]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student-int8.onnx", "student.pt"]  # no staging left
    assert f"{tmp_path / 'student-int8.onnx'} is left from an earlier export" in caplog.text


def test_only_the_files_an_export_writes_count_as_replaced(tmp_path):
    """--no-onnx writes no student.onnx: an input of that name was refused all the same."""
    from argparse import Namespace

    (tmp_path / "student.onnx").write_bytes(b"mine")
    args = Namespace(out=str(tmp_path), network=str(tmp_path / "student.onnx"), teacher=None, whitening_file=None,
                     onnx=False, int8=False, test_set=None)
    assert export_cli._replaced_input(args) is None
    args.onnx = True
    assert "which the export writes" in export_cli._replaced_input(args)


@pytest.mark.parametrize("flag", ["--network", "--whitening-file"])
def test_an_input_the_export_would_write_over_is_refused(student, tmp_path, flag, capsys):
    out = tmp_path / "deploy"
    out.mkdir()
    checkpoint = save_checkpoint(checkpoint_state(student, 1, 0.0), out / "student.pt")
    before = checkpoint.read_bytes()
    argv = ["--network", str(checkpoint) if flag == "--network" else "mobilenet-v2-gem-contr-vgg16", "--out", str(out)]
    if flag == "--whitening-file":
        argv += ["--whitening-file", str(checkpoint)]
    with pytest.raises(SystemExit):
        export_cli.main(argv)
    # refused as a file of --out that aml did not export, before the inputs are compared
    assert f"{checkpoint} exists and is not a TorchScript student that aml exported" in capsys.readouterr().err
    assert checkpoint.read_bytes() == before


def test_an_export_on_a_full_disk_keeps_the_earlier_files(student, earlier_export, tmp_path, full_disk):
    from aml.utils.atomic import DiskFull

    earlier = {name: (earlier_export / name).read_bytes() for name in ("student.pt", "student.onnx")}
    for name, content in earlier.items():
        (tmp_path / name).write_bytes(content)
    full_disk(tmp_path)
    with pytest.raises(DiskFull, match="student.pt"):
        export_student(student, tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == earlier


def test_torchscript_on_a_real_full_disk_ends_in_one_line(small_disk):
    """torch's zip writer threw inside a destructor on a full disk: the process aborted (status
    134, a C++ backtrace) and left its staging folder. Run apart, so that an abort fails the test."""
    import subprocess
    import sys

    from tests.conftest import fill_disk

    disk = small_disk(8)
    fill_disk(disk, 100 << 10)
    code = (
        "from aml.export import DeployedStudent, export_torchscript, generated_images\n"
        "from aml.networks import build_network\n"
        "from aml.utils.atomic import DiskFull\n"
        "model = DeployedStudent(build_network('mobilenet_v2', pretrained=False).eval())\n"
        "try:\n"
        f"    export_torchscript(model, {str(disk / 'student.pt')!r}, generated_images()[0])\n"
        "except DiskFull as err:\n"
        "    print(err)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"no space left on the device for {disk / 'student.pt'}" in done.stdout
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]


def test_command_line_prints_the_differences(student, tmp_path, capsys):
    path = save_checkpoint(checkpoint_state(student, 1, 0.0), tmp_path / "student.pth.tar")
    files = export_cli.main(["--network", str(path), "--out", str(tmp_path / "out"), "--no-onnx"])
    assert set(files) == {"torchscript"}
    assert "max abs diff to PyTorch 0.00e+00" in capsys.readouterr().out


def test_a_teacher_of_other_weights_than_the_student_was_trained_against_is_refused(student, tmp_path):
    """--teacher replaced the recorded weights in the exported files: a store of a teacher the
    student was never trained against then took its queries for good."""
    teacher = save_checkpoint(checkpoint_state(build_network("resnet18", pretrained=False), 1, 0.0),
                              tmp_path / "teacher.pth.tar")
    state = checkpoint_state(student, 1, 0.0)
    state["meta"].update(teacher=str(teacher), teacher_fingerprint="a" * 16)  # trained against other weights
    path = save_checkpoint(state, tmp_path / "student.pth.tar")
    with pytest.raises(SystemExit, match=r"student was trained against the teacher weights aaaaaaaa, but --teacher "
                                         r".*teacher.pth.tar holds \w{8}: the exported files would record"):
        export_cli.main(["--network", str(path), "--out", str(tmp_path / "out"), "--no-onnx", "--teacher",
                         str(teacher)])
    assert not (tmp_path / "out").exists()


def test_a_teacher_named_for_a_test_set_is_checked_by_name_without_a_recorded_fingerprint(student, tmp_path,
                                                                                            monkeypatch):
    """--test-set loads a --teacher given by name, which skipped the name and dimension check:
    a student of an older aml (no teacher fingerprint) was exported as another teacher's, and
    int8.json measured it against that teacher's database."""
    from aml.networks import LoadedNetwork

    state = checkpoint_state(student, 1, 0.0)
    state["meta"].update(teacher="retrievalSfM120k-resnet101-gem")  # and no teacher_fingerprint
    path = save_checkpoint(state, tmp_path / "student.pth.tar")
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (40, 30), (40, 90, 200)).save(photos / "0.jpg")
    other = LoadedNetwork.in_memory(build_network("resnet18", pretrained=False, teacher_dim=512), "vgg16")
    monkeypatch.setattr(export_cli, "load_spec", lambda spec, teacher, root: other)  # no download
    with pytest.raises(SystemExit, match=r"student was trained against retrievalSfM120k-resnet101-gem, not --teacher "
                                         r"vgg16: the exported files would record a teacher it was not trained against"):
        export_cli.main(["--network", str(path), "--out", str(tmp_path / "out"), "--int8", "--calibration",
                         str(photos), "--test-set", "synth-oxford", "--teacher", "vgg16"])
    assert not (tmp_path / "out").exists()
    # a file is checked by its dimension alone: its name is the file's (a download's carries its hash)
    monkeypatch.undo()
    downloaded = save_checkpoint(checkpoint_state(other.net, 1, 0.0), tmp_path / "retrievalSfM120k-resnet101-gem-3ba9.pth")
    files = export_cli.main(["--network", str(path), "--out", str(tmp_path / "out"), "--no-onnx", "--teacher",
                             str(downloaded)])
    assert files["torchscript"].is_file()


def test_two_exports_into_one_folder_take_turns(student, tmp_path):
    """Two exports into one --out moved their files in one rename at a time each: the folder could
    hold one's student.pt beside the other's student.onnx, and one's int8.json dropped by the other."""
    from aml.utils.atomic import folder_lock

    path = save_checkpoint(checkpoint_state(student, 1, 0.0), tmp_path / "student.pth.tar")
    out = tmp_path / "deploy"
    with folder_lock(out, beside=True), pytest.raises(SystemExit, match=rf"another run is using {out} \(pid \d+\); "
                                                                         r"wait for it to end, or give another --out"):
        export_cli.main(["--network", str(path), "--out", str(out), "--no-onnx"])
    assert not out.exists()
    assert export_cli.main(["--network", str(path), "--out", str(out), "--no-onnx"])["torchscript"].is_file()


def test_a_test_set_against_a_replaced_recorded_teacher_is_refused(student, tmp_path):
    """Without --teacher, --test-set measured the student against the recorded teacher's file
    after it was replaced (another mAP, written to int8.json), where test.py --asym refuses."""
    teacher = save_checkpoint(checkpoint_state(build_network("resnet18", pretrained=False), 1, 0.0),
                              tmp_path / "teacher.pth.tar")
    state = checkpoint_state(student, 1, 0.0)
    state["meta"].update(teacher=str(teacher), teacher_fingerprint="a" * 16)  # the file was replaced since
    path = save_checkpoint(state, tmp_path / "student.pth.tar")
    photos = tmp_path / "photos"
    photos.mkdir()
    for k in range(2):
        Image.new("RGB", (40, 30), (40 * k, 90, 200)).save(photos / f"{k}.jpg")
    with pytest.raises(SystemExit, match=r"trained against the weights aaaaaaaa of its teacher .*teacher.pth.tar, "
                                         r"but teacher now holds \w{8}: the file was replaced, and --test-set"):
        export_cli.main(["--network", str(path), "--out", str(tmp_path / "out"), "--int8", "--calibration",
                         str(photos), "--test-set", "synth-oxford", "--data-root", str(tmp_path / "data")])
    assert not (tmp_path / "out").exists()


def test_a_teacher_named_is_checked_by_its_name_and_dimension(student, tmp_path):
    """A published or timm teacher given by name was recorded in the files without a check: a
    1280-d student exported as a student of a 64-d timm model, or of vgg16 though trained
    against a checkpoint."""
    state = checkpoint_state(student, 1, 0.0)
    state["meta"].update(teacher="/elsewhere/teacher.pth.tar", teacher_fingerprint="a" * 16)
    path = save_checkpoint(state, tmp_path / "student.pth.tar")
    for teacher, message in (("timm:test_convnext-gem", r"--teacher timm:test_convnext-gem gives 64-d descriptors, "
                                                         r"student 512-d ones: it is not its teacher"),
                             ("vgg16", r"student was trained against /elsewhere/teacher.pth.tar, not --teacher vgg16")):
        with pytest.raises(SystemExit, match=message):
            export_cli.main(["--network", str(path), "--out", str(tmp_path / "out"), "--no-onnx", "--teacher", teacher])
    assert not (tmp_path / "out").exists()


def test_the_whitening_of_a_multiscale_store_is_not_folded_into_a_one_scale_graph(student, whitening, tmp_path,
                                                                                  monkeypatch):
    """It was learned on multi-scale descriptors: folded after one scale, the file's descriptors
    were whitened wrongly, and only aml's own queries refused the file."""
    from types import SimpleNamespace

    path = save_checkpoint(checkpoint_state(student, 1, 0.0), tmp_path / "student.pth.tar")
    store = SimpleNamespace(whitening=whitening, settings={"scales": [1, 0.7071, 0.5], "image_size": 64})
    monkeypatch.setattr(export_cli, "open_database", lambda folder: store)
    monkeypatch.setattr(export_cli, "check_teacher", lambda *args: None)
    (tmp_path / "store").mkdir()
    with pytest.raises(SystemExit, match=r"is encoded at scales \[1, 0.7071, 0.5\]: its whitening belongs after "
                                         r"the multi-scale mean"):
        export_cli.main(["--network", str(path), "--out", str(tmp_path / "out"), "--store", str(tmp_path / "store")])
    assert not (tmp_path / "out").exists()


def test_an_export_leaves_the_network_in_eval_mode(tmp_path):
    """Exporters restore the wrapper's mode: a wrapper left in training mode would put the
    network's BatchNorm into batch statistics after the first export."""
    from aml.export import export_onnx

    torch.manual_seed(0)
    net = build_network("mobilenet_v2", pretrained=False, teacher_dim=64)
    for module in net.modules():  # statistics far from identity, as a trained network's
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    model = DeployedStudent(net)
    image = generated_images(((64, 64),))[0]
    with torch.no_grad():
        before = model(image)
    export_onnx(model, tmp_path / "student.onnx", image)
    with torch.no_grad():
        after = model(image)
    assert not net.training and torch.allclose(before, after, atol=1e-6)


def test_a_whitening_of_another_dimension_is_refused():
    net = build_network("resnet18", pretrained=False)  # 512-d
    with pytest.raises(ExportError, match="the whitening is for 256-d descriptors but the student outputs 512-d"):
        DeployedStudent(net, (np.zeros((256, 1)), np.eye(256)))
    # a whitening that reduces the dimension (check_whitening accepts one) was refused as "for
    # 512-d descriptors but the student outputs 512-d ones"
    with pytest.raises(ExportError, match="the whitening reduces 512-d descriptors to 256-d, and an export folds in "
                                          "only a whitening that keeps the dimension"):
        DeployedStudent(net, (np.zeros((512, 1)), np.eye(256, 512)))


@pytest.mark.parametrize("readout", ["patch", "cls"])
def test_a_vit_student_exports_for_any_image_size(readout, tmp_path):
    """A timm ViT (position embeddings resampled to each image's grid, sides padded to whole
    patches) exports with its size free: ONNX opset 18 for the antialiased resize."""
    pytest.importorskip("timm")
    import onnx

    torch.manual_seed(0)
    net = build_network(f"timm:test_vit+{readout}", pretrained=False, teacher_dim=64).eval()
    files, diffs = export_student(net, tmp_path)
    assert max(diffs.values()) < 1e-5, diffs  # at 224 x 224 (the native grid), 180 x 300, 320 x 240
    assert onnx.load(str(files["onnx"])).opset_import[0].version == 18
    image = generated_images(((150, 210),), seed=3)[0]
    with torch.no_grad():
        assert torch.allclose(torch.jit.load(str(files["torchscript"]))(image), DeployedStudent(net)(image), atol=1e-5)


@pytest.mark.parametrize("data, message", [
    ({"m": np.zeros((512, 1)), "P": np.where(np.eye(512) > 0, np.nan, 0)}, r"lw.pth holds 512 NaN or infinite values"),
    ({"m": np.zeros((256, 1)), "P": np.eye(256)}, r"lw.pth: m of shape \(256, 1\) and P of shape \(256, 256\) do not "
                                                  r"whiten 512-d descriptors"),
    ([np.zeros(512), np.eye(512)], r"lw.pth holds list, not a whitening with 'm' and 'P'"),
    ({f"features.{k}.weight": np.zeros(1) for k in range(300)},  # a state dict: its keys were all listed
     r"lw.pth holds features.0.weight, features.1.weight, .*features.106.weight and 290 more, not a whitening"),
])
def test_a_whitening_file_that_is_not_one_is_named(student, tmp_path, data, message):
    """A NaN in --whitening-file was folded into the exported student; a list was a TypeError."""
    from aml.utils.plain_files import save_plain_file

    path = save_checkpoint(checkpoint_state(student, 1, 0.0), tmp_path / "student.pth.tar")
    save_plain_file(data, tmp_path / "lw.pth")
    with pytest.raises(SystemExit, match=f"^error: {tmp_path}/{message}"):
        export_cli.main(["--network", str(path), "--out", str(tmp_path / "out"), "--whitening-file",
                         str(tmp_path / "lw.pth"), "--no-onnx"])
    assert not (tmp_path / "out").exists()


def test_the_students_network_comes_back_as_it_was(student, tmp_path):
    """A float32 CPU copy is exported: the caller's network keeps its dtype, its tensors and its
    mode, and the ONNX file records the fingerprint of the weights it holds."""
    import copy

    from aml.descriptors.onnx_student import read_onnx_metadata
    from aml.networks.fingerprint import network_fingerprint

    net = copy.deepcopy(student).double().train()
    weight = next(net.parameters())
    pointer = weight.data_ptr()
    files, diffs = export_student(net, tmp_path)
    assert max(diffs.values()) < 1e-5 and files["torchscript"].is_file()
    assert net.training and all(module.training for module in net.modules())
    assert weight.dtype == torch.float64 and weight.data_ptr() == pointer
    assert read_onnx_metadata(files["onnx"]).fingerprint == network_fingerprint(student)  # float32's bytes


def test_without_onnxruntime_the_onnx_file_still_says_what_it_is(student, tmp_path, monkeypatch):
    """The metadata was written only when onnxruntime checked the file: without it, student.onnx
    had none, and `search query --onnx` refused it with a fix (export again) that gave the same."""
    import sys

    from aml.descriptors.onnx_student import read_onnx_metadata

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime: ImportError
    files, diffs = export_student(student, tmp_path)
    assert set(diffs) == {"torchscript"}
    info = read_onnx_metadata(files["onnx"])
    assert info is not None and info.dim == 512 and info.precision == "float32"


def test_the_files_record_the_teacher_the_student_was_trained_against():
    """export_student(net, folder), without info, recorded no teacher fingerprint though the
    student holds one: a store of another teacher under the same file name took its queries."""
    from aml.export import student_info

    net = build_network("resnet18", pretrained=False)
    net.meta.update(teacher="runs/teacher.pth.tar", teacher_fingerprint="0123456789abcdef")
    info = student_info(net)
    assert (info.teacher, info.teacher_fingerprint) == ("teacher", "0123456789abcdef")
    assert student_info(net, teacher_fingerprint="fedcba9876543210").teacher_fingerprint == "fedcba9876543210"
    del net.meta["teacher_fingerprint"]
    assert student_info(net).teacher_fingerprint is None


def _with_report(folder, earlier_export):
    for path in earlier_export.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "int8.json").write_text('{"provenance": {}, "report": {"maps": "of the earlier files"}}')


def test_an_earlier_report_goes_with_the_files_it_measured(student, earlier_export, tmp_path, caplog):
    """An interrupted --test-set export (or one without --test-set) left the earlier int8.json
    beside the new files, its numbers and fingerprints those of files no longer there."""
    import logging

    caplog.set_level(logging.WARNING, logger="aml")
    _with_report(tmp_path, earlier_export)
    export_student(student, tmp_path, onnx=False)  # TorchScript alone: the ONNX files it measured stay
    assert (tmp_path / "int8.json").is_file()
    export_student(student, tmp_path)
    assert not (tmp_path / "int8.json").exists()
    assert f"{tmp_path / 'int8.json'} removed: it measured the ONNX files this export replaced" in caplog.text
    (tmp_path / "int8.json").write_text('{"mine": 1}')  # not a report: the user's own, kept
    export_student(student, tmp_path)
    assert (tmp_path / "int8.json").read_text() == '{"mine": 1}'


def test_a_stop_while_the_files_move_in_leaves_one_export_whole(student, earlier_export, tmp_path, monkeypatch):
    """Ctrl-C right after the first rename left the new student.pt beside the earlier
    student.onnx and its report."""
    import os
    import signal
    from pathlib import Path

    _with_report(tmp_path, earlier_export)
    earlier = {name: (tmp_path / name).stat().st_ino for name in ("student.pt", "student.onnx")}
    replace = Path.replace

    def interrupted(self, target):
        moved = replace(self, target)
        os.kill(os.getpid(), signal.SIGINT)
        return moved

    monkeypatch.setattr(Path, "replace", interrupted)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            export_student(student, tmp_path)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert all((tmp_path / name).stat().st_ino != inode for name, inode in earlier.items())  # both new
    assert not (tmp_path / "int8.json").exists()
