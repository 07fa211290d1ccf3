"""The demo's table: text and Markdown, mean ± spread over seeds."""

from aml.demo.tables import format_table, markdown_table, write_results


def test_table_shows_mean_and_spread_over_seeds():
    def result(medium, hard):
        level = {"medium": {"map": medium}, "hard": {"map": hard}}
        return {d: {"plain": level} for d in ("synth-oxford", "synth-paris")}

    rows = [{"network": "teacher", "test": "symmetric", "results": [result(0.30, 0.10), result(0.40, 0.10)]}]
    line = format_table(rows).splitlines()[-1]
    assert line.split()[2:6] == ["35.00", "±", "7.07", "10.00"]
    assert markdown_table(rows).splitlines()[-1] == "| teacher | symmetric | 35.00 ± 7.07 | 10.00 ± 0.00 | 35.00 ± 7.07 | 10.00 ± 0.00 |"


def test_results_markdown_lists_the_notes_under_the_table(tmp_path):
    level = {"medium": {"map": 0.5}, "hard": {"map": 0.25}}
    rows = [{"network": "teacher", "test": "symmetric", "results": [{d: {"plain": level} for d in ("synth-oxford", "synth-paris")}]}]
    text = write_results(rows, tmp_path, [0], ["(1) first: holds", "(2) second: does NOT hold"]).read_text()
    assert text.endswith("| teacher | symmetric | 50.00 | 25.00 | 50.00 | 25.00 |\n\n- (1) first: holds\n- (2) second: does NOT hold\n")


def test_an_undefined_map_is_null_in_results_json(tmp_path):
    """A Hard mAP of NaN (no query with a hard positive) was written as a bare NaN, which strict
    JSON readers refuse (every other results file writes null)."""
    import json

    level = {"medium": {"map": 0.5}, "hard": {"map": float("nan")}}
    rows = [{"network": "teacher", "test": "symmetric", "results": [{d: {"plain": level} for d in ("synth-oxford", "synth-paris")}]}]
    write_results(rows, tmp_path, [0])
    text = (tmp_path / "results.json").read_text()
    json.loads(text, parse_constant=lambda name: (_ for _ in ()).throw(AssertionError(f"{name} in results.json")))
    assert "NaN" not in text


def test_a_chart_not_drawn_again_does_not_stand_beside_new_numbers(tmp_path, monkeypatch):
    """Without matplotlib, a demo run again wrote new results.md and results.json beside the
    earlier run's results.png."""
    import aml.reports.curves as curves

    def rows(medium):
        level = {"medium": {"map": medium}, "hard": {"map": 0.25}}
        return [{"network": "teacher", "test": "symmetric",
                 "results": [{d: {"plain": level} for d in ("synth-oxford", "synth-paris")}]}]

    (tmp_path / "results.png").write_bytes(b"\x89PNG\r\n\x1a\n an earlier demo's chart")
    monkeypatch.setattr(curves, "_matplotlib_figure", lambda: None)  # matplotlib not installed
    assert "90.00" in write_results(rows(0.9), tmp_path, [0]).read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json", "results.md"]
