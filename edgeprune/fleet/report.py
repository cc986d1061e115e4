"""The fleet report: every cell's verdict in one place, as report.json, report.md, report.html and junit.xml.

``report.json``::

    {"edgeprune_sweep": 1, "created": ISO time, "sweep": the SWEEP.yaml path, "passed": every cell PASS,
     "status": the worst cell (PASS < UNCERTAIN < FAIL < ERROR),
     "execution": {"where": Ray or this process, "ray": bool, "seconds": wall time, "ran": cells run now,
                   "from_cache": cells read back},
     "models": [{"name", "run", "path"}], "profiles": [{"name", "ref", "budget": {latency_ms, percentile, ...}}],
     "cells": [{"cell": "MODEL@PROFILE", "model", "profile", "run", "key", "status", "predicted",
                "verdicts": [budget lines as in `edgeprune check --json`],
                "latency_ms": {"percentile", "value", "low", "high"}, "memory_mb", "size_mb",
                "quality": cosine of the shipped model to the dense one (prune/optimize; null for check),
                "run_dir": a prune/optimize cell's run directory, "link": its report.html (else the cell's
                result.json), "measured": {"node", "pid", "start", "end"} of the measuring section,
                "attempts": how often the cell was started, "retried": attempts > 1, "from_cache": bool,
                "error", "error_kind" (input | internal) for an ERROR cell}],
     "retried": [cell ids], "errors": [{"cell", "error", "error_kind"}]}

A cell's full measurement or prediction is in its ``cache/<key>/result.json``.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from edgeprune.budgets import JUNIT_HEADER, PASS, Verdict, junit_suite
from edgeprune.files import atomic_write_json, atomic_write_text
from edgeprune.fleet.cache import CACHE, RESULT, attempts, cell_dir
from edgeprune.fleet.cells import Cell
from edgeprune.fleet.html import render_html
from edgeprune.fleet.spec import Sweep
from edgeprune.fleet.summary import deciding_line, grid, line_text
from edgeprune.fleet.work import ERROR, SEVERITY

REPORT_FILES = ("report.json", "report.md", "report.html", "junit.xml")


def build_report(sweep: Sweep, cells: list[Cell], results: dict[str, dict[str, Any]], cached: set[str],
                 out: Path, execution: dict[str, Any]) -> dict[str, Any]:
    """The report of every cell, in the sweep's order (``results`` by cell id; ``cached``: read back)."""
    rows = []
    for cell in cells:
        result = {k: v for k, v in results[cell.id].items() if k != "measurement"}
        tries = len(attempts(cell_dir(out, cell.key)))
        link = (f"{result['run_dir']}/report.html" if result.get("run_dir")
                else None if result["status"] == ERROR else f"{CACHE}/{cell.key}/{RESULT}")
        rows.append({**result, "attempts": tries, "retried": tries > 1, "from_cache": cell.id in cached,
                     "link": link})
    worst = max((row["status"] for row in rows), key=SEVERITY.__getitem__)
    return {
        "edgeprune_sweep": 1,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sweep": None if sweep.path is None else str(sweep.path),
        "passed": worst == PASS,
        "status": worst,
        "execution": execution,
        "models": [{"name": m.name, "run": m.run, "path": str(m.source)} for m in sweep.models],
        "profiles": [{"name": p.name, "ref": p.ref, "budget": asdict(p.budget)} for p in sweep.profiles],
        "cells": rows,
        "retried": [row["cell"] for row in rows if row["retried"]],
        "errors": [{k: row[k] for k in ("cell", "error", "error_kind")} for row in rows if row["status"] == ERROR],
    }


def write_report(out: Path, report: dict[str, Any]) -> list[Path]:
    """Every report file into ``out``, each atomically."""
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", render_markdown(report))
    atomic_write_text(out / "report.html", render_html(report))
    atomic_write_text(out / "junit.xml", render_junit(report))
    return [out / name for name in REPORT_FILES]


def render_markdown(report: dict[str, Any]) -> str:
    models, profiles, rows = grid(report)
    ex = report["execution"]
    lines = [f"# edgeprune sweep: {report['status']} — {len(models)} model(s) × {len(profiles)} profile(s)", "",
             f"{ex['where']}; {ex['ran']} cell(s) run, {ex['from_cache']} from the cache, {ex['seconds']:.0f} s.",
             "", "| model | " + " | ".join(profiles) + " |", "|---" * (len(profiles) + 1) + "|"]
    for model in models:
        lines.append(f"| {model} | " + " | ".join(_markdown_cell(rows[model, p]) for p in profiles) + " |")
    if report["retried"]:
        lines += ["", "Retried: " + ", ".join(f"{row['cell']} ({row['attempts']} attempts)"
                                               for row in report["cells"] if row["retried"])]
    lines += [f"- **{e['cell']}**: {e['error']}" for e in report["errors"]] if report["errors"] else []
    return "\n".join(lines) + "\n"


def _markdown_cell(row: dict[str, Any]) -> str:
    if row["status"] == ERROR:
        return "**ERROR**"
    line = deciding_line(row)
    text = f"**{row['status']}** {line_text(line)}" if line else f"**{row['status']}**"
    return f"[{text}]({row['link']})" if row.get("link") else text


def render_junit(report: dict[str, Any]) -> str:
    """One test suite per cell (``edgeprune.sweep.MODEL@PROFILE``), a test case per budget line; a cell that could
    not run is one test case in error."""
    suites = []
    for row in report["cells"]:
        suite = f"edgeprune.sweep.{row['cell']}"
        if row["status"] == ERROR:
            suites.append(f'<testsuite name={quoteattr(suite)} tests="1" failures="0" errors="1">\n'
                          f'  <testcase classname={quoteattr(suite)} name="run"><error message='
                          f'{quoteattr(row["error"])}/></testcase>\n</testsuite>')
        else:
            suites.append(junit_suite([Verdict.from_dict(line) for line in row["verdicts"]], suite))
    lines = [line for row in report["cells"] for line in row["verdicts"]]
    failed = sum(line["status"] != PASS for line in lines)
    tests, errors = len(lines) + len(report["errors"]), len(report["errors"])
    return "\n".join([JUNIT_HEADER, f'<testsuites name="edgeprune.sweep" tests="{tests}" failures="{failed}" '
                                    f'errors="{errors}">',
                      *suites, "</testsuites>"]) + "\n"
