#!/usr/bin/env python
"""Make the docs' tables and plots from the results files, so that no number is typed by hand.

    python docs/generate.py            # write docs/generated/*.md and docs/images/generated/*.png
    python docs/generate.py --check    # exit 1 when a generated file is missing or out of date

Inputs: ``benchmarks/results/*.json`` (written by the benchmarks and by ``python -m aml.demo
--json``), aml's registries (which loss trains in which mode) and the docs' own pages (the
commands that the test suite does not run). Each table ends with the file it came from, the
machine, the versions and the command. The pages include the tables with
``--8<-- "<name>.md"`` (pymdownx.snippets). ``docs/generated/sources.json`` records the sha256
of each output's inputs, so ``--check`` also finds a plot older than its data.
"""

import argparse
import hashlib
import json
import re
import shlex
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
GENERATED = ROOT / "docs" / "generated"
IMAGES = ROOT / "docs" / "images" / "generated"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # benchmarks/ is not a package: gpu_targets judges a GPU record

import gpu_targets  # noqa: E402

# ---- the docs' fenced blocks (also what tests/docs/test_commands.py runs)

MARKER = re.compile(r"^<!--\s*(not run|tested by):\s*(.+?)\s*-->$")
FENCE = re.compile(r"^```(\w*)\s*$")


@dataclass(frozen=True)
class Block:
    """A fenced block of a docs page, with the marker on the line before it, if any."""

    page: Path
    line: int  # of the opening fence, 1-based
    language: str
    text: str
    marker: Optional[Tuple[str, str]]  # ("not run" | "tested by", what)

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def doc_pages() -> List[Path]:
    """Every page of the site, and the README."""
    return sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]


def page_blocks(page: Path) -> List[Block]:
    """The fenced blocks of a page in order."""
    lines = page.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.match(before)
        blocks.append(Block(page, i + 1, fence.group(1), "\n".join(lines[i + 1:end]) + "\n",
                            (marker.group(1), marker.group(2)) if marker else None))
        i = end + 1
    return blocks


# ---- formatting


def _load(name: str) -> Optional[dict]:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else None


DEMO = "python -m aml.demo"


def reader_command(name: str, command: str) -> str:
    """The demo's recorded command as a reader runs it from the repository's root: without
    ``--data-root`` (where the run kept its generated data, not a setting of the results) and
    with ``--json`` writing the results file ``name`` (the record it writes is the
    ``results.json`` of the run). Other commands are shown as recorded."""
    if not command.startswith(DEMO + " "):
        return command
    words = shlex.split(command)
    paths = {i + 1 for i, word in enumerate(words[:-1]) if word in ("--data-root", "--json")}
    kept = [word for i, word in enumerate(words) if i not in paths and i + 1 not in paths]
    return shlex.join(kept + ["--json", f"benchmarks/results/{name}"])


def source_line(name: str, record: dict) -> str:
    """Where a table's numbers come from: file, machine, kernels, versions, date, and the
    command (the demo's as a reader runs it: `reader_command`)."""
    p = record["provenance"]
    kernels = p.get("cpu_capability", p.get("kernels", ""))
    if p.get("kernels") not in (None, "default", "CUDA"):
        kernels += f" ({p['kernels']})"
    versions = f"torch {p['torch']}" + (f", torchvision {p['torchvision']}" if "torchvision" in p else "")
    device = f"{p['accelerator']} on " if p.get("accelerator") else ""
    commit = f", aml {p['commit']}" if p.get("commit") else ""
    return (f"*From `benchmarks/results/{name}`: {device}{p['machine']}" + (f", {kernels} kernels" if kernels and
            kernels != "CUDA" else "") + f", {versions}, Python {p['python']}{commit}, {p['date']}; "
            f"`{reader_command(name, p['command'])}`.*")


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]) + "\n"


def _seconds(value: float) -> str:
    return f"{value * 1e3:.1f} ms" if value < 1 else f"{value:.2f} s"


def mean_std(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


Output = Dict[str, str]  # generated file name -> Markdown text
Plot = Callable[[Path], None]


@dataclass
class Generated:
    """What one section makes: Markdown files, plots (name -> drawing function) and its inputs."""

    markdown: Output
    plots: Dict[str, Plot]
    inputs: List[str]  # results files read


def _bars(groups, series, path: Path, ylabel: str, title: str) -> None:
    from aml.reports.charts import bar_chart

    if not bar_chart(groups, series, path, ylabel=ylabel, title=title):
        raise SystemExit("matplotlib is needed to draw the plots (pip install matplotlib)")


# ---- sections


DEMO_LEVELS = (("synth-oxford", "medium"), ("synth-oxford", "hard"), ("synth-paris", "medium"), ("synth-paris", "hard"))


def _demo_table(record: dict) -> str:
    """A demo run's mAP table (mean ± std over the students' seeds)."""
    rows = [[row["network"], row["test"]] + [mean_std(row["map"][d][level]) for d, level in DEMO_LEVELS]
            for row in record["rows"]]
    seeds = ", ".join(map(str, record["seeds"]))
    spread = (f"mean ± standard deviation over the students' seeds {seeds}" if len(record["seeds"]) > 1
              else f"the students' seed {seeds}")
    return (f"mAP (%), Medium (M) and Hard (H); {spread} (the teacher is one network):\n\n"
            + table(["network", "test", "synth-oxford M", "synth-oxford H", "synth-paris M", "synth-paris H"], rows))


def _findings(record: dict) -> List[str]:
    """A demo record's notes, with the verdicts on the paper's findings drawn again from its
    rows by today's `aml.demo.findings` (a record keeps the numbers; the criterion may be newer)."""
    from aml.demo.findings import findings_lines, paper_findings

    rows = []
    for row in record["rows"]:
        runs = len(row["map"][DEMO_LEVELS[0][0]][DEMO_LEVELS[0][1]])
        results = [{d: {"plain": {level: {"map": row["map"][d][level][i] / 100} for d2, level in DEMO_LEVELS
                                  if d2 == d}} for d in dict(DEMO_LEVELS)} for i in range(runs)]
        rows.append({"network": row["network"], "test": row["test"], "results": results})
    settings = record["settings"]
    kept = [note for note in record.get("notes", []) if not FINDING.match(note)]
    return kept + findings_lines(paper_findings(rows, settings["student_arch"], settings["teacher_arch"]))


FINDING = re.compile(r"^\(\d\)")


def _demo_findings(name: str, record: dict) -> str:
    """A demo run's verdicts on the paper's findings, its time and where it comes from."""
    seconds = record["seconds"]
    return ("".join(f"- {note}\n" for note in _findings(record))
            + f"\nTime: {seconds['total']:.0f} s in all: {seconds['data']:.0f} s to generate the data (or find it), "
            f"{seconds['teacher']:.0f} s for the teacher (trained, or found and tested), "
            f"{seconds['students']:.0f} s for the students and their tests.\n\n" + source_line(name, record) + "\n")


def demo_section() -> Generated:
    """The demo's table (demo.md), its findings (demo_findings.md) and chart; a longer run's."""
    record = _load("demo.json")
    if record is None:
        missing = "*No demo results yet: `python -m aml.demo --json benchmarks/results/demo.json`.*\n"
        return Generated({"demo.md": missing, "demo_findings.md": ""}, {}, [])
    seeds = ", ".join(map(str, record["seeds"]))

    def plot(path: Path) -> None:
        from aml.demo.tables import chart_group

        groups = [chart_group(r["network"], r["test"]) for r in record["rows"]]
        series = {f"{d} {level[0].upper()}": ([statistics.mean(r["map"][d][level]) for r in record["rows"]],
                                              [statistics.stdev(r["map"][d][level]) if len(r["map"][d][level]) > 1
                                               else 0.0 for r in record["rows"]])
                  for d, level in DEMO_LEVELS}
        _bars(groups, series, path, "mAP (%)", f"aml demo (mean ± std over seeds {seeds})")
    return Generated({"demo.md": _demo_table(record), "demo_findings.md": _demo_findings("demo.json", record)},
                     {"demo.png": plot}, ["demo.json"])


VERDICT = re.compile(r"^(\(\d\)[^:]*): (holds[^(]*|does NOT hold) \(")


def demo_epochs_section() -> Generated:
    """The demo's students after more epochs (benchmarks/results/demo-epochs<N>.json), one row per run."""
    names = sorted((p.name for p in RESULTS.glob("demo-epochs*.json")), key=lambda n: (len(n), n))
    if not names:
        return Generated({"demo_epochs.md": "*Not measured yet: `python -m aml.demo --student-epochs 30 "
                                            "--student-modes reg,ts_self --seeds 1 --json "
                                            "benchmarks/results/demo-epochs30.json`.*\n"}, {}, [])
    records = [_load(name) for name in names]

    def medium(record: dict, mode: str, test: str) -> str:
        row = next(r for r in record["rows"] if (r["network"].startswith("teacher") if mode == "teacher"
                                                 else r["network"].endswith(f"({mode})")) and r["test"] == test)
        return " / ".join(f"{statistics.mean(row['map'][d]['medium']):.1f}" for d, _ in DEMO_LEVELS[::2])

    def verdicts(record: dict) -> str:
        found = [VERDICT.match(note) for note in _findings(record) if VERDICT.match(note)]
        return ", ".join(f"{m.group(1).split(' ')[0]}{' …' if i == 2 else ''} "
                         f"{m.group(2).strip().replace('NOT', 'not')}" for i, m in enumerate(found))

    columns = [("reg", "symmetric"), ("ts_self", "symmetric"), ("reg", "asymmetric"), ("ts_self", "asymmetric")]
    rows = [[str(record["settings"]["student_epochs"])] + [medium(record, mode, test) for mode, test in columns]
            + [verdicts(record), f"{record['seconds']['students']:.0f}"] for record in records]
    teachers = {medium(record, "teacher", "symmetric") for record in records}
    claims = [VERDICT.match(note).group(1) for note in _findings(records[0]) if VERDICT.match(note)]
    text = ("mAP (%) Medium, synth-oxford / synth-paris, of the demo's `reg` and `ts_self` students after more "
            "epochs, one seed each, against " + (f"one teacher ({teachers.pop()} symmetric)" if len(teachers) == 1
                                                 else "**different teachers**")
            + "; the paper's findings (" + "; ".join(claims) + "); and the seconds the two students took to train "
            "and test:\n\n"
            + table(["student epochs", "reg, symmetric", "ts_self, symmetric", "reg, asymmetric",
                     "ts_self, asymmetric", "findings", "students s"], rows)
            + "\n" + "\n\n".join(source_line(name, record) for name, record in zip(names, records)) + "\n")
    return Generated({"demo_epochs.md": text}, {}, names)


def later_losses_section() -> Generated:
    """AML's students (demo.json) next to the later papers' losses (demo-later-losses.json), one teacher."""
    aml_run, later = _load("demo.json"), _load("demo-later-losses.json")
    if aml_run is None or later is None:
        return Generated({"later_losses.md": "*Not measured yet: `python -m aml.demo --student-modes csd,bct,hvs,lce "
                                             "--json benchmarks/results/demo-later-losses.json`.*\n"}, {}, [])
    teacher = [r for r in aml_run["rows"] if r["network"].startswith("teacher")]
    same_teacher = teacher == [r for r in later["rows"] if r["network"].startswith("teacher")]
    students = [r for r in aml_run["rows"] if r["network"].startswith("student") and "(" in r["network"]]
    new = [r for r in later["rows"] if r["network"].startswith("student") and "(" in r["network"]]
    rows = [[row["network"], row["test"]] + [mean_std(row["map"][d][level]) for d, level in DEMO_LEVELS]
            for row in teacher + students + new]
    seeds = ", ".join(map(str, later["seeds"]))
    text = (f"mAP (%), mean ± standard deviation over the students' seeds {seeds}; every student learns from the "
            "same teacher" + ("" if same_teacher else " (**the two files report different teachers**)") + ":\n\n"
            + table(["network", "test", "synth-oxford M", "synth-oxford H", "synth-paris M", "synth-paris H"], rows)
            + "\n" + source_line("demo.json", aml_run) + "\n\n" + source_line("demo-later-losses.json", later) + "\n")
    return Generated({"later_losses.md": text}, {}, ["demo.json", "demo-later-losses.json"])


def extract_section() -> Generated:
    names = sorted(p.name for p in RESULTS.glob("extract*.json"))
    if not names:
        return Generated({"extract.md": "*Not measured yet: `python benchmarks/extract.py`.*\n"}, {}, [])
    records = [_load(name) for name in names]
    rows = sorted((dict(r, settings=record["settings"]) for record in records for r in record["results"]),
                  key=lambda r: (r["network"], r["image_size"], r["scales"] != "single"))
    text = ("Images per second, best of the repeats, on generated JPEGs of 1024x768 and 768x1024 (the number "
            "in the JPEGs column), with 1 compute thread and 1 loader worker, random weights with calibrated "
            "BatchNorm:\n\n"
            + table(["network", "px", "scales", "JPEGs", "the original's loop", "aml", "aml / original",
                     "aml `--decode device`"],
                    [[r["network"], r["image_size"], r["scales"], f"{r['settings']['images']}", f"{r['original']:.2f}",
                      f"{r['aml']:.2f}", f"{r['aml'] / r['original']:.2f}x", f"{r['aml_decode_device']:.2f}"]
                     for r in rows])
            + "\n" + "\n\n".join(source_line(name, record) for name, record in zip(names, records)) + "\n")

    def plot(path: Path) -> None:
        groups = [f"{r['network']}\n{r['image_size']} px, {r['scales']}" for r in rows]
        zero = [0.0] * len(rows)
        series = {"the original's loop": ([1.0] * len(rows), zero),
                  "aml": ([r["aml"] / r["original"] for r in rows], zero),
                  "aml --decode device": ([r["aml_decode_device"] / r["original"] for r in rows], zero)}
        _bars(groups, series, path, "images per second / the original's", "CPU extraction, relative to the original's loop")
    return Generated({"extract.md": text}, {"extract.png": plot}, names)


def batch_sweep_section() -> Generated:
    """The CPU sweep of fixed batch sizes against the pixel budget (`CPU_PIXEL_BUDGET`)."""
    record = _load("batch_sweep.json")
    command = "python benchmarks/extract.py --archs mobilenet_v2 --scales single --batch-sizes 1,2,3,4"
    if record is None:
        return Generated({"batch_sweep.md": f"*Not measured yet: `{command}`.*\n"}, {}, [])
    sizes = list(record["results"][0]["batch_sizes"])
    rows = [[r["network"], r["image_size"], f"{r['aml']:.2f}"] + [f"{r['batch_sizes'][b]:.2f}" for b in sizes]
            for r in record["results"]]
    text = ("Images per second, best of the repeats, 1 compute thread and 1 loader worker: aml with its pixel "
            "budget, and with each fixed batch size:\n\n"
            + table(["network", "px", "pixel budget"] + [f"batch {b}" for b in sizes], rows)
            + "\n" + source_line("batch_sweep.json", record) + "\n")
    return Generated({"batch_sweep.md": text}, {}, ["batch_sweep.json"])


REAL_WEIGHTS = {  # key -> (measurement, format)
    "fold": "BatchNorm folded: max abs difference / min cosine",
    "batched_max_abs": "images of one shape batched: max abs difference",
    "float16": "float16 autocast: min / median cosine",
    "bfloat16": "bfloat16 autocast: min / median cosine",
    "export": "exported student, TorchScript / ONNX (onnxruntime): max abs difference",
}


def real_weights_section() -> Generated:
    record = _load("real_weights.json")
    if record is None:
        return Generated({"real_weights.md": "*Not measured yet: `python benchmarks/real_weights.py`.*\n"}, {}, [])
    results = record["results"]["results"]
    sizes = list(results)

    def cells(r: dict) -> Dict[str, str]:
        return {"fold": f"{r['fold_max_abs']:.1e} / {r['fold_min_cosine']:.7f}",
                "batched_max_abs": f"{r['batched_max_abs']:.1e}",
                "float16": f"{r['float16_min_cosine']:.5f} / {r['float16_median_cosine']:.6f}",
                "bfloat16": f"{r['bfloat16_min_cosine']:.4f} / {r['bfloat16_median_cosine']:.4f}",
                "export": f"{r['torchscript_max_abs']:.1e} / {r['onnx_max_abs']:.1e}"}
    by_size = {size: cells(results[size]) for size in sizes}
    text = (f"{record['results']['network']}, on the {record['results']['photos']} photos of scikit-image; each path "
            "against the plain float32 extraction one image at a time:\n\n"
            + table(["measurement"] + [f"{size} px" for size in sizes],
                    [[label] + [by_size[size][key] for size in sizes] for key, label in REAL_WEIGHTS.items()])
            + "\n" + source_line("real_weights.json", record) + "\n")
    return Generated({"real_weights.md": text}, {}, ["real_weights.json"])


def decoding_section() -> Generated:
    record = _load("decoding.json")
    if record is None:
        return Generated({"decoding.md": "*Not measured yet: `python benchmarks/decoding.py`.*\n"}, {}, [])
    text = ("Grey levels (0-255) between aml's device decoding and PIL's decoding with LANCZOS resizing, per kind "
            "of file (1024x768 originals):\n\n"
            + table(["device", "file", "size", "mean abs difference", "largest"],
                    [[r["device"], r["file"], r["image_size"], f"{r['mean_abs']:.2f}", f"{r['max_abs']:.0f}"]
                     if "error" not in r else [r["device"], r["file"], r["image_size"], _cell(f"failed: {r['error']}"), ""]
                     for r in record["results"]])
            + "\n" + source_line("decoding.json", record) + "\n")
    return Generated({"decoding.md": text}, {}, ["decoding.json"])


def records_section(pattern: str, markdown: str, render: Callable[[str, dict], str], command: str) -> Generated:
    """``markdown`` made of ``render(name, record)`` for every results file matching ``pattern``
    (this machine's and those of GPU machines, which gpu_check.sh writes), in name order."""
    names = sorted(p.name for p in RESULTS.glob(pattern))
    text = "\n".join(render(name, _load(name)) for name in names) or f"*Not measured yet: `{command}`.*\n"
    return Generated({markdown: text}, {}, names)


def _image_loader_table(name: str, record: dict) -> str:
    settings = record["settings"]

    def cell(value: dict) -> str:
        return f"{value['median']:,.0f} ({value['min']:,.0f} to {value['max']:,.0f})"

    used = settings.get("workers_as", {})  # the kind extraction uses, per decoding

    def kind_cell(decoding: str, kind: str) -> str:
        return f"**{kind}** (extraction's)" if used.get(decoding) == kind else kind

    rows = [[decoding, kind_cell(decoding, kind), cell(cost["thread_us"]), cell(cost["process_us"]), cell(cost["rate"])]
            for decoding, by_kind in record["results"].items() for kind, cost in by_kind.items()]
    return (f"Receiving {settings['images']} generated 1024x768 JPEGs at {settings['image_size']} px from "
            f"{settings['workers']} loader worker(s), per image: the main thread's and the main process's CPU time, "
            f"and the loader's rate; median (range) of {settings['repeats']} runs:\n\n"
            + table(["decoding", "workers as", "main thread, us", "main process, us", "images/s"], rows)
            + "\n" + source_line(name, record) + "\n")


def _call_cost_table(name: str, record: dict) -> str:
    results = record["results"]
    parts = list(dict.fromkeys(part for row in results.values() for part in row))

    def cell(value) -> str:  # seconds; an error's text; absent: the run ended before it
        return "–" if value is None else f"{value * 1e3:.0f}" if isinstance(value, float) else _cell(f"failed: {value}")

    return (f"Milliseconds, the smallest of {record['settings']['repeats']} (networks on "
            f"{record['settings']['device']}):\n\n"
            + table(["network"] + parts, [[arch] + [cell(row.get(p)) for p in parts] for arch, row in results.items()])
            + "\n" + source_line(name, record) + "\n")


def image_loader_section() -> Generated:
    return records_section("image_loader*.json", "image_loader.md", _image_loader_table,
                           "python benchmarks/image_loader.py")


def _neighbours_table(name: str, record: dict) -> str:
    s = record["settings"]
    return (f"Each of {s['images']:,} random {s['dim']}-d descriptors' {s['k']} nearest others (DBA's search), "
            f"on {s['device']}, seconds (the smallest of {s['repeats']}):\n\n"
            + table(["way", "seconds"], [[way, f"{seconds:.2f}"] for way, seconds in record["results"].items()])
            + "\n" + source_line(name, record) + "\n")


def neighbours_section() -> Generated:
    return records_section("neighbours*.json", "neighbours.md", _neighbours_table, "python benchmarks/neighbours.py")


def call_cost_section() -> Generated:
    return records_section("call_cost*.json", "call_cost.md", _call_cost_table, "python benchmarks/call_cost.py")


def training_section() -> Generated:
    names = sorted(p.name for p in RESULTS.glob("train_epoch*.json"))
    parts = []
    if names:
        rows, sources = [], []
        for name in names:
            record = _load(name)
            s, r = record["settings"], record["results"]
            rows.append([s["arch"], s["image_size"], f"{s['mode']} / {s['loss']}", "yes" if s["batch_forward"] else "no",
                         f"{r['mean']:.2f}", f"{r['min']:.2f}", len(r["seconds_per_epoch"])])
            sources.append(source_line(name, record))
        parts.append("Seconds per epoch of 64 `ts` tuples (a query and 6 teacher descriptors), batches of 8, "
                     "after a first epoch that warms up:\n\n"
                     + table(["network", "px", "mode / loss", "`--batch-forward`", "mean s", "best s", "epochs"], rows)
                     + "\n" + "\n\n".join(sources) + "\n")
    record = _load("optimizer.json")
    if record is not None:
        names.append("optimizer.json")
        parts.append("One optimizer step over a student's parameter groups: the original's loop over tensors "
                     "against the fused step aml uses, and how far apart the weights are after "
                     f"{record['settings']['steps']} steps from the same gradients:\n\n"
                     + table(["network", "optimizer", "loop ms", "fused ms", "max abs difference"],
                             [[r["network"], r["optimizer"], f"{r['loop_ms']:.1f}", f"{r['fused_ms']:.1f}",
                               f"{r['max_abs_difference']:.1e}"] for r in record["results"]])
                     + "\n" + source_line("optimizer.json", record) + "\n")
    text = "\n".join(parts) or "*Not measured yet: `python benchmarks/train_epoch.py`, `python benchmarks/optimizer.py`.*\n"
    return Generated({"training.md": text}, {}, names)


def search_section() -> Generated:
    record = _load("search.json")
    parts, plots, inputs = [], {}, []
    if record is not None:
        inputs.append("search.json")
        s, r = record["settings"], record["results"]
        methods = r["methods"]
        labels = {"blocked": "blocked, aml", "numpy": "numpy argsort of the full score matrix (the original)",
                  "faiss": "faiss `IndexFlatIP`"}
        rows = [[labels.get(m["method"], m["method"]), m["device"],
                 "–" if m["method"] == "blocked" else f"{m['load_s']:.1f}", f"{m['search_s']:.1f}",
                 f"{m['peak_rss_gb']:.2f}", "top-100 only" if m["map_medium"] is None else f"{100 * m['map_medium']:.2f}"]
                for m in methods]
        parts.append(f"{s['distractors']:,} x {s['dim']} float16 distractors in a store (shards of "
                     f"{s['shard_size']:,}), {s['database']:,} database images, {s['queries']} queries; each method in "
                     "its own process, with that process's peak resident memory. Writing the store took "
                     f"{r['store_s']:.0f} s.\n\n"
                     + table(["method", "device", "load s", "search s", "peak RSS GB", "mAP Medium"], rows)
                     + "\n" + source_line("search.json", record) + "\n")

        def plot(path: Path, s: dict = s) -> None:
            zero = [0.0] * len(methods)
            _bars([labels.get(m["method"], m["method"]).split(" (")[0].replace("`", "") for m in methods],
                  {"load s": ([m["load_s"] for m in methods], zero), "search s": ([m["search_s"] for m in methods], zero),
                   "peak RSS GB": ([m["peak_rss_gb"] for m in methods], zero)},
                  path, "seconds, GB", f"search of {s['queries']} queries among {s['distractors']:,} distractors")
        plots["search.png"] = plot
    metrics = _load("metrics.json")
    if metrics is not None:
        inputs.append("metrics.json")
        s, r = metrics["settings"], metrics["results"]  # (the plot above has its own copy of the search's)
        parts.append(f"Ranking and scoring at scale: {s['database']:,} random {s['dim']}-d descriptors and "
                     f"{s['queries']} queries: ranking (one product and a sort) {r['ranking_s']:.2f} s, mAP E/M/H and "
                     f"mP@k {r['evaluation_s']:.2f} s.\n\n"
                     + (f"Sorting {s['queries']} queries' scores (best of 3):\n\n"
                        + table(["database", "aml (introsort + ties in index order)", "torch stable argsort",
                                 "the original (numpy column quicksort, unstable)"],
                                [[f"{row['database']:,}", _seconds(row["aml_s"]), _seconds(row["torch_stable_s"]),
                                  _seconds(row["original_s"])] for row in r.get("sorting", [])]) + "\n"
                        if r.get("sorting") else "")
                     + source_line("metrics.json", metrics) + "\n")
    text = "\n".join(parts) or "*Not measured yet: `python benchmarks/search.py`, `python benchmarks/metrics.py`.*\n"
    return Generated({"search.md": text}, plots, inputs)


def int8_section() -> Generated:
    record = _load("int8.json")
    if record is None:
        return Generated({"int8.md": "*Not measured yet: `python benchmarks/int8.py`.*\n"}, {}, [])
    s, r = record["settings"], record["results"]
    export, variants = r["export"], r["variants"]
    rows = []
    for name, maps, cosine, times in (
            [(name, export["maps"][name], export["cosine"][name], export["seconds_per_image"][name])
             for name in ("float32", "int8")]
            + [(name, variants["maps"][name], variants["cosine"][name], variants["seconds_per_image"][name])
               for name in variants["maps"] if name != "float32"]):
        label = "int8 QDQ, trunk only (`--int8`)" if name == "int8" else name
        rows.append([label, f"{100 * maps['medium']:.2f}", f"{100 * maps['hard']:.2f}",
                     f"{cosine['min']:.4f} / {cosine['mean']:.4f}", _seconds(times["362"]), _seconds(times["1024"])])
    machine = record["provenance"]["machine"]
    text = (f"Asymmetric mAP on {export['dataset']} ({export['queries']} queries, {export['database']:,} database "
            f"images, {export['image_size']} px; database by {s['teacher']}), the queries' cosine to float32, and the "
            f"time per query image on an x86 CPU ({machine}; onnxruntime, one thread, median of {s['repeats']}): a "
            f"phone's ARM CPU runs other kernels, so time it there. {s['calibration_images']} calibration "
            f"images. Files: float32 {r['file_bytes']['float32'] / 1e6:.1f} MB, int8 "
            f"{r['file_bytes']['int8'] / 1e6:.1f} MB.\n\n"
            + table(["queries by", "mAP Medium", "mAP Hard", "cosine min / mean", "362 px, x86 CPU",
                     "1024 px, x86 CPU"], rows)
            + "\n" + source_line("int8.json", record) + " onnxruntime, one thread.\n")
    return Generated({"int8.md": text}, {}, ["int8.json"])


def _rate_cell(entry: dict) -> str:
    """A GPU extraction cell: images/s (speed-up, first call, smallest cosine), or the error."""
    if "error" in entry:
        return f"error: {entry['error'].split(':')[0]}"
    cold = f", first call {entry['cold_rate']:.1f}" if "cold_rate" in entry else ""
    one = f", one image {entry['one_image_s'] * 1e3:.0f} ms" if "one_image_s" in entry else ""
    return f"{entry['rate']:.1f} ({entry['speedup']:.2f}x{cold}{one}, cos {entry['cos_min']:.5f})"


def _ceiling_cell(row: dict, key: str) -> str:
    """A ceiling's images/s, or the error that ended its measurement (``<key>_error``)."""
    if key in row:
        return f"{row[key]:,.0f}"
    return _cell(f"error: {row[key + '_error'].split(':')[0]}") if key + "_error" in row else ""


# the rates without the network (and the network's alone) a GPU row records: key -> column; the
# first two always shown, the device decoder's where a record has them
GPU_CEILINGS = {"network_alone": "network alone", "decode_alone": "decoding alone",
                "device_decode_alone": "device decoding alone",
                "device_decode_resized_alone": "device decoding, resized to 3/4",
                "device_decode_mixed_alone": "device decoding, sources of many sizes"}


def _gpu_extraction(record: dict) -> str:
    r, s = record["results"], record["settings"]
    rows_in = [row for row in r.get("extraction", []) if "original" in row]
    variants = list(dict.fromkeys(v for row in rows_in for v in row if isinstance(row[v], dict)))
    ceilings = [key for k, key in enumerate(GPU_CEILINGS)
                if k < 2 or any(key in row or f"{key}_error" in row for row in rows_in)]
    rows = [[row["network"], f"{row['original']:.1f}"] + [_rate_cell(row[v]) if v in row else "" for v in variants]
            + [_ceiling_cell(row, key) for key in ceilings]
            for row in rows_in]
    failed = [f"{row['network']}: {row['error']}" for row in r.get("extraction", []) if "error" in row]
    return (f"{s.get('images', '')} JPEGs at {s.get('image_size', '')} px, {s.get('workers', '')} loader workers, "
            f"autocast {s.get('amp_dtype', 'float16')}; images per second (speed-up over the original's loop"
            + (", the first call's rate, which meets every shape for the first time" if any(
                "cold_rate" in row.get(v, {}) for row in rows_in for v in variants) else "")
            + (", the time of a call for one image: what any call costs" if any(
                "one_image_s" in row.get(v, {}) for row in rows_in for v in variants) else "")
            + ", smallest cosine to the original's descriptors):\n\n"
            + table(["network", "the original's loop"] + variants + [GPU_CEILINGS[key] for key in ceilings], rows)
            + "".join(f"\nNot measured: {line}\n" for line in failed))


def _gpu_cold_start(found: dict) -> str:
    parts = []
    for kind in ("inference", "training"):
        probes = list(dict.fromkeys(p for arch in found.get(kind, {}).values() for p in arch))
        rows = [[arch] + [f"{cells[p]['first_s']:.2f} / {cells[p]['steady_s']:.3f}" if "first_s" in cells.get(p, {})
                          else "error" for p in probes] for arch, cells in found.get(kind, {}).items()]
        if rows:
            parts.append(f"Seconds of the first and of the second {'training step' if kind == 'training' else 'forward'}"
                         " at an input shape never met before:\n\n" + table([kind] + probes, rows))
    return "\n".join(parts)


def _gpu_training(found: dict) -> str:
    rows = []
    for run in ("teacher", "student"):
        row = found.get(run)
        if not row:
            continue
        if "error" in row:
            rows.append([run, "error: " + row["error"][:60], "", ""])
            continue
        epochs = row["epochs_s"]
        rows.append([run, f"{epochs[0]:.1f}", f"{epochs[1]:.1f}" if len(epochs) > 1 else "",
                     f"{row['first_over_second']:.2f}" if "first_over_second" in row else ""])
    return ("The getting-started teacher (EfficientNet-Lite0, `std`) and student (MobileNetV2, `reg`), two epochs "
            "each, seconds per epoch (mining and training):\n\n" + table(["run", "epoch 1", "epoch 2", "ratio"], rows))


def gpu_section() -> Generated:
    names = sorted(p.name for p in RESULTS.glob("gpu*.json"))
    parts = []
    for name in names:
        record = _load(name)
        r = record["results"]
        part = f"**{r['device']}**, " + _gpu_extraction(record)
        if isinstance(r.get("cold_start"), dict) and "inference" in r["cold_start"]:
            part += "\n" + _gpu_cold_start(r["cold_start"])
        if isinstance(r.get("training"), dict) and "error" not in r["training"]:
            part += "\n" + _gpu_training(r["training"])
        if isinstance(r.get("syncs"), dict) and "error" not in r["syncs"]:
            y = r["syncs"]
            part += (f"\nHost synchronisations: {y['extraction_syncs']} in a warm extraction of "
                     f"{y['extraction_images']} images ({y['extraction_batches']} batches), {y['training_batch_syncs']}"
                     " in a training batch.\n")
        if isinstance(r.get("real_weights"), dict) and "error" not in r["real_weights"]:
            w = r["real_weights"]
            cells = ", ".join(f"{v} {w[v]['cos_min']:.5f}" for v in w if isinstance(w[v], dict) and "cos_min" in w[v])
            part += (f"\nReal weights (torchvision's ImageNet MobileNetV2 -> 2048) on {w['photos']} real photos, "
                     f"smallest cosine to the original's descriptors: {cells}.\n")
        if isinstance(r.get("ts_epoch"), dict) and "fast_s" in r["ts_epoch"]:
            epoch = r["ts_epoch"]
            part += (f"\nA `ts` epoch of {epoch['tuples']} tuples (MobileNetV2 → 512, batches of 5): "
                     f"{epoch['original_s']:.1f} s one tuple at a time in fp32, {epoch['fast_s']:.1f} s with "
                     "`--batch-forward --amp`.\n")
        if record.get("note"):
            part += f"\n{record['note']}\n"
        part += ("\nThe targets of the CUDA path (`python benchmarks/gpu_targets.py " + f"benchmarks/results/{name}`):\n\n"
                 + gpu_targets.table(gpu_targets.checks(r)))
        parts.append(part + "\n" + source_line(name, record) + "\n")
    text = "\n".join(parts) or "*Not measured yet: `python benchmarks/gpu.py` on a CUDA machine.*\n"
    return Generated({"gpu.md": text}, {}, names)


def reranking_section() -> Generated:
    record = _load("reranking.json")
    if record is None:
        return Generated({"reranking.md": "*Not measured yet: `python benchmarks/reranking.py --data-root DATA "
                                          "--teacher TEACHER --student STUDENT`.*\n"}, {}, [])
    s = record["settings"]
    datasets = list(record["results"]["rows"][0]["map"])
    rows = [[row["network"], row["test"], row["reranking"]]
            + [f"{row['map'][d][level]:.2f}" for d in datasets for level in ("medium", "hard")]
            for row in record["results"]["rows"]]
    superglobal = (f"; SuperGlobal (`sg`, last) re-ranks the first M = {s['superglobal']} results with K = "
                   f"{s['sg_k']} and β = {s['sg_beta']:g}" if "superglobal" in s else "")
    text = (f"mAP (%), Medium (M) and Hard (H), at {s['image_size']} px without whitening; αQE with "
            f"{s['qe']} neighbours, DBA with {s['dba']}, alpha {s['alpha']:g} for both{superglobal}:\n\n"
            + table(["network", "test", "re-ranking"] + [f"{d} {level[0].upper()}" for d in datasets
                                                          for level in ("medium", "hard")], rows)
            + "\n" + source_line("reranking.json", record) + "\n")
    return Generated({"reranking.md": text}, {}, ["reranking.json"])


def compat_section() -> Generated:
    """The compatibility matrix of the demo's teacher and students (compatibility.md) and its heatmaps."""
    record = _load("compat.json")
    if record is None:
        return Generated({"compat.md": "*Not measured yet: `python -m aml.compat -n TEACHER STUDENT ... --json "
                                       "benchmarks/results/compat.json` ([The compatibility matrix](compatibility.md)).*\n"},
                         {}, [])
    from aml.compat import CompatibilityMatrix, draw_matrix
    from aml.compat.report import CORNER, cell_texts, legend

    matrix = CompatibilityMatrix.from_record(record)
    parts = []
    for dataset in matrix.datasets:
        for search in matrix.searches(dataset):
            levels = matrix.levels(dataset)
            cells = [cell_texts(matrix, dataset, search, level) for level in levels]
            rows = [[f"**{label}**"] + [_cell(" / ".join(level[i][j] for level in cells)) for j in range(len(matrix.labels))]
                    for i, label in enumerate(matrix.labels)]
            named = " / ".join(level.capitalize() for level in levels)
            parts.append(f"{dataset}{'' if search == 'plain' else ' + ' + search}, mAP (%) {named}:\n\n"
                         + table([_cell(CORNER)] + matrix.labels, rows))
    marks = [matrix.marks(*key) for key in matrix.maps]
    better, bct = (sum(int(found[k].sum()) for found in marks) for k in (0, 1))
    text = ("\n".join(parts) + f"\n{_cell(legend(matrix))}. Marked: {better} cells beat the teacher, {bct} meet "
            f"BCT's criterion (of {len(marks) * len(matrix.labels) ** 2}). {record['seconds']:.0f} s in all.\n\n"
            + source_line("compat.json", record) + "\n")

    def plot(path: Path) -> None:
        if not draw_matrix(matrix, path):
            raise SystemExit("matplotlib is needed to draw the plots (pip install matplotlib)")
    return Generated({"compat.md": text}, {"compat.png": plot}, ["compat.json"])


def vit_readout_section() -> Generated:
    record = _load("vit_readout.json")
    if record is None:
        return Generated({"vit_readout.md": "*Not measured yet: `python benchmarks/vit_readout.py --data-root DATA`.*\n"},
                         {}, [])
    s = record["settings"]
    datasets = list(record["results"]["rows"][0]["map"])
    rows = [[f"`+{row['readout']}`", row["pooling"], row["weights"]]
            + [mean_std(row["map"][d][level]) for d in datasets for level in ("medium", "hard")]
            for row in record["results"]["rows"]]
    text = (f"mAP (%), Medium (M) and Hard (H), of `{s['arch']}` at {s['image_size']} px, symmetric, no "
            "whitening (mean ± std over the seeds of the random networks):\n\n"
            + table(["readout", "pooling", "weights"] + [f"{d} {level[0].upper()}" for d in datasets
                                                         for level in ("medium", "hard")], rows)
            + "\n" + source_line("vit_readout.json", record) + "\n")
    return Generated({"vit_readout.md": text}, {}, ["vit_readout.json"])


def learning_section() -> Generated:
    record = _load("learning_margins.json")
    if record is None:
        return Generated({"learning_margins.md": "*Not measured yet: `python benchmarks/learning_margins.py --jobs 2`.*\n"},
                         {}, [])
    rows = [[run["kernels"], run["seed"], run["status"], "<br>".join(run["measurements"])] for run in record["results"]]
    text = (table(["kernels", "seed", "status", "measured"], rows) + "\n" + source_line("learning_margins.json", record)
            + "\n")
    return Generated({"learning_margins.md": text}, {}, ["learning_margins.json"])


def registry_section() -> Generated:
    from aml.losses import LOSSES
    from aml.training.modes import MODES

    rows = [[f"`{loss}`"] + ["✓" if spec.accepts(mode) else "" for mode in MODES.values()] for loss, spec in LOSSES.items()]
    text = ("✓: the loss trains in the mode (`LOSSES` in `aml/losses/registry.py`, `MODES` in "
            "`aml/training/modes.py`); any other pair is refused when the flags are parsed, with the reason.\n\n"
            + table(["loss"] + [f"`{m}`" for m in MODES], rows))
    return Generated({"losses_and_modes.md": text}, {}, [])


def imagenet_section() -> Generated:
    """The ImageNet weights of every architecture, from `IMAGENET_WEIGHTS`."""
    from aml.networks.imagenet import IMAGENET_WEIGHTS

    rows = []
    for arch, weights in IMAGENET_WEIGHTS.items():
        original = weights.original.rpartition(": ")[2]
        files = [f"`{f.filename}`" + (" (the original's name)" if f.filename == original and i else "")
                 + (f" in the pip package `{f.package.requirement.split('==')[0]}`" if f.package else "")
                 for i, f in enumerate(weights.files)]
        rows.append([f"`{arch}`", _cell(weights.tag), ", ".join(files)])
    text = ("From `IMAGENET_WEIGHTS` in `aml/networks/imagenet.py`. Any one of a row's files will do; the first is "
            "the one downloaded. A pip package that carries a file is an offline copy (below).\n\n"
            + table(["architecture", "weights", "files"], rows))
    return Generated({"imagenet.md": text}, {}, [])


# ---- every command's flags, from its argument parser

#: generated file -> (the command as typed, the module whose ``build_parser()`` makes its parser, its subcommand)
COMMANDS: Dict[str, Tuple[str, str, Optional[str]]] = {
    "flags_main.md": ("python main.py", "aml.cli.train", None),
    "flags_test.md": ("python test.py", "aml.cli.test", None),
    "flags_extract_features.md": ("python extract_features.py", "aml.cli.extract_features", None),
    "flags_search_index.md": ("python -m aml.search index", "aml.cli.search", "index"),
    "flags_search_query.md": ("python -m aml.search query", "aml.cli.search", "query"),
    "flags_export.md": ("python -m aml.export", "aml.cli.export", None),
    "flags_compat.md": ("python -m aml.compat", "aml.cli.compat", None),
    "flags_make_testset.md": ("python -m aml.cli.make_testset", "aml.cli.make_testset", None),
    "flags_make_trainset.md": ("python -m aml.cli.make_trainset", "aml.cli.make_trainset", None),
    "flags_synthetic.md": ("python -m aml.cli.synthetic", "aml.cli.synthetic", None),
    "flags_download.md": ("python -m aml.cli.download", "aml.cli.download", None),
    "flags_demo.md": ("python -m aml.demo", "aml.demo.pipeline", None),
}
DEFAULT_IN_HELP = re.compile(r"(\s*\(|;\s*)default:? ([^()]*(?:\([^()]*\)[^()]*)*)\)\s*$")


def command_parser(module: str, subcommand: Optional[str]) -> argparse.ArgumentParser:
    """The parser of a command: its module's ``build_parser()``, or the subcommand's parser in it."""
    import importlib

    parser = importlib.import_module(module).build_parser()
    if subcommand is None:
        return parser
    chooser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return chooser.choices[subcommand]


FLAG_IN_TEXT = re.compile(r"((?:python )?-m aml[\w.]*|(?<![\w/.'-])--?[a-z][a-z0-9]*(?:-[a-z0-9]+)*)")


def _cell(text: str) -> str:
    """Plain text made safe for a Markdown table cell (no HTML, emphasis or column break), with
    the flags it names as code."""
    def plain(part: str) -> str:
        part = part.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        return re.sub(r"([|*_`\\[\]])", r"\\\1", part)

    parts = FLAG_IN_TEXT.split(text)  # even: text, odd: a flag
    return "".join(f"`{part}`" if i % 2 else plain(part) for i, part in enumerate(parts))


def _value(action: argparse.Action) -> str:
    """What a flag's value is called: its metavar, a short list of choices, N, X or VALUE."""
    if action.metavar:
        return action.metavar
    if action.choices and len(action.choices) <= 3:
        return "{" + ",".join(map(str, action.choices)) + "}"
    if isinstance(action.default, bool) or action.choices:
        return "NAME"
    return {int: "N", float: "X"}.get(type(action.default), "VALUE")


def _flag(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest}`"
    value = "" if action.nargs == 0 else " " + _value(action)
    return f"`{action.option_strings[0]}{value}`" + "".join(f" `{name}`" for name in action.option_strings[1:])


def _default(action: argparse.Action, help_default: Optional[str]) -> str:
    if action.required and action.nargs not in ("*", "?"):  # argparse marks a positional of "*" required
        return "required"
    if help_default is not None:
        simple = re.fullmatch(r"[\w.,'\[\]+-]+", help_default) and help_default not in ("off", "on", "none", "all")
        return f"`{help_default}`" if simple else _cell(help_default)
    if action.nargs == 0 or action.default is None or action.default is False or action.default == "":
        return "off" if action.nargs == 0 else "–"  # not `in (None, "", False)`: 0 == False
    return f"`{action.default}`"


def flag_rows(parser: argparse.ArgumentParser, dests: Optional[Sequence[str]] = None) -> List[List[str]]:
    """One row per flag (and positional argument), or per flag of ``dests`` in their order:
    the flag with its aliases and value, its default (said in the help's "(default: ...)",
    else the parser's) and what it does."""
    actions = parser._actions
    if dests is not None:
        by_dest = {action.dest: action for action in actions}
        actions = [by_dest[dest] for dest in dests]
    return action_rows(actions)


def action_rows(actions: Sequence[argparse.Action]) -> List[List[str]]:
    """The rows of `flag_rows` for these actions."""
    rows = []
    for action in actions:
        if action.help == argparse.SUPPRESS or isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        help_text = action.help or ""
        found = DEFAULT_IN_HELP.search(help_text)  # "... (default: X)" or "... (more; default: X)"
        if found:
            help_text = help_text[:found.start()] + (")" if found.group(1).startswith(";") else "")
        what = _cell(help_text)
        if action.choices and len(action.choices) > 3 and not all(str(c) in help_text for c in action.choices):
            what += ("; " if what else "") + "one of " + ", ".join(f"`{c}`" for c in action.choices)
        rows.append([_flag(action), _default(action, found.group(2) if found else None), what])
    return rows


#: main.py's flags that set the training recipe: their defaults are the original code's
RECIPE = ("loss_margin", "image_size", "neg_num", "query_size", "pool_size", "batch_size",
          "update_every", "epochs", "optimizer", "lr", "weight_decay")


#: the groups argparse makes itself: a parser with no other has one table
ARGPARSE_GROUPS = ("positional arguments", "options", "optional arguments")


def flag_tables(parser: argparse.ArgumentParser) -> str:
    """The flags as one table, or as a table under each heading of --help when the parser
    puts its flags in groups."""
    header = ["flag", "default", "what it does"]
    groups = [group for group in parser._action_groups if action_rows(group._group_actions)]
    if all(group.title in ARGPARSE_GROUPS for group in groups):
        return table(header, flag_rows(parser))
    return "\n".join(f"**{(group.title or '').capitalize()}**\n\n" + table(header, action_rows(group._group_actions))
                     for group in groups)


def flags_section() -> Generated:
    made = {}
    for name, (typed, module, subcommand) in COMMANDS.items():
        parser = command_parser(module, subcommand)
        made[name] = (f"`{typed}`: every flag, from its parser (`{module}.build_parser()`; `{typed} --help` "
                      "prints the same).\n\n" + flag_tables(parser))
    module = COMMANDS["flags_main.md"][1]
    made["recipe.md"] = (table(["flag", "default", "what it sets"], flag_rows(command_parser(module, None), RECIPE))
                         + f"\n*From `{module}.build_parser()`.*\n")
    return Generated(made, {}, [])


def not_run_section() -> Generated:
    rows = []
    for page in doc_pages():
        for block in page_blocks(page):
            if block.marker and block.marker[0] == "not run":
                first = next((line for line in block.text.splitlines() if line.strip() and not line.startswith("#")), "")
                rows.append([f"`{block.where}`", f"`{first[:70]}{'…' if len(first) > 70 else ''}`", block.marker[1]])
    text = table(["where", "first command", "why it is not run by the suite"], rows)
    return Generated({"not_run.md": text}, {}, [])


SECTIONS = (demo_section, demo_epochs_section, later_losses_section, extract_section, batch_sweep_section,
            real_weights_section,
            decoding_section, image_loader_section, call_cost_section, neighbours_section, training_section, search_section, int8_section, gpu_section, reranking_section,
            compat_section, vit_readout_section, learning_section, registry_section, imagenet_section, flags_section, not_run_section)


# ---- writing and checking


def _digest(inputs: Sequence[str]) -> str:
    sha = hashlib.sha256()
    for name in inputs:
        sha.update(name.encode() + (RESULTS / name).read_bytes())
    return sha.hexdigest()[:16]


def generate(markdown_folder: Path, image_folder: Path, plots: bool = True) -> Dict[str, str]:
    """Write every section's Markdown (and plots) and ``sources.json``; returns the sources."""
    markdown_folder.mkdir(parents=True, exist_ok=True)
    image_folder.mkdir(parents=True, exist_ok=True)
    sources = {}
    for section in SECTIONS:
        made = section()
        digest = _digest(made.inputs)
        for name, text in made.markdown.items():
            (markdown_folder / name).write_text(text)
            sources[name] = digest
        for name, draw in made.plots.items():
            if plots:
                draw(image_folder / name)
            sources[f"images/generated/{name}"] = digest
    (markdown_folder / "sources.json").write_text(json.dumps(sources, indent=1, sort_keys=True) + "\n")
    return sources


def stale() -> List[str]:
    """Generated files that are missing or do not match what the inputs give now."""
    with tempfile.TemporaryDirectory() as tmp:
        sources = generate(Path(tmp), Path(tmp) / "images", plots=False)
        problems = [name for name in sources if not name.startswith("images/")
                    and (not (GENERATED / name).is_file() or (GENERATED / name).read_text() != (Path(tmp) / name).read_text())]
    recorded = json.loads((GENERATED / "sources.json").read_text()) if (GENERATED / "sources.json").is_file() else {}
    problems += [name for name in sources if name.startswith("images/")
                 and (recorded.get(name) != sources[name] or not (ROOT / "docs" / name).is_file())]
    return problems


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only say which generated files are out of date")
    args = parser.parse_args(argv)
    if args.check:
        problems = stale()
        for name in problems:
            print(f"out of date: docs/{'' if name.startswith('images/') else 'generated/'}{name} "
                  "(run python docs/generate.py)")
        return 1 if problems else 0
    generate(GENERATED, IMAGES)
    print(f"wrote {GENERATED.relative_to(ROOT)}/ and {IMAGES.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
