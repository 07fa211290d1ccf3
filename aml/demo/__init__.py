"""The end-to-end demo on the synthetic landmarks (``make demo``, ``python -m aml.demo``):
`aml.demo.pipeline` trains and tests, `aml.demo.tables` prints and writes the
table, `aml.demo.findings` checks the paper's two findings on it."""

from aml.demo.findings import Finding, findings_lines, paper_findings
from aml.demo.pipeline import DemoBudget, main, run_demo, student_rows, train_teacher
from aml.demo.tables import format_table, markdown_table, write_results

__all__ = [
    "DemoBudget",
    "Finding",
    "findings_lines",
    "format_table",
    "main",
    "markdown_table",
    "paper_findings",
    "run_demo",
    "student_rows",
    "train_teacher",
    "write_results",
]
