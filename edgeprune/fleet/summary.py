"""What both renderings of the fleet report (Markdown and HTML) say about a cell."""

from __future__ import annotations

from typing import Any


def line_text(line: dict[str, Any]) -> str:
    """One budget line: ``latency_p90 3.51 ms (2.9–4.1) ≤ 4.44 ms, +21%``."""
    band = f" ({line['low']:.3g}–{line['high']:.3g})" if line.get("predicted") else ""
    bound = "≥" if line.get("higher_is_better") else "≤"
    return (f"{line['metric']} {line['value']:.3g} {line['unit']}{band} {bound} {line['budget']:.4g} "
            f"{line['unit']}, {line['margin']:+.0%}")


def deciding_line(row: dict[str, Any]) -> dict[str, Any] | None:
    """The line that decides the cell: the worst verdict, and of those the least headroom."""
    rank = {"FAIL": 0, "UNCERTAIN": 1, "PASS": 2}
    return min(row["verdicts"], key=lambda line: (rank[line["status"]], line["margin"]), default=None)


def grid(report: dict[str, Any]) -> tuple[list[str], list[str], dict[tuple[str, str], dict[str, Any]]]:
    """(models, profiles, cell row by (model, profile)): the report as its models × devices table."""
    models = [m["name"] for m in report["models"]]
    profiles = [p["name"] for p in report["profiles"]]
    return models, profiles, {(row["model"], row["profile"]): row for row in report["cells"]}
