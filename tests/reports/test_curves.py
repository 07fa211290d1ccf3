"""A run folder's history.json as a resumed run reads it back."""

import json

import pytest

from aml.reports import curves


@pytest.mark.parametrize("content", [b'{"epoch": 1}', b"[1, 2]", b'[{"epoch": "2"}]', b'[{"loss": 1}]',
                                     b'[{"epoch": 1}, {"epoch": null}]', b"\xff\xfe not text",
                                     b'[{"epoch": 1}]', b'[{"epoch": 1, "train_loss": "x", "lr": 0.1}]',
                                     b'[{"epoch": 1, "train_loss": 1, "lr": 0.1, "val_loss": "y"}]',
                                     b'[{"epoch": 1, "train_loss": 1, "lr": 0.1, "test": [1]}]',
                                     b'[{"epoch": 1, "train_loss": 1, "lr": 0.1, "test": {"plain": [1]}}]',
                                     b'[{"epoch": 1, "train_loss": 1, "lr": 0.1, "test": {"p": {"d": {"m": "x"}}}}]'])
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
    (tmp_path / "history.json").write_text(json.dumps([{"epoch": e, "train_loss": 1.0, "lr": 0.1} for e in (1, 2, 3)]))
    history = curves.TrainingHistory(tmp_path)
    history.restart_at(2)
    assert [r["epoch"] for r in history.records] == [1, 2]


def test_a_run_started_over_leaves_no_earlier_curves_and_whitened_tests_are_kept(tmp_path, monkeypatch):
    """The earlier run's curves.png stayed beside the new history until an epoch ended (for good
    if it crashed, or without matplotlib); --test-whiten's mAP was dropped from the history and
    the plot, which showed the plain search's only."""
    (tmp_path / "curves.png").write_bytes(b"an earlier run's")
    history = curves.TrainingHistory(tmp_path)
    history.restart_at(0)
    assert not (tmp_path / "curves.png").exists()
    levels = {"medium": {"map": 0.5, "aps": [0.5]}, "hard": {"map": 0.25, "aps": [0.25]}}
    whitened = {"medium": {"map": 0.75, "aps": [0.75]}, "hard": {"map": 0.5, "aps": [0.5]}}
    record = {"symmetric": {"synth-oxford": {"plain": levels, "whiten": whitened, "skipped": {"database": []}},
                            "synth-paris": {"plain": {"map": 0.4, "aps": [0.4]}}}}
    assert curves.summarize_test(record) == {"symmetric": {
        "synth-oxford": {"medium": 0.5, "hard": 0.25}, "synth-oxford + whiten": {"medium": 0.75, "hard": 0.5},
        "synth-paris": {"map": 0.4}}}
    (tmp_path / "curves.png").write_bytes(b"an earlier run's")
    monkeypatch.setattr(curves, "_matplotlib_figure", lambda: None)
    history.add({"epoch": 1, "train_loss": 0.5, "val_loss": None, "lr": 1e-3, "test": record})
    assert not (tmp_path / "curves.png").exists()  # not drawn: nothing of another run shown


def test_an_undefined_map_is_written_as_null_and_read_back_and_drawn(tmp_path):
    """A level without positives (NaN) was written as a bare NaN, which strict JSON readers
    (jq, JavaScript) refuse."""
    pytest.importorskip("matplotlib")
    history = curves.TrainingHistory(tmp_path)
    history.restart_at(0)
    undefined = {"medium": {"map": 0.5, "aps": [0.5]}, "hard": {"map": float("nan"), "aps": [float("nan")]}}
    for epoch in (1, 2):
        history.add({"epoch": epoch, "train_loss": 0.5, "val_loss": None, "lr": 1e-3,
                     "test": {"symmetric": {"mine": {"plain": undefined}}}})
    text = (tmp_path / "history.json").read_text()
    assert "NaN" not in text
    records = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in history.json"))
    assert records[1]["test"]["symmetric"]["mine"] == {"medium": 0.5, "hard": None}
    resumed = curves.TrainingHistory(tmp_path)
    resumed.restart_at(2)
    resumed.add({"epoch": 3, "train_loss": 0.5, "val_loss": None, "lr": 1e-3})  # drawn again from what was read
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_every_tested_curve_is_drawn_and_a_classic_map_is_no_medium_one():
    """Only the last tested epoch's sets were drawn (a run resumed with another -td lost its
    earlier curves), and a classic set's mAP was labelled M, as a revisited Medium."""
    tested = [{"epoch": 1, "train_loss": 1.0, "lr": 0.1, "test": {"symmetric": {"synth-oxford": {"medium": 0.4, "hard": 0.2}}}},
              {"epoch": 2, "train_loss": 1.0, "lr": 0.1, "test": {"symmetric": {"synth-oxford": {"medium": 0.5, "hard": None}}}},
              {"epoch": 3, "train_loss": 1.0, "lr": 0.1, "test": {"symmetric": {"oxford5k": {"map": 0.6}}}}]
    assert curves.map_curves(tested) == {"synth-oxford M (symm)": [(1, 40.0), (2, 50.0)],
                                         "synth-oxford H (symm)": [(1, 20.0)], "oxford5k (symm)": [(3, 60.0)]}
