"""main.py through its command line: flags, run folder, resume, bad inputs, trunk weights,
batched forward and bfloat16 (what training learns: tests/training/test_learning.py)."""

import numpy as np
import pytest
import torch

from aml.cli import train as train_cli
from aml.utils.errors import ConfigError
from aml.networks import init_network
from aml.networks.checkpoint import CheckpointError, load_checkpoint, load_network, save_checkpoint
from aml.training import TrainConfig
from aml.training.config import run_name

# Trains networks or starts processes for tens of seconds: started early (conftest).
pytestmark = pytest.mark.long

TINY = ["-d", "synth-sfm", "--not-pretrained", "--image-size", "48", "-nn", "2", "-qs", "10", "-ps", "30", "-b", "5",
        "-j", "0", "--device", "cpu", "--lr", "1e-4", "--print-freq", "100"]


# Where the network does not matter: 5 MB checkpoints instead of ResNet-18's 45 MB (plus Adam's state).
SMALL = "squeezenet1_1"


def train(root, directory, *extra):
    return train_cli.main(["--directory", str(directory), "--data-root", str(root)] + TINY + list(extra))


def parsed(*flags):
    return train_cli.config_from_arguments(train_cli.build_parser().parse_args(["--directory", "x", *flags]))


def test_default_run_folder_name_matches_original():
    assert run_name(parsed()) == ("retrieval-SfM-120k_resnet101_gem_contrastive_m0.70_adam_lr1.0e-06_wd1.0e-06"
                                  "_nnum5_qsize2000_psize20000_bsize5_uevery1_imsize1024_temp0.1_std_teach_vgg16")


def test_the_flags_defaults_are_the_configs_defaults():
    """main.py with no flags trains what TrainConfig() trains: one set of defaults."""
    assert parsed() == TrainConfig(directory="x")
    assert parsed("-td", "synth-oxford,synth-paris+1m").test_datasets == ("synth-oxford", "synth-paris+1m")
    with pytest.raises(TypeError, match="neg_nun"):
        TrainConfig(directory="x", neg_nun=3)
    with pytest.raises(ValueError, match="--loss rkd cannot be used with --mode ts"):
        TrainConfig(directory="x", loss="rkd", mode="ts").check()


@pytest.mark.parametrize("flags, message", [
    (["--loss", "rkd", "--mode", "ts"], "--loss rkd cannot be used with --mode ts"),
    (["--loss", "triplet", "--mode", "ts_self"], "--loss triplet cannot be used with --mode ts_self"),
    (["--mode", "reg", "--sym"], "--sym has no meaning with --mode reg: its members are not a query/positive/"),
    (["--mode", "std", "--sym"], "--sym has no meaning with --mode std: every member of its tuples goes through the "
                                 "student already"),
    (["--mode", "rand_tpl", "--sym"], "--mode rand_tpl: every member of its tuples goes through the student"),
    (["-td", "roxford6k"], "Unsupported or unknown test dataset: roxford6k"),
    (["--arch", "resnet9000"], "unknown architecture 'resnet9000'; choose one of"),
    (["--arch", "timm:convnext_atto+cls"], "convnext_atto gives a feature map, not tokens: drop +cls"),
    (["--train-batchnorm", "-b", "1"], "--train-batchnorm needs --batch-size of at least 2"),
    (["--proj-lr-mult", "0"], "--proj-lr-mult: must be a positive finite number"),
    (["-nn", "0"], "--neg-num 0: --mode std trains on tuples with mined negatives; with none, --loss contrastive sees "
                   "positives only"),
    (["-nn", "0", "-m", "ts_rand", "-l", "triplet"], "--neg-num 0: --mode ts_rand trains on tuples with random"),
    # trained (rand_tpl draws its own negatives), but validated as std: a triplet loss of 0 every epoch
    (["-nn", "0", "-m", "rand_tpl", "-l", "triplet"], "--neg-num 0: --mode rand_tpl is validated on --mode std's "
                                                      "tuples, with mined negatives"),
    (["-nn", "0", "-m", "rand_tpl_a", "-l", "cross_entropy"], "--mode rand_tpl_a is validated on --mode ts's tuples"),
    (["-m", "reg", "--feat-val-path", "val.npy", "--no-val"], "--feat-val-path with --no-val: the val split is not "
                                                                 "validated, so the file would not be read"),
    (["--val-freq", "2", "--no-val"], "--val-freq 2 with --no-val: no epoch is validated, so it would change nothing"),
    (["-m", "rand", "-l", "rkd", "-b", "2"], "--loss rkd needs --batch-size of at least 3 (its angles take three"),
    (["-m", "rand", "-l", "dark", "-b", "4"], "--loss dark needs --batch-size of at least 5 (4 neighbours"),
    (["--trunk-weights", "synthetic", "--not-pretrained"], "--trunk-weights and --not-pretrained exclude each other"),
    (["--trunk-weights", "no/such/trunk.pth"], "--trunk-weights: 'no/such/trunk.pth' is neither one of ['synthetic'] "
                                               "nor a file"),
])
def test_impossible_combinations_are_refused_at_parse_time(flags, message, capsys):
    with pytest.raises(SystemExit):
        train_cli.main(["--directory", "unused"] + flags)
    assert message in capsys.readouterr().err


def test_resume_continues_exactly(synth_root, tmp_path):
    straight = train(synth_root, tmp_path / "a", "-a", SMALL, "--epochs", "2")
    train(synth_root, tmp_path / "b", "-a", SMALL, "--epochs", "1")
    resumed = train(synth_root, tmp_path / "b", "-a", SMALL, "--epochs", "2", "--resume", "model_epoch1.pth.tar")
    assert [r["epoch"] for r in resumed.history] == [2]
    assert resumed.history[0]["train_loss"] == pytest.approx(straight.history[1]["train_loss"], rel=1e-5)
    a = load_checkpoint(straight.run_dir / "model_epoch2.pth.tar")
    b = load_checkpoint(resumed.run_dir / "model_epoch2.pth.tar")
    for key, value in a["state_dict"].items():
        assert torch.allclose(value.float(), b["state_dict"][key].float(), atol=1e-6), key
    run = straight.run_dir
    assert (run / "model_best.pth.tar").exists() and (run / "log.txt").read_text().count(">> Train: [2]") >= 1
    assert (run / "loss_log.txt").read_text().splitlines()[1].startswith("0, ")


def test_resume_with_other_optimizer_groups_names_the_file_and_keeps_it(synth_root, tmp_path):
    first = train(synth_root, tmp_path, "-a", SMALL, "--epochs", "1", "--no-val")
    checkpoint = first.run_dir / "model_epoch1.pth.tar"
    state = load_checkpoint(checkpoint)
    state["optimizer"]["param_groups"] = state["optimizer"]["param_groups"][:1]  # as if saved with other groups
    torch.save(state, checkpoint)
    before = checkpoint.read_bytes()
    with pytest.raises(ValueError, match=r"cannot resume from .*model_epoch1\.pth\.tar.*--proj-lr-mult"):
        train(synth_root, tmp_path, "-a", SMALL, "--epochs", "2", "--no-val", "--resume", "model_epoch1.pth.tar")
    assert checkpoint.read_bytes() == before


def test_a_branch_with_another_projection_multiplier_is_refused(synth_root, tmp_path):
    """Only another count of groups was refused: the branch, in a folder named _projlr10, trained
    the projection at the checkpoint's 30 times the trunk's learning rate, without a word."""
    first = train(synth_root, tmp_path / "a", "-a", "mobilenet_v2", "--proj-lr-mult", "30", "--epochs", "1", "--no-val")
    checkpoint = first.run_dir / "model_epoch1.pth.tar"
    with pytest.raises(ConfigError, match=r"cannot resume from .*model_epoch1.pth.tar: its optimizer's parameter "
                                          r"group 1 learns at 30 times the trunk's learning rate, this run's at 10; "
                                          r".*the same --proj-lr-mult"):
        train(synth_root, tmp_path / "b", "-a", "mobilenet_v2", "--proj-lr-mult", "10", "--epochs", "2", "--no-val",
              "--resume", str(checkpoint))
    assert not list((tmp_path / "b").rglob("*.pth.tar"))


def test_resume_of_a_checkpoint_of_another_loss_is_refused_by_name(synth_root, tmp_path):
    first = train(synth_root, tmp_path, "-a", SMALL, "--epochs", "1", "--no-val")
    checkpoint = first.run_dir / "model_epoch1.pth.tar"
    assert load_checkpoint(checkpoint)["meta"]["loss"] == "contrastive"
    with pytest.raises(CheckpointError, match=r"model_epoch1.pth.tar: it was trained with --loss contrastive, this "
                                              r"run trains with --loss triplet"):
        train(synth_root, tmp_path, "-a", SMALL, "--epochs", "2", "--no-val", "-l", "triplet", "--resume",
              str(checkpoint))
    # a margin the folder's name rounds alike (m0.12): the run went on with the other margin
    margin = train(synth_root, tmp_path / "m", "-a", SMALL, "--epochs", "1", "--no-val", "-lm", "0.125")
    assert "_m0.12_" in margin.run_dir.name
    with pytest.raises(CheckpointError, match=r"model_epoch1.pth.tar: it was trained with --loss-margin 0.125, this "
                                              r"run trains with --loss-margin 0.12;"):
        train(synth_root, tmp_path / "m", "-a", SMALL, "--epochs", "2", "--no-val", "-lm", "0.12", "--resume", "latest")
    branch = train(synth_root, tmp_path / "b", "-a", SMALL, "--epochs", "2", "--no-val", "-lm", "0.5", "--resume",
                   str(margin.run_dir / "model_epoch1.pth.tar"))  # a branch of its own may change it
    assert [r["epoch"] for r in branch.history] == [2]


# the meta keys init_network accepted before checkpoints recorded a margin (aml at 8304ae5): an
# older aml reads a newer checkpoint's meta, as test.py and the search do
_OLDER_META_KEYS = {"architecture", "pooling", "local_whitening", "regional", "whitening", "mean", "std",
                    "pretrained", "teacher", "teacher_dim", "data_root", "outputdim", "Lw", "teacher_fingerprint",
                    "seed", "batchnorm_calibrated", "trunk_weights", "mode", "loss", "autocast"}


def test_the_margin_is_recorded_beside_the_best_loss_where_an_older_aml_reads_the_meta(synth_root, tmp_path):
    """The margin went into meta, which an older aml's init_network refuses by its unknown key."""
    run = train(synth_root, tmp_path, "-a", SMALL, "--epochs", "1", "--no-val", "-lm", "0.125")
    path = run.run_dir / "model_epoch1.pth.tar"
    state = load_checkpoint(path)
    assert state["loss_margin"] == 0.125 and set(state["meta"]) <= _OLDER_META_KEYS
    # a checkpoint of the commits that wrote it into meta: still checked, and init_network takes its meta
    state["meta"]["loss_margin"] = state.pop("loss_margin")
    save_checkpoint(state, path)
    # kept where it is: a network's fingerprint hashes its meta, and that of the commits' networks stays theirs
    assert init_network({**state["meta"], "pretrained": False}).meta["loss_margin"] == 0.125
    assert load_network(path).meta["loss_margin"] == 0.125
    with pytest.raises(CheckpointError, match=r"it was trained with --loss-margin 0.125, this run trains with "
                                              r"--loss-margin 0.12;"):
        train(synth_root, tmp_path, "-a", SMALL, "--epochs", "2", "--no-val", "-lm", "0.12", "--resume", "latest")


def test_a_new_run_never_replaces_an_earlier_runs_checkpoints(synth_root, tmp_path):
    """The same command again without --resume (after raising --epochs, say) emptied the logs
    and replaced model_best after one epoch, then every model_epochN."""
    first = train(synth_root, tmp_path, "-a", SMALL, "--epochs", "1", "--no-val")
    assert load_checkpoint(first.run_dir / "model_best.pth.tar")["min_loss_of"] == "training"
    before = {p.name: p.read_bytes() for p in first.run_dir.iterdir()}
    with pytest.raises(ConfigError, match=r"holds the checkpoints of an earlier run \(model_best.pth.tar\): continue "
                                          r"it with --resume latest, or start a new one elsewhere"):
        train(synth_root, tmp_path, "-a", SMALL, "--epochs", "2", "--no-val")
    assert {p.name: p.read_bytes() for p in first.run_dir.iterdir()} == before
    checkpoint = first.run_dir / "model_epoch1.pth.tar"
    state = load_checkpoint(checkpoint)
    elsewhere = tmp_path / "other.pth.tar"
    torch.save({key: value for key, value in state.items() if key != "optimizer"}, elsewhere)
    with pytest.raises(CheckpointError, match=r"other.pth.tar: it holds a network but no training state"):
        train(synth_root, tmp_path, "-a", SMALL, "--epochs", "2", "--no-val", "--resume", str(elsewhere))
    with pytest.raises(CheckpointError, match=r"it was trained with --optimizer adam, this run with --optimizer sgd"):
        train(synth_root, tmp_path, "-a", SMALL, "--epochs", "2", "--no-val", "-o", "sgd", "--resume", str(checkpoint))
    assert {p.name: p.read_bytes() for p in first.run_dir.iterdir()} == before


def test_resume_against_other_teacher_weights_is_refused():
    from aml.networks import build_network
    from aml.training.resume import _check_meta

    net = build_network(SMALL, pretrained=False)
    net.meta.update(teacher="teacher.pth.tar", teacher_fingerprint="b" * 16)
    with pytest.raises(CheckpointError, match=r"trained against other teacher weights than those of --teacher "
                                              r"teacher.pth.tar \(fingerprint a{16}, now b{16}\)"):
        _check_meta("model_epoch3.pth.tar", {**net.meta, "teacher_fingerprint": "a" * 16}, net)
    _check_meta("model_epoch3.pth.tar", {**net.meta, "teacher_fingerprint": None}, net)  # recorded by no earlier aml


def test_a_std_run_of_another_width_is_told_how_to_train_on():
    """A std run that kept resnet18's width under --teacher resnet101 (aml before 2026-12-07)
    now builds 2048-d: the refusal says which flag keeps the width, and only there."""
    from aml.networks import build_network
    from aml.training.resume import _check_meta

    projected = build_network("resnet18", pretrained=False, teacher_dim=2048)
    projected.meta["mode"] = "std"
    with pytest.raises(CheckpointError, match=r"output dimension 512, .*resnet18 keeps its width 512 with the default "
                                              r"--teacher vgg16: give it"):
        _check_meta("model_epoch1.pth.tar", {**projected.meta, "outputdim": 512}, projected)
    own = build_network("resnet18", pretrained=False)
    own.meta["mode"] = "std"  # a 2048-d run resumed with the default teacher: the default is no fix
    with pytest.raises(CheckpointError, match=r"give a teacher of 2048 dimensions, as the run was started\)$"):
        _check_meta("model_epoch1.pth.tar", {**own.meta, "outputdim": 2048}, own)
    projected.meta["mode"] = "ts"
    with pytest.raises(CheckpointError, match=r"with the flags the run was started with$"):
        _check_meta("model_epoch1.pth.tar", {**projected.meta, "outputdim": 512}, projected)


def test_resume_without_checkpoint_starts_from_scratch_and_tests_every_epoch(synth_root, tmp_path, capsys, caplog):
    """As the original, a --resume of nothing starts the run; a name that is nowhere (mistyped)
    started it without a word."""
    caplog.set_level("INFO", logger="aml.training.runner")  # its lines reach main.py's stdout
    result = train(synth_root, tmp_path, "-a", SMALL, "--epochs", "1", "--no-val", "--resume", "nothing.pth.tar",
                   "--test-freq", "1", "-td", "synth-oxford", "--test-image-size", "48")
    out = capsys.readouterr().out
    assert "--resume nothing.pth.tar: no such file in " in out
    # each block of test.py's lines is said to be symmetric or asymmetric (both read ">> synth-oxford: ...")
    said = out.splitlines()
    # the device first: a run on the CPU by mistake is seen before the data and the teacher
    first = next(k for k, line in enumerate(said) if line.startswith(">> "))
    assert said[first].startswith(f">> Training {SMALL} in mode std with contrastive loss on the CPU; run folder "), out
    assert ">> Test [1] symmetric: the student encodes the queries and the database" in said
    tested = [line for line in said if line.startswith((">> Test", ">> synth-oxford: mAP"))]
    assert tested[0].startswith(">> Test [1] symmetric") and len(tested) >= 2
    assert not any("asymmetric" in line for line in said)
    assert [r["epoch"] for r in result.history] == [1]
    tested = result.history[0]["test"]["symmetric"]["synth-oxford"]["plain"]["medium"]["map"]
    assert 0 < tested < 1


def test_bad_feature_files_are_clear_and_keep_checkpoints(synth_root, tmp_path):
    run = train(synth_root, tmp_path, "-a", SMALL, "--epochs", "1", "--no-val").run_dir
    before = {p.name: p.read_bytes() for p in run.glob("*.pth.tar")}
    with pytest.raises(FileNotFoundError, match="missing.npy does not exist"):
        train(synth_root, tmp_path, "-a", SMALL, "--epochs", "2", "--no-val", "-m", "ts",
              "--feat-path", str(tmp_path / "missing.npy"))
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((512, 7), dtype=np.float32))
    with pytest.raises(ValueError, match="wrong.npy has shape \\(512, 7\\), expected D x 128"):
        train(synth_root, tmp_path, "-a", SMALL, "--epochs", "2", "--no-val", "-m", "ts", "--feat-path", str(wrong))
    other_teacher = tmp_path / "resnet101.npy"  # the default --teacher is vgg16 (512-d)
    np.save(other_teacher, np.ones((2048, 128), dtype=np.float32))
    with pytest.raises(ValueError, match="resnet101.npy holds 2048-d descriptors but 512-d are expected .* use the "
                                         "--teacher it was extracted with"):
        train(synth_root, tmp_path, "-a", SMALL, "--epochs", "2", "--no-val", "-m", "ts", "--feat-path",
              str(other_teacher))
    assert {p.name: p.read_bytes() for p in run.glob("*.pth.tar")} == before


def test_train_batchnorm_learns_batch_statistics_and_names_the_run(synth_root, tmp_path):
    frozen = train(synth_root, tmp_path, "-a", "resnet18", "--epochs", "1", "--no-val")
    learned = train(synth_root, tmp_path, "-a", "resnet18", "--epochs", "1", "--no-val", "--train-batchnorm")
    assert learned.run_dir.name == frozen.run_dir.name.replace("_std_", "_std_trainbn_")
    assert run_name(parsed("--proj-lr-mult", "0.1")).endswith("_std_projlr0.1_teach_vgg16")

    def running_mean(result):
        return load_checkpoint(result.run_dir / "model_epoch1.pth.tar")["state_dict"]["features.1.running_mean"]

    assert torch.count_nonzero(running_mean(frozen)) == 0  # random init, frozen: untouched
    assert torch.count_nonzero(running_mean(learned)) > 0


def test_trunk_weights_file_is_where_training_starts_and_is_recorded(synth_root, tmp_path):
    from torch import nn

    from aml.networks.backbones import build_trunk

    torch.manual_seed(7)
    trunk = {k: v for k, v in nn.Sequential(*build_trunk("resnet18", pretrained=False)).state_dict().items()}
    path = tmp_path / "my-trunk.pth"
    torch.save(trunk, path)
    flags = [f for f in TINY if f != "--not-pretrained"]
    flags[flags.index("--lr") + 1] = "1e-12"  # Adam moves each weight by about 1e-12 per step
    run = train_cli.main(["--directory", str(tmp_path / "runs"), "--data-root", str(synth_root), *flags, "-a", "resnet18",
                          "--epochs", "1", "--trunk-weights", str(path)]).run_dir
    assert "_notpretrained" not in run.name and "_trunkmy-trunk_" in run.name
    state = load_checkpoint(run / "model_epoch1.pth.tar")
    assert state["meta"]["trunk_weights"] == "my-trunk.pth"
    for key, value in trunk.items():
        if value.is_floating_point() and "running" not in key:
            assert torch.allclose(state["state_dict"][f"features.{key}"], value, atol=1e-9), key
    assert load_network(run / "model_epoch1.pth.tar").meta["trunk_weights"] == "my-trunk.pth"


def test_batch_forward_with_frozen_batchnorm_equals_tuple_by_tuple(synth_root, tmp_path, monkeypatch):
    from aml.training import trainer

    encoded = []  # tuples per encode_batch call

    def counting(encode, items, *args):
        encoded.append(len(items))
        return original(encode, items, *args)

    original = trainer.encode_batch
    monkeypatch.setattr(trainer, "encode_batch", counting)
    # SGD: Adam divides by the root of tiny second moments, which turns rounding into whole steps
    one = train(synth_root, tmp_path / "one", "-a", "resnet18", "--epochs", "1", "--no-val", "--lr", "1e-2", "-o", "sgd")
    calls, encoded[:] = list(encoded), []
    together = train(synth_root, tmp_path / "together", "-a", "resnet18", "--epochs", "1", "--no-val", "--lr", "1e-2", "-o", "sgd",
                     "--batch-forward")
    assert set(calls) == {1} and set(encoded) == {5} and sum(calls) == sum(encoded)  # -b 5: tuple by tuple vs batch
    assert one.run_dir == together.run_dir.parent.parent / "one" / together.run_dir.name  # same run name
    assert together.history[0]["train_loss"] == pytest.approx(one.history[0]["train_loss"], rel=1e-5)
    a = load_checkpoint(one.run_dir / "model_epoch1.pth.tar")["state_dict"]
    b = load_checkpoint(together.run_dir / "model_epoch1.pth.tar")["state_dict"]
    for key, value in a.items():
        assert torch.allclose(value.float(), b[key].float(), atol=1e-5), key


def test_amp_trains_in_bfloat16_close_to_fp32(synth_root, tmp_path, monkeypatch):
    from aml.training import trainer

    dtypes = set()  # the autocast dtype the student's forward passes ran under (None: fp32)

    def recording(encode, items, *args):
        dtypes.add(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return original(encode, items, *args)

    original = trainer.encode_batch
    monkeypatch.setattr(trainer, "encode_batch", recording)
    flags = ["-a", "resnet18", "--epochs", "1", "--no-val", "--lr", "1e-2", "-o", "sgd", "--batch-forward"]
    fp32 = train(synth_root, tmp_path / "fp32", *flags)
    assert dtypes == {None}
    dtypes.clear()
    bf16 = train(synth_root, tmp_path / "bf16", *flags, "--amp")
    assert dtypes == {torch.bfloat16}
    assert np.isfinite(bf16.history[0]["train_loss"])
    assert bf16.history[0]["train_loss"] == pytest.approx(fp32.history[0]["train_loss"], rel=0.05)
    state = load_checkpoint(bf16.run_dir / "model_epoch1.pth.tar")["state_dict"]
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())  # weights stay fp32


def test_a_timm_vit_student_trains_and_tests_symmetric_and_asymmetric(synth_root, tmp_path):
    """main.py -a timm:... against a teacher checkpoint; test.py reads the student back (no
    download) and tests it alone and against the teacher's database."""
    pytest.importorskip("timm")
    from aml.cli import test as test_cli
    from aml.networks import build_network
    from aml.networks.checkpoint import checkpoint_state, save_checkpoint

    torch.manual_seed(0)
    teacher = save_checkpoint(checkpoint_state(build_network(SMALL, pretrained=False), 0, 0.0), tmp_path / "t.pth")
    arch = "timm:test_vit+cls"
    result = train(synth_root, tmp_path, "-a", arch, "--epochs", "1", "--no-val", "-m", "ts", "--teacher",
                   str(teacher))
    assert f"_{arch}_gem_" in result.run_dir.name
    student = result.run_dir / "model_epoch1.pth.tar"
    assert load_network(student).meta["architecture"] == arch
    common = ["-npath", str(student), "-d", "synth-oxford", "-imsize", "64", "-j", "0", "--device", "cpu",
              "--data-root", str(synth_root)]
    symmetric = test_cli.main(common)["synth-oxford"]["plain"]["medium"]["map"]
    asymmetric = test_cli.main(common + ["--asym", "--teacher", str(teacher)])["synth-oxford"]["plain"]["medium"]["map"]
    assert 0 < symmetric < 1 and 0 < asymmetric < 1 and symmetric != asymmetric


def test_a_timm_model_with_its_released_weights_teaches_and_is_found_again_by_test_py(synth_root, tmp_path):
    """--teacher took a published name or a checkpoint only: DINOv2 as released (the teachers
    practitioners pick today) needed a checkpoint written by hand first."""
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    from aml.cli import test as test_cli

    root = tmp_path / "data"
    (root / "networks").mkdir(parents=True)
    for part in ("train", "test"):
        (root / part).symlink_to(synth_root / part)
    torch.manual_seed(0)  # the hub's file of timm's test ConvNeXt (64-d), as a download would put it
    save_file(timm.create_model("test_convnext", pretrained=False).state_dict(),
              str(root / "networks" / "test_convnext.r160_in1k.safetensors"))
    teacher = "timm:test_convnext-gem"
    result = train(root, tmp_path / "runs", "-a", SMALL, "--epochs", "1", "--no-val", "-m", "ts", "--teacher", teacher)
    student = result.run_dir / "model_epoch1.pth.tar"
    meta = load_network(student).meta
    assert meta["teacher"] == teacher and meta["outputdim"] == 64 and len(meta["teacher_fingerprint"]) == 16
    found = test_cli.main(["-npath", str(student), "-d", "synth-oxford", "-imsize", "48", "-j", "0", "--device", "cpu",
                           "--data-root", str(root), "--asym"])  # the teacher the student records, by its name
    assert 0 < found["synth-oxford"]["plain"]["medium"]["map"] < 1


def test_resume_keeps_a_better_model_best_and_finds_a_path_relative_to_the_working_folder(tmp_path, monkeypatch):
    """Resuming from an epoch before model_best (a crash between its write and model_epochN's on a
    GPU, or --resume model_epoch5 in a folder whose best is epoch 8) took the best loss of that
    epoch, so a worse epoch replaced model_best; and a path relative to the working folder was
    not looked for, so the folder's latest checkpoint was taken instead, without a word."""
    from aml.networks import build_network
    from aml.networks.checkpoint import checkpoint_state, save_checkpoint
    from aml.training.optim import build_optimizer
    from aml.training.resume import resume_run

    net = build_network(SMALL, pretrained=False)
    optimizer = build_optimizer(net, "adam", 1e-3, 0.9, 1e-6)
    run_dir, other, fresh = tmp_path / "run", tmp_path / "other", tmp_path / "fresh"
    for folder in (run_dir, other, fresh):
        folder.mkdir()
    save_checkpoint(checkpoint_state(net, 1, 0.5, optimizer), run_dir / "model_epoch1.pth.tar")
    save_checkpoint(checkpoint_state(net, 3, 0.3, optimizer), run_dir / "model_best.pth.tar")
    save_checkpoint(checkpoint_state(net, 7, 0.2, optimizer), other / "model_epoch7.pth.tar")
    assert resume_run(run_dir, "model_epoch1.pth.tar", net, optimizer) == (1, 0.3)
    monkeypatch.chdir(tmp_path)
    # a branch: its model_best is chosen among its own epochs, not against the other folder's best
    assert resume_run(fresh, "other/model_epoch7.pth.tar", net, optimizer) == (7, float("inf"))
    save_checkpoint(checkpoint_state(net, 2, 0.4, optimizer), run_dir / "model_epoch2.pth.tar")
    assert resume_run(run_dir, "latest", net, optimizer) == (2, 0.3)
    linked = tmp_path / "linked"  # a run folder restored as links (a backup, DVC): its files are its own
    linked.mkdir()
    (linked / "model_epoch7.pth.tar").symlink_to(other / "model_epoch7.pth.tar")
    assert resume_run(linked, "latest", net, optimizer) == (7, 0.2)


def test_resume_refuses_a_best_loss_of_the_other_kind_and_names_the_settings_it_overrides(tmp_path, caplog):
    """Switching --no-val across a resume chose model_best by comparing a validation loss with a
    training loss; and a resumed run took the checkpoint's lr, momentum and weight decay over the
    command's, without a word. Without a model_epochN (--save-freq above the epochs done), the run
    started over from random weights: model_best is resumed instead."""
    from aml.networks import build_network
    from aml.networks.checkpoint import RunRecord, checkpoint_state, save_checkpoint
    from aml.training.optim import build_optimizer
    from aml.training.resume import resume_run

    net = build_network(SMALL, pretrained=False)
    optimizer = build_optimizer(net, "sgd", 1e-3, 0.9, 1e-6)
    validation, training = RunRecord("validation"), RunRecord("training")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_checkpoint(checkpoint_state(net, 4, 0.5, optimizer, validation), run_dir / "model_best.pth.tar")
    with pytest.raises(CheckpointError, match=r"model_best.pth.tar: its model_best was chosen by validation loss, "
                                              r"this run chooses by training loss.*resume without --no-val"):
        resume_run(run_dir, "latest", net, optimizer, training)
    other = build_optimizer(net, "sgd", 5e-4, 0.8, 1e-6)
    with caplog.at_level("WARNING", logger="aml.training.resume"):
        assert resume_run(run_dir, "latest", net, other, validation) == (4, 0.5)  # model_best: the only one
    assert "continues with its optimizer's settings: initial_lr 0.001 (this command: 0.0005); momentum 0.9 (this " \
           "command: 0.8); to train with other settings, start a new run" in caplog.text
    assert other.param_groups[0]["momentum"] == 0.9
    # the kind of best loss alone, as a string: these parameters' spelling before they recorded more
    assert checkpoint_state(net, 4, 0.5, optimizer, "validation")["min_loss_of"] == "validation"
    assert checkpoint_state(net, 4, 0.5, optimizer, min_loss_of="training")["min_loss_of"] == "training"
    assert resume_run(run_dir, "latest", net, other, "validation") == (4, 0.5)
    assert resume_run(run_dir, "latest", net, other, min_loss_of="validation") == (4, 0.5)
    save_checkpoint(checkpoint_state(net, 5, 0.7, optimizer), run_dir / "model_epoch5.pth.tar")  # an older aml's
    caplog.clear()
    with caplog.at_level("WARNING", logger="aml.training.resume"):
        assert resume_run(run_dir, "latest", net, optimizer, validation) == (5, 0.5)
    assert not caplog.text


def test_resume_in_another_precision_is_named(tmp_path, caplog):
    """A run started with --amp and resumed without it (or the other way round) went on in the other
    precision without a word: the precision is not in the run folder's name."""
    from aml.networks import build_network
    from aml.networks.checkpoint import checkpoint_state, save_checkpoint
    from aml.training.optim import build_optimizer
    from aml.training.resume import resume_run

    net = build_network(SMALL, pretrained=False)
    optimizer = build_optimizer(net, "adam", 1e-3, 0.9, 1e-6)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    net.meta["autocast"] = "bfloat16"
    save_checkpoint(checkpoint_state(net, 2, 0.5, optimizer), run_dir / "model_epoch2.pth.tar")
    net.meta["autocast"] = "off"
    with caplog.at_level("WARNING", logger="aml.training.resume"):
        assert resume_run(run_dir, "latest", net, optimizer) == (2, 0.5)
    assert "its epochs were trained in bfloat16 autocast, this run goes on in float32; resume with --amp to " \
           "train on as it was" in caplog.text
    caplog.clear()
    net.meta["autocast"] = "bfloat16"
    with caplog.at_level("WARNING", logger="aml.training.resume"):
        resume_run(run_dir, "latest", net, optimizer)
    assert not caplog.text


@pytest.mark.parametrize("name, value, problem", [
    ("exp_avg", torch.zeros(3), r"has shape \(3,\), the parameter \(64, 3, 3, 3\)"),
    ("exp_avg", torch.full((64, 3, 3, 3), float("nan")), "holds non-finite values"),
    ("exp_avg_sq", torch.full((64, 3, 3, 3), -1.0), r"holds negative values \(a mean of squares\)"),
])
def test_an_optimizer_state_no_training_writes_is_refused_before_it_is_loaded(tmp_path, name, value, problem):
    """Adam's moment of an edited or damaged checkpoint with another shape than its parameter was
    loaded as it was; the fused step then wrote past its end: a segfault, or heap corruption. A
    negative second moment (or a NaN) made the first step's weights NaN: blamed on --lr."""
    from aml.networks import build_network
    from aml.networks.checkpoint import checkpoint_state, save_checkpoint
    from aml.training.optim import build_optimizer
    from aml.training.resume import resume_run

    net = build_network(SMALL, pretrained=False)
    optimizer = build_optimizer(net, "adam", 1e-3, 0.9, 1e-6)
    net(torch.rand(1, 3, 32, 32)).sum().backward()
    optimizer.step()
    state = checkpoint_state(net, 1, 0.5, optimizer)
    state["optimizer"]["state"][0][name] = value
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_checkpoint(state, run_dir / "model_epoch1.pth.tar")
    with pytest.raises(CheckpointError, match=rf"model_epoch1.pth.tar: its optimizer's {name} of parameter 0 "
                                              rf"{problem}; the file was edited"):
        resume_run(run_dir, "latest", net, optimizer)


def test_the_training_precision_is_recorded_in_every_checkpoint(synth_root, tmp_path):
    """...and every key a fresh run's meta holds is one the original's init_network and
    load_network take (the new key was refused by init_network, and dropped by load_network)."""
    from aml.networks import init_network

    run = train(synth_root, tmp_path / "amp", "-a", SMALL, "--epochs", "1", "--no-val", "--amp")
    meta = load_checkpoint(run.run_dir / "model_epoch1.pth.tar")["meta"]
    assert meta["autocast"] == "bfloat16"
    # how mining encoded images, beside min_loss (a resume names a change): PIL and float32 on the CPU
    assert load_checkpoint(run.run_dir / "model_epoch1.pth.tar")["pixels"] == "pil-fp32" and "pixels" not in meta
    assert load_network(run.run_dir / "model_epoch1.pth.tar").meta == meta
    assert init_network({**meta, "pretrained": False}).meta["autocast"] == "bfloat16"


def test_checkpoint_frequencies_above_the_epochs_are_named_before_training():
    from aml.training import TrainSettings

    assert TrainSettings(epochs=3, save_freq=3, val_freq=3).notices() == []
    assert TrainSettings(epochs=3, val_freq=4, val=False).notices() == []
    notices = TrainSettings(epochs=3, save_freq=5, val_freq=4).notices()
    assert [notice.split(":")[0] for notice in notices] == ["--save-freq 5 is above --epochs 3",
                                                            "--val-freq 4 is above --epochs 3"]
    assert "no model_best is written" in notices[1]
    assert TrainSettings(epochs=3, val_freq=4, val=False, neg_num=0).notices() == []
    # test flags without --test-freq tested nothing, without a word
    assert TrainConfig.from_flags("runs", test_freq=2, test_datasets="synth-oxford", test_whiten="x").notices() == []
    assert TrainConfig.from_flags("runs", test_datasets="roxford5k,rparis6k").notices() == []  # the defaults
    notices = TrainConfig.from_flags("runs", epochs=3, save_freq=5, test_datasets="synth-oxford", test_image_size=96,
                                     test_whiten="synth-sfm").notices()
    assert notices[0].startswith("--save-freq 5 is above --epochs 3")
    assert notices[1] == ("-td/--test-datasets synth-oxford, --test-image-size 96, --test-whiten synth-sfm are given "
                          "without --test-freq: nothing is tested during training; add --test-freq N to test every N "
                          "epochs")
    from aml.training.config import problems  # a regression reads no negatives: -nn 0 validates it alike

    assert problems(TrainConfig.from_flags("runs", mode="reg", loss="regression", neg_num=0)) == []
    # a loss that reads no negatives trains without them in a mode that mines some (regression in ts_self)
    assert problems(TrainConfig.from_flags("runs", mode="ts_self", loss="regression", neg_num=0, val=False)) == []


def test_the_last_epoch_is_saved_and_an_update_every_of_no_step_is_refused(synth_root, tmp_path, capsys):
    """--epochs 3 --save-freq 2 trained, logged and lost epoch 3 (not a model_best); -u above an
    epoch's batches never stepped: checkpoints of the untouched weights, without a word."""
    run = train(synth_root, tmp_path / "saved", "-a", SMALL, "--epochs", "3", "--save-freq", "2", "--no-val")
    assert sorted(p.name for p in run.run_dir.glob("model_epoch*")) == ["model_epoch2.pth.tar", "model_epoch3.pth.tar"]
    from aml.utils.errors import ConfigError

    with pytest.raises(ConfigError, match=r"--update-every 9: an epoch holds \d batches, so the optimizer would "
                                          r"never step .* a smaller --batch-size, or a larger --query-size$"):
        train(synth_root, tmp_path / "never", "-a", SMALL, "--epochs", "1", "--no-val", "-u", "9")
    with pytest.raises(ConfigError, match=r"or less, a smaller --batch-size$"):  # every query pair drawn already
        train(synth_root, tmp_path / "never", "-a", SMALL, "--epochs", "1", "--no-val", "-u", "999", "-qs", "99999")
    capsys.readouterr()
    train(synth_root, tmp_path / "some", "-a", SMALL, "--epochs", "1", "--no-val", "-u", "3", "-qs", "20")
    printed = capsys.readouterr()
    assert "--update-every 3: an epoch holds 4 batches, so the gradients of its last 1 are dropped" in printed.out


def test_the_network_is_built_by_rank_0_first(synth_root, tmp_path, monkeypatch):
    """Under torchrun every rank built the network at once: on a fresh data root all of them
    downloaded the ImageNet weights into one shared .part file."""
    from aml.training import runner

    inside, built = [], []
    real_first, real_build = runner.main_first, runner.build_network

    def first(world, step):
        inside.append(True)
        try:
            return real_first(world, step)
        finally:
            inside.pop()

    def build(*args, **kwargs):
        built.append(bool(inside))
        return real_build(*args, **kwargs)

    monkeypatch.setattr(runner, "main_first", first)
    monkeypatch.setattr(runner, "build_network", build)
    pretrained = [flag for flag in TINY if flag != "--not-pretrained"]  # ImageNet weights: what may be downloaded
    train_cli.main(["--directory", str(tmp_path), "--data-root", str(synth_root), *pretrained, "-a", "mobilenet_v2",
                    "--epochs", "1", "--no-val"])
    assert built == [True]


def test_resume_refuses_another_pooling_a_damaged_epoch_or_best_loss_and_a_path_that_is_not_there(tmp_path, caplog):
    """mac, spoc and rmac hold no weights, so a run of one resumed from another's checkpoint and
    trained on as another network; an edited epoch (-3) wrote model_epoch-2 and replaced the
    run's checkpoints, a NaN best loss kept model_best forever; a --resume path that is not there
    took the folder's latest checkpoint without a word."""
    from aml.networks import build_network
    from aml.networks.checkpoint import checkpoint_state, save_checkpoint
    from aml.training.optim import build_optimizer
    from aml.training.resume import resume_run

    net = build_network(SMALL, pretrained=False, pooling="mac")
    optimizer = build_optimizer(net, "adam", 1e-3, 0.9, 1e-6)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_checkpoint(checkpoint_state(net, 1, 0.5, optimizer), run_dir / "model_epoch1.pth.tar")
    spoc = build_network(SMALL, pretrained=False, pooling="spoc")
    with pytest.raises(CheckpointError, match=r"model_epoch1.pth.tar: it was trained with --pool mac, this run "
                                              r"trains with --pool spoc; resume with the flags"):
        resume_run(run_dir, "latest", spoc, build_optimizer(spoc, "adam", 1e-3, 0.9, 1e-6))
    for epoch, loss, message in ((-3, 0.5, r"its epoch -3 is not a count"), ("one", 0.5, r"its epoch 'one' is not"),
                                 (2, float("nan"), r"its best loss nan is not a number"),
                                 (2, float("-inf"), r"its best loss -inf is not a number"),
                                 (2, "x", r"its best loss 'x' is not a number")):
        state = checkpoint_state(net, 1, 0.5, optimizer)
        state.update(epoch=epoch, min_loss=loss)
        save_checkpoint(state, tmp_path / "edited.pth.tar")
        with pytest.raises(CheckpointError, match=message + r".*resume from another checkpoint of the run"):
            resume_run(run_dir, str(tmp_path / "edited.pth.tar"), net, optimizer)
    state.update(epoch=2, min_loss=torch.tensor(0.25))  # a loss kept as a tensor is a number
    save_checkpoint(state, run_dir / "edited.pth.tar")  # in the run folder: one from outside would mix two runs
    assert resume_run(run_dir, "edited.pth.tar", net, optimizer) == (2, 0.25)
    (run_dir / "edited.pth.tar").unlink()
    with pytest.raises(CheckpointError, match=r"--resume other/model_epoch1.pth.tar: no such file"):
        resume_run(run_dir, "other/model_epoch1.pth.tar", net, optimizer)
    with pytest.raises(CheckpointError, match=rf"--resume {tmp_path}: {tmp_path} is a folder; give a checkpoint file"):
        resume_run(run_dir, str(tmp_path), net, optimizer)
    state.update(min_loss="x")  # the run's model_best is read too
    save_checkpoint(state, run_dir / "model_best.pth.tar")
    with pytest.raises(CheckpointError, match=r"model_best.pth.tar: its best loss 'x' is not a number"):
        resume_run(run_dir, "latest", net, optimizer)
    (run_dir / "model_best.pth.tar").unlink()
    with caplog.at_level("WARNING", logger="aml.training.resume"):
        assert resume_run(run_dir, "model_epoch9.pth.tar", net, optimizer) == (1, 0.5)
        assert resume_run(run_dir, "latest", net, optimizer) == (1, 0.5)
    assert caplog.text.count("is not in the run folder: resuming from its latest, model_epoch1.pth.tar") == 1


def test_a_pair_that_joins_two_clusters_is_named_before_mining(synth_root, tmp_path, capsys):
    """A training set whose query/positive pair spans two clusters (a hand-made db) let mining draw
    the pair's positive as its own negative, pulled and pushed in one tuple, without a word."""
    import shutil

    from aml.data.safe_pickle import load_pickle, save_pickle

    data = tmp_path / "data"
    shutil.copytree(synth_root / "train" / "synth-sfm", data / "train" / "crossed")
    dbs = load_pickle(data / "train" / "crossed" / "synth-sfm.pkl")
    (data / "train" / "crossed" / "synth-sfm.pkl").unlink()
    (data / "train" / "crossed" / "synth-sfm-whiten.pkl").unlink()
    train_db = dbs["train"]
    query = train_db["qidxs"][0]
    other = next(i for i, c in enumerate(train_db["cluster"]) if c != train_db["cluster"][query])
    train_db["pidxs"] = [other, *train_db["pidxs"][1:]]
    save_pickle(dbs, data / "train" / "crossed" / "crossed.pkl")
    train_cli.main(["--directory", str(tmp_path / "runs"), "--data-root", str(data)] + TINY[2:]
                   + ["-d", "crossed", "-a", SMALL, "--epochs", "1", "--no-val"])
    assert (f">> crossed (train): 1 of its {len(train_db['qidxs'])} query/positive pairs join two clusters (first: "
            f"images {query} and {other}); a pair's positive may be mined as its own negative") in capsys.readouterr().out
