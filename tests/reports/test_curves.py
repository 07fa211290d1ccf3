"""A run folder's history.json as a resumed run reads it back."""

import json

import pytest

from aml.reports import curves


@pytest.mark.parametrize("content", [b'{"epoch": 1}', b"[1, 2]", b'[{"epoch": "2"}]', b'[{"loss": 1}]',
                                     b'[{"epoch": 1}, {"epoch": null}]', b"\xff\xfe not text"])
def test_a_history_of_other_content_is_started_again_with_a_warning(tmp_path, content, monkeypatch, caplog):
    """A history.json of valid JSON but other types ended --resume in TypeError or KeyError."""
    monkeypatch.setattr(curves, "_matplotlib_figure", lambda: None)
    (tmp_path / "history.json").write_bytes(content)
    with caplog.at_level("WARNING", logger="aml"):
        history = curves.TrainingHistory(tmp_path)
        history.restart_at(1)
        history.add({"epoch": 2, "train_loss": 0.5, "val_loss": None, "lr": 1e-3})
    assert "history.json" in caplog.text and "starting a new history" in caplog.text
    assert [r["epoch"] for r in json.loads((tmp_path / "history.json").read_text())] == [2]


def test_a_history_is_kept_up_to_the_resumed_epoch(tmp_path, monkeypatch):
    monkeypatch.setattr(curves, "_matplotlib_figure", lambda: None)
    (tmp_path / "history.json").write_text(json.dumps([{"epoch": e, "train_loss": 1.0} for e in (1, 2, 3)]))
    history = curves.TrainingHistory(tmp_path)
    history.restart_at(2)
    assert [r["epoch"] for r in history.records] == [1, 2]
