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


def test_the_demos_command_is_shown_as_a_reader_runs_it():
    recorded = "python -m aml.demo --data-root /tmp/demo-data --student-modes csd,bct --quiet --json /tmp/x.json"
    assert generate.reader_command("later.json", recorded) == \
        "python -m aml.demo --student-modes csd,bct --quiet --json benchmarks/results/later.json"
    assert generate.reader_command("demo.json", "python -m aml.demo --data-root /tmp/d --quiet") == \
        "python -m aml.demo --quiet --json benchmarks/results/demo.json"
    assert generate.reader_command("x.json", "python benchmarks/x.py --data-root /tmp/d") == \
        "python benchmarks/x.py --data-root /tmp/d"
    demo_page = (generate.ROOT / "docs" / "demo.md").read_text().replace(" \\\n    ", " ")
    for name in ("demo.json", "demo-later-losses.json"):
        record = generate._load(name)
        assert record is not None, f"benchmarks/results/{name}: the demo page's tables are generated from it"
        assert generate.reader_command(name, record["provenance"]["command"]) in demo_page, name


def test_every_command_has_its_flag_table_and_a_changed_parser_makes_it_stale(monkeypatch):
    import aml.cli.synthetic

    for name, (typed, module, subcommand) in generate.COMMANDS.items():
        parser = generate.command_parser(module, subcommand)
        text = (generate.GENERATED / name).read_text()
        for action in parser._actions:
            if action.option_strings and action.help != "==SUPPRESS==" and "-h" not in action.option_strings:
                assert f"`{action.option_strings[0]}" in text, f"{name} lacks {action.option_strings[0]}"
        assert any(f'--8<-- "{name}"' in page.read_text() for page in generate.doc_pages()), f"no page shows {name}"
    built = aml.cli.synthetic.build_parser

    def with_a_new_flag():
        parser = built()
        parser.add_argument("--brand-new", help="a flag the table does not list yet")
        return parser

    monkeypatch.setattr(aml.cli.synthetic, "build_parser", with_a_new_flag)
    assert "flags_synthetic.md" in generate.stale()
    assert "| `--brand-new VALUE` | – | a flag the table does not list yet |" in generate.flags_section().markdown[
        "flags_synthetic.md"]


def test_a_flag_row_says_its_default_and_keeps_flags_whole():
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--image-size", "-imsize", type=int, default=1024, help="longer side (default: 1024)")
    parser.add_argument("--whitening", default=None, help="set: a | b, in <data_root>/x_y; see --image-size")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="autocast (default: on CUDA only)")
    parser.add_argument("--out", required=True, metavar="DIR", help="where")
    parser.add_argument("--seed", type=int, default=0, help="seed")  # 0 == False: it showed "–"
    assert generate.flag_rows(parser) == [
        ["`--image-size N` `-imsize`", "`1024`", "longer side"],
        ["`--whitening VALUE`", "–", "set: a \\| b, in &lt;data\\_root&gt;/x\\_y; see `--image-size`"],
        ["`--amp` `--no-amp`", "on CUDA only", "autocast"],
        ["`--out DIR`", "required", "where"],
        ["`--seed N`", "`0`", "seed"]]


def test_each_longer_demo_run_is_a_row_with_its_three_verdicts():
    names = sorted(p.name for p in generate.RESULTS.glob("demo-epochs*.json"))
    rows = [line for line in generate.demo_epochs_section().markdown["demo_epochs.md"].splitlines()
            if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == len(names)
    for row in rows:
        assert row.count("hold") == 3, row
