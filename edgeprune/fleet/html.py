"""report.html of a sweep: one self-contained page (no network, no scripts).

The models × devices table gives each cell its verdict, colour-coded, with every budget line's figure and margin;
a cell links to its own run report (prune/optimize) or its result.json (check). Below it, one plot per device:
latency against quality, one circle per cell (a predicted cell's band as a horizontal bar), and the latency
budget as a dashed line. The SVG is written here, point by point (``<circle data-cell=...>``,
``<line class='budget'>``), so a browser test can count what it draws.
"""

from __future__ import annotations

import html
from typing import Any

from edgeprune.fleet.summary import grid, line_text

COLOURS = {"PASS": "#137333", "FAIL": "#b3261e", "UNCERTAIN": "#a15c00", "ERROR": "#5f6368"}
BACKGROUNDS = {"PASS": "#e6f4ea", "FAIL": "#fce8e6", "UNCERTAIN": "#fef7e0", "ERROR": "#f1f3f4"}
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } table { border-collapse: collapse; margin: 1em 0; }
td, th { border: 1px solid #ccc; padding: 6px 10px; vertical-align: top; } th { background: #f3f3f3; }
td.cell a { font-weight: bold; text-decoration: none; } td.cell div { font-size: 0.85em; }
.note { color: #555; font-size: 0.8em; } figure { display: inline-block; margin: 1em 1em 1em 0; }
figcaption { color: #555; font-size: 0.9em; max-width: 420px; }
""" + "".join(f"td.{s} {{ background: {BACKGROUNDS[s]}; }} td.{s} a, .{s} {{ color: {c}; }}\n"
              for s, c in COLOURS.items())
WIDTH, HEIGHT, MARGIN = 420, 260, 48
"""Plot size and the margin left for axis labels (SVG px)."""


def render_html(report: dict[str, Any]) -> str:
    ex = report["execution"]
    status = report["status"]
    parts = [f"<h1>edgeprune sweep: <span class='{status}'>{status}</span> — {len(report['models'])} model(s) × "
             f"{len(report['profiles'])} profile(s)</h1>",
             f"<p>Created {html.escape(report['created'])}; {html.escape(ex['where'])}; {ex['ran']} cell(s) run, "
             f"{ex['from_cache']} from the cache, {ex['seconds']:.0f} s.</p>",
             _table(report), _notes(report), "<h2>Latency vs quality per device</h2>",
             *(_plot(report, profile) for profile in report["profiles"])]
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>edgeprune sweep</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>\n")


def _table(report: dict[str, Any]) -> str:
    models, profiles, rows = grid(report)
    head = "<tr><th>model</th>" + "".join(f"<th>{html.escape(p)}</th>" for p in profiles) + "</tr>"
    body = "".join("<tr><th>" + html.escape(model) + "</th>" + "".join(_cell(rows[model, p]) for p in profiles)
                   + "</tr>" for model in models)
    return f"<table id='fleet'>{head}{body}</table>"


def _cell(row: dict[str, Any]) -> str:
    status = row["status"]
    verdict = (f"<a href='{html.escape(row['link'])}'>{status}</a>" if row.get("link")
               else f"<b class='{status}'>{status}</b>")
    lines = [f"<div>{html.escape(line_text(line))}</div>" for line in row["verdicts"]]
    if status == "ERROR":
        lines.append(f"<div>{html.escape(row['error'])}</div>")
    notes = [f"{row['attempts']} attempts (retried)"] if row["retried"] else []
    notes += ["from the cache"] if row["from_cache"] else []
    notes += [line["reason"] for line in row["verdicts"] if line.get("reason")]
    note = f"<div class='note'>{html.escape('; '.join(notes))}</div>" if notes else ""
    return (f"<td class='cell {status}' data-cell='{html.escape(row['cell'])}' data-status='{status}'>"
            f"{verdict}{''.join(lines)}{note}</td>")


def _notes(report: dict[str, Any]) -> str:
    retried = [f"{r['cell']} ({r['attempts']} attempts)" for r in report["cells"] if r["retried"]]
    parts = [f"<p id='retried'>Retried: {html.escape(', '.join(retried))}</p>"] if retried else []
    errors = "; ".join(f"{e['cell']}: {e['error']}" for e in report["errors"])
    parts += [f"<p id='errors'>Could not run: {html.escape(errors)}</p>"] if errors else []
    return "".join(parts)


def _plot(report: dict[str, Any], profile: dict[str, Any]) -> str:
    """Latency (x) against quality (y) of every cell on this device that has a latency, with its budget."""
    name, budget = profile["name"], profile["budget"]
    points = [row for row in report["cells"] if row["profile"] == name and row.get("latency_ms")]
    limit = budget.get("latency_ms")
    x_max = 1.15 * max([row["latency_ms"]["high"] for row in points] + ([limit] if limit else []) + [1e-3])
    qualities = [_quality(row) for row in points]
    y_min = min([*qualities, 0.95]) - 0.02
    y_max = 1.01

    def x(value: float) -> float:
        return MARGIN + (WIDTH - MARGIN - 10) * value / x_max

    def y(value: float) -> float:
        return HEIGHT - MARGIN - (HEIGHT - MARGIN - 10) * (value - y_min) / (y_max - y_min)

    shapes = [f"<line x1='{MARGIN}' y1='{HEIGHT - MARGIN}' x2='{WIDTH - 10}' y2='{HEIGHT - MARGIN}' stroke='#999'/>",
              f"<line x1='{MARGIN}' y1='10' x2='{MARGIN}' y2='{HEIGHT - MARGIN}' stroke='#999'/>"]
    for value, anchor in ((0, "start"), (x_max / 2, "middle"), (x_max, "end")):
        shapes.append(f"<text x='{x(value):.1f}' y='{HEIGHT - MARGIN + 16}' font-size='11' text-anchor='{anchor}'>"
                      f"{value:.3g}</text>")
    for value in (y_min, 1.0):
        shapes.append(f"<text x='{MARGIN - 6}' y='{y(value) + 4:.1f}' font-size='11' text-anchor='end'>"
                      f"{value:.3f}</text>")
    shapes.append(f"<text x='{(WIDTH + MARGIN) / 2:.0f}' y='{HEIGHT - 8}' font-size='12' text-anchor='middle'>"
                  f"latency ms ({html.escape(budget.get('percentile', 'p90'))})</text>")
    shapes.append(f"<text x='12' y='{(HEIGHT - MARGIN) / 2:.0f}' font-size='12' text-anchor='middle' "
                  f"transform='rotate(-90 12 {(HEIGHT - MARGIN) / 2:.0f})'>cosine to dense</text>")
    if limit:
        shapes.append(f"<line class='budget' data-budget-ms='{limit:g}' x1='{x(limit):.1f}' y1='10' "
                      f"x2='{x(limit):.1f}' y2='{HEIGHT - MARGIN}' stroke='#b3261e' stroke-dasharray='6 4'>"
                      f"<title>budget {limit:g} ms</title></line>")
    for row, quality in zip(points, qualities):
        lat, colour = row["latency_ms"], COLOURS[row["status"]]
        if lat["high"] > lat["low"]:
            shapes.append(f"<line x1='{x(lat['low']):.1f}' y1='{y(quality):.1f}' x2='{x(lat['high']):.1f}' "
                          f"y2='{y(quality):.1f}' stroke='{colour}' stroke-opacity='0.5' stroke-width='3'/>")
        tip = f"{row['cell']}: {lat['value']:.3g} ms {lat['percentile']}, {row['status']}"
        shapes.append(f"<circle class='point' data-cell='{html.escape(row['cell'])}' cx='{x(lat['value']):.1f}' "
                      f"cy='{y(quality):.1f}' r='5' fill='{colour}'><title>{html.escape(tip)}</title></circle>")
        shapes.append(f"<text x='{x(lat['value']) + 7:.1f}' y='{y(quality) - 7:.1f}' font-size='11'>"
                      f"{html.escape(row['model'])}</text>")
    svg = (f"<svg xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' height='{HEIGHT}' "
           f"viewBox='0 0 {WIDTH} {HEIGHT}'>{''.join(shapes)}</svg>")
    budget_text = f"the dashed line is the {limit:g} ms budget" if limit else "no latency budget on this device"
    caption = (f"{name}: one circle per model, coloured by verdict (bar: predicted band); {budget_text}. Quality is "
               "the shipped model's cosine to its dense model; a checked model is its own reference (1).")
    return (f"<figure data-plot='latency-quality' data-device='{html.escape(name)}'>{svg}"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _quality(row: dict[str, Any]) -> float:
    return 1.0 if row.get("quality") is None else row["quality"]
