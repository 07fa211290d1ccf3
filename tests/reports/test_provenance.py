"""What a result file records of where it was made: the commit of aml's own tree."""


def test_the_recorded_commit_is_amls_own_and_says_dirty(tmp_path, monkeypatch):
    """git ran in aml's installed folder: aml installed (not editable) inside another project's
    checkout recorded that project's commit as aml's, and a tree with changes its clean commit."""
    import subprocess

    from aml.reports import provenance

    monkeypatch.delenv("AML_COMMIT", raising=False)
    project = tmp_path / "project"
    (project / "venv" / "site-packages").mkdir(parents=True)
    git = ["git", "-c", "user.name=a", "-c", "user.email=a@b", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    (project / "file.txt").write_text("one\n")
    subprocess.run([*git, "-C", str(project), "add", "file.txt"], check=True)
    subprocess.run([*git, "-C", str(project), "commit", "-qm", "first"], check=True)
    assert provenance._commit(project / "venv" / "site-packages") == {}
    head = subprocess.run(["git", "-C", str(project), "rev-parse", "--short=7", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert provenance._commit(project) == {"commit": head}
    (project / "file.txt").write_text("two\n")
    assert provenance._commit(project) == {"commit": f"{head}-dirty"}


def test_the_accelerator_recorded_is_the_device_the_measurement_ran_on(monkeypatch):
    """Any machine with CUDA recorded its first GPU: an ONNX export or a `compat --device cpu`
    run was labelled "H100", and `--device cuda:1` named GPU 0 (and opened a context there)."""
    import torch

    from aml.reports.provenance import provenance

    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: asked.append(device) or f"GPU {device.index}")
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91000)
    assert "accelerator" not in provenance([], device="cpu") and not asked
    assert provenance([], device="cuda:1")["accelerator"].startswith("GPU 1 (CUDA ")
    assert provenance([])["accelerator"].startswith("GPU 0 (CUDA ")  # unknown: the machine's first


def test_the_recorded_command_runs_as_typed():
    """A word with spaces or a shell character (gpu.py's row names, a scales list) was joined
    bare: `--networks mobilenet_v2 -> 2048` redirected the command's output in a shell."""
    import shlex

    from aml.reports.provenance import provenance

    words = ["python", "benchmarks/gpu.py", "--networks", "mobilenet_v2 -> 2048,vgg16", "-ms", "[1, 1/2**(1/2)]"]
    command = provenance(words, device="cpu")["command"]
    assert shlex.split(command) == words and provenance(["python", "-m", "aml.demo"])["command"] == "python -m aml.demo"
