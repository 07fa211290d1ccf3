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
