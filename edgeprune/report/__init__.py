"""Reports of a run: report.json (validated, with its JSON Schema beside it), report.md and report.html."""

from __future__ import annotations

import json
from pathlib import Path

from edgeprune.files import atomic_write_text
from edgeprune.report.html import render_html
from edgeprune.report.markdown import render_markdown
from edgeprune.report.schema import Report

REPORT_FILES = ("report.json", "report.schema.json", "report.md", "report.html")


def write_reports(run_dir: Path, report: Report) -> list[Path]:
    """Write every report file into ``run_dir`` (each atomically) and return their paths."""
    run_dir = Path(run_dir)
    texts = {"report.json": report.model_dump_json(indent=2) + "\n",
             "report.schema.json": json.dumps(Report.model_json_schema(mode="serialization"), indent=2) + "\n",
             "report.md": render_markdown(report), "report.html": render_html(report)}
    for name, text in texts.items():
        atomic_write_text(run_dir / name, text)
    return [run_dir / name for name in REPORT_FILES]


__all__ = ["REPORT_FILES", "Report", "write_reports"]
