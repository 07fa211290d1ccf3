"""Resuming a run (aml.training.resume): checkpoints of older torch and of other code resume,
what does not fit is said in full, and what a resume takes from elsewhere is said."""

import pytest
import torch

from aml.networks import build_network
from aml.networks.checkpoint import CheckpointError, RunRecord, checkpoint_state, save_checkpoint
from aml.training.optim import build_optimizer, optimizer_name
from aml.training.resume import resume_run

SMALL = "squeezenet1_1"
#: the settings torch added to Adam's and SGD's parameter groups after 1.x, which the
#: original's checkpoints (torch 1.x) and those of an older torch lack
NEWER_SETTINGS = ("foreach", "maximize", "capturable", "differentiable", "fused", "decoupled_weight_decay")


def _run(tmp_path, optimizer="adam"):
    torch.manual_seed(0)
    net = build_network(SMALL, pretrained=False)
    return net, build_optimizer(net, optimizer, 1e-3, 0.9, 1e-6)


def _saved(tmp_path, net, optimizer, edit=lambda state: None, folder="run"):
    run_dir = tmp_path / folder
    run_dir.mkdir(exist_ok=True)
    state = checkpoint_state(net, 2, 0.5, optimizer, RunRecord("validation"))
    edit(state)
    return save_checkpoint(state, run_dir / "model_epoch2.pth.tar")


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_an_older_torchs_optimizer_state_resumes_and_steps(tmp_path, name):
    """Every key of this torch's parameter group was required in the file's: an older torch's
    (the original's 1.x) was refused as 'trained with another --optimizer'."""
    net, optimizer = _run(tmp_path, name)
    net(torch.rand(1, 3, 32, 32)).sum().backward()
    optimizer.step()  # a state to save (Adam's moments, SGD's momentum)

    def older(state):
        for group in state["optimizer"]["param_groups"]:
            for key in NEWER_SETTINGS:
                group.pop(key, None)

    path = _saved(tmp_path, net, optimizer, older)
    fresh_net, fresh = _run(tmp_path, name)
    assert resume_run(path.parent, "latest", fresh_net, fresh, RunRecord("validation")) == (2, 0.5)
    assert torch.equal(fresh_net.features[0].weight, net.features[0].weight)
    fresh_net(torch.rand(1, 3, 32, 32)).sum().backward()
    fresh.step()  # torch fills in the settings the file lacks
    assert torch.isfinite(fresh_net.features[0].weight).all()


def test_another_optimizer_is_refused_by_name(tmp_path):
    net, sgd = _run(tmp_path, "sgd")
    assert (optimizer_name(sgd.param_groups[0]), optimizer_name({"lr": 1, "betas": (0.9, 0.99), "eps": 1e-8, "weight_decay": 0, "amsgrad": False}),
            optimizer_name({})) == ("sgd", "adam", None)
    path = _saved(tmp_path, net, sgd)
    _, adam = _run(tmp_path, "adam")
    with pytest.raises(CheckpointError, match=r"model_epoch2.pth.tar: it was trained with --optimizer sgd, this run "
                                              r"with --optimizer adam; resume with the flags the run was started with"):
        resume_run(path.parent, "latest", net, adam, RunRecord("validation"))

    # optimizers aml does not train with: RMSprop's groups hold momentum, NAdam's and Adamax's betas
    # (loaded into SGD or Adam, a step failed mid-training, KeyError 'dampening', or trained on as Adam)
    for other, ours in ((torch.optim.RMSprop, sgd), (torch.optim.NAdam, adam), (torch.optim.Adamax, adam),
                        (torch.optim.AdamW, adam)):  # AdamW's groups are Adam's, decoupled_weight_decay True
        saved = other(net.parameters(), lr=1e-3)

        def theirs(state):
            state["optimizer"] = saved.state_dict()

        path = _saved(tmp_path, net, ours, theirs, folder=other.__name__)
        with pytest.raises(CheckpointError, match=r"it was trained with an optimizer that is none of aml's \(or a newer "
                                                  rf"torch's\), this run with --optimizer {optimizer_name(ours.param_groups[0])}"):
            resume_run(path.parent, "latest", net, ours, RunRecord("validation"))


def test_weights_saved_through_dataparallel_resume_as_test_py_loads_them(tmp_path):
    """resume_run loaded the file's names as they were: 'module.' names were refused with
    'resume with the flags the run was started with', though test.py loads the file."""
    net, optimizer = _run(tmp_path)

    def wrapped(state):
        state["state_dict"] = {f"module.{key}": value for key, value in state["state_dict"].items()}

    path = _saved(tmp_path, net, optimizer, wrapped)
    fresh_net, fresh = _run(tmp_path)
    torch.nn.init.zeros_(fresh_net.features[0].weight)
    assert resume_run(path.parent, "latest", fresh_net, fresh, RunRecord("validation")) == (2, 0.5)
    assert torch.equal(fresh_net.features[0].weight, net.features[0].weight)


def test_weights_that_do_not_fit_are_named(tmp_path):
    """The message kept only torch's first line, 'Error(s) in loading state_dict for
    ImageRetrievalNet:', which names no weight."""
    net, optimizer = _run(tmp_path)

    def damaged(state):
        del state["state_dict"]["features.0.bias"]
        state["state_dict"]["extra.weight"] = torch.zeros(1)

    path = _saved(tmp_path, net, optimizer, damaged)
    with pytest.raises(CheckpointError, match=r"its weights do not fit this run's network \(Missing key\(s\) in "
                                              r"state_dict: \"features.0.bias\"\. \(and 1 more\)\); resume with"):
        resume_run(path.parent, "latest", net, optimizer, RunRecord("validation"))


def test_a_branch_may_switch_validation(tmp_path):
    """A branch chooses its model_best among its own epochs, so the kind of best loss of the
    other folder's run does not matter: it was refused as in the run's own folder."""
    net, optimizer = _run(tmp_path)
    path = _saved(tmp_path, net, optimizer, folder="validated")
    branch = tmp_path / "branch"
    branch.mkdir()
    assert resume_run(branch, str(path), net, optimizer, RunRecord("training")) == (2, float("inf"))
    with pytest.raises(CheckpointError, match=r"its model_best was chosen by validation loss, this run chooses by "
                                              r"training loss"):
        resume_run(path.parent, "latest", net, optimizer, RunRecord("training"))


def test_what_a_resume_takes_from_elsewhere_or_misses_is_said(tmp_path, monkeypatch, caplog):
    """--resume latest in a folder without checkpoints (a flag of the folder's name changed)
    started from scratch with an INFO line; a bare name found in the working folder branched
    from there with INFO lines alone."""
    net, optimizer = _run(tmp_path)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    with caplog.at_level("WARNING", logger="aml.training.resume"):
        assert resume_run(fresh, "latest", net, optimizer, RunRecord("validation")) is None
    assert f"--resume latest: {fresh} holds no checkpoint (a flag of the folder's name differs from the run's?): " \
           "training starts from scratch" in caplog.text
    elsewhere = _saved(tmp_path, net, optimizer, folder="elsewhere")
    monkeypatch.chdir(elsewhere.parent)
    caplog.clear()
    with caplog.at_level("WARNING", logger="aml.training.resume"):
        assert resume_run(fresh, elsewhere.name, net, optimizer, RunRecord("validation")) == (2, float("inf"))
    assert f"--resume model_epoch2.pth.tar is not in {fresh}: training on from the working folder's {elsewhere}" \
           in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="aml.training.resume"):  # a path says where it is: no warning
        resume_run(tmp_path / "other", str(elsewhere), net, optimizer, RunRecord("validation"))
    assert "is not in" not in caplog.text


def test_a_resume_that_encodes_images_otherwise_is_named(tmp_path, caplog):
    """On CUDA, --no-amp, --decode or --amp-dtype change how mining and the teacher's
    descriptors encode images; none is in the folder's name or was in the checkpoint, so a
    resume that changed one went on without a word."""
    net, optimizer = _run(tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_checkpoint(checkpoint_state(net, 2, 0.5, optimizer, RunRecord("validation", pixels="workers-fp16")),
                    run_dir / "model_epoch2.pth.tar")
    with caplog.at_level("WARNING", logger="aml.training.resume"):
        assert resume_run(run_dir, "latest", net, optimizer, RunRecord("validation", pixels="workers-fp16")) == (2, 0.5)
    assert not caplog.text
    with caplog.at_level("WARNING", logger="aml.training.resume"):
        resume_run(run_dir, "latest", net, optimizer, RunRecord("validation", pixels="pil-fp32"))
    assert "its epochs mined with images encoded as workers-fp16, this run encodes them as pil-fp32 (another " \
           "--decode, --no-amp, --amp-dtype or device)" in caplog.text
