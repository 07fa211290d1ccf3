"""The docs' tables and plots are those docs/generate.py makes from benchmarks/results/."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "docs"))
import generate  # noqa: E402  (docs/ is not a package)


def test_every_generated_file_is_up_to_date():
    assert generate.stale() == [], "run python docs/generate.py"


def test_every_included_table_and_plot_is_generated():
    sources = json.loads((generate.GENERATED / "sources.json").read_text())
    for page in generate.doc_pages():
        text = page.read_text()
        for name in [part.split('"')[0] for part in text.split('--8<-- "')[1:]]:
            assert name in sources, f"{page.name} includes {name}, which docs/generate.py does not make"
        for name in [part.split(")")[0] for part in text.split("](images/generated/")[1:]]:
            assert f"images/generated/{name}" in sources, f"{page.name} shows {name}, which is not generated"


def test_a_table_names_its_file_machine_and_command():
    record = {"provenance": {"machine": "AMD EPYC, 2 cores", "cpu_capability": "AVX2", "kernels": "default",
                             "torch": "2.14.1", "python": "3.11.7", "date": "2026-12-02", "command": "python x.py"}}
    assert generate.source_line("x.json", record) == (
        "*From `benchmarks/results/x.json`: AMD EPYC, 2 cores, AVX2 kernels, torch 2.14.1, Python 3.11.7, "
        "2026-12-02; `python x.py`.*")
    assert generate.table(["a", "b"], [[1, 2]]) == "| a | b |\n|---|---|\n| 1 | 2 |\n"
    assert generate.mean_std([1.0, 2.0, 3.0]) == "2.00 ± 1.00" and generate.mean_std([4.0]) == "4.00"


def test_a_changed_result_makes_its_outputs_stale(tmp_path, monkeypatch):
    results = tmp_path / "results"
    results.mkdir()
    (results / "metrics.json").write_text(json.dumps({
        "provenance": {"machine": "m", "torch": "t", "python": "p", "date": "d", "command": "c"},
        "settings": {"database": 10, "dim": 2, "queries": 1},
        "results": {"ranking_s": 1.0, "evaluation_s": 2.0, "map_medium": 0.5}}))
    monkeypatch.setattr(generate, "RESULTS", results)
    monkeypatch.setattr(generate, "GENERATED", tmp_path / "generated")
    monkeypatch.setattr(generate, "IMAGES", tmp_path / "images")
    generate.generate(generate.GENERATED, generate.IMAGES, plots=False)
    assert "ranking (one product and a sort) 1.00 s" in (tmp_path / "generated" / "search.md").read_text()
    assert "search.md" not in generate.stale()
    (results / "metrics.json").write_text((results / "metrics.json").read_text().replace("1.0,", "3.0,"))
    assert "search.md" in generate.stale()
