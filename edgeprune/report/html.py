"""report.html: one self-contained page (no network, no scripts) with inline SVG plots, the verdict table and,
after a search, every candidate with the reason it was or was not chosen.

Plots: quality vs latency of every candidate with the Pareto front and the budget line; kept
heads and FFN neurons per layer against the dense model; kernel time per operator type
before (dense fp32) and after (the shipped model). Each plot is an ``<svg>`` inside a
``<figure data-plot=...>`` so a browser test can find it.
"""

from __future__ import annotations

import html
import io

from edgeprune.report.schema import Report, fmt, health_text
from edgeprune.search import Candidate

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } .PASS { color: #137333; } .FAIL { color: #b3261e; } .UNCERTAIN { color: #a15c00; }
table { border-collapse: collapse; margin: 1em 0; } td, th { border: 1px solid #ccc; padding: 4px 10px; }
th { background: #f3f3f3; } figure { margin: 1.5em 0; } figcaption { color: #555; font-size: 0.9em; }
svg { max-width: 100%; height: auto; }
"""


def render_html(report: Report) -> str:
    import matplotlib

    matplotlib.use("Agg")
    status = "PASS" if report.passed else "FAIL"
    parts = [f"<h1>edgeprune report: <span class='{status}'>{status}</span> — {html.escape(report.model)} "
             f"on <code>{html.escape(report.profile)}</code></h1>",
             f"<p>Created {html.escape(report.created)}; {html.escape(health_text(report.host_health))}.</p>",
             _verdict_table(report),
             _figure("pareto", _pareto_svg(report), "Quality vs latency of every candidate (grey: latency-table "
                     "points, every layer cut to one head or neuron count, without recovery); the line joins the "
                     "Pareto front, the dashed line is the latency budget."),
             _figure("kept-units", _kept_svg(report), "Kept attention heads and FFN neurons per layer (grey: dense)."),
             _figure("op-time", _op_time_svg(report), "Kernel time per operator type, one thread: dense fp32 vs "
                     "the shipped model."),
             _models_table(report)]
    if report.search is not None:
        parts += [f"<h2>Search</h2><p>{html.escape(report.search.advice)}</p>", _candidates_table(report)]
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>edgeprune report</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>\n")


def _verdict_table(report: Report) -> str:
    return _table("verdicts", ("profile", "metric", "budget", "value", "band", "verdict"), [
        (html.escape(v.profile), html.escape(v.metric), f"{v.budget:.4g} {v.unit}", f"{v.value:.4g} {v.unit}",
         f"{v.low:.3g} – {v.high:.3g}" if v.predicted else "measured",
         f"<b class='{v.status}'>{v.status}</b>" + (f" {html.escape(v.reason)}" if v.reason else ""))
        for v in report.verdicts])


def _models_table(report: Report) -> str:
    decoder = any(m.tokens_per_s is not None for m in report.models)
    return _table("models", ("model", "p50 ms", "p90 ms", "speedup", "MB", "cosine to dense",
                             *(("ms/token", "tokens/s") if decoder else ())), [
        (html.escape(m.name), f"{m.latency_ms['p50']:.3f}", f"{m.latency_ms['p90']:.3f}", m.speedup_text(),
         f"{m.size_mb:.1f}", "–" if m.cosine_fidelity is None else f"{m.cosine_fidelity:.4f}",
         *((fmt(m.decode_ms_per_token, ".2f"), fmt(m.tokens_per_s, ".1f")) if decoder else ()))
        for m in report.models])



def _candidates_table(report: Report) -> str:
    def band(c: Candidate) -> str:
        return "measured" if c.low_ms is None else f"{c.low_ms:.3f}–{c.high_ms:.3f}"

    return _table("candidates", ("setting", "kept MACs", "precision", "ms", "band", "peak MiB", "cosine", "STS-B",
                                 "Pareto", "verdict"), [
        (html.escape(c.setting), f"{c.keep_flops:.3f}", c.precision, f"{c.latency_ms:.3f}", band(c),
         "–" if c.memory_mb is None else f"{c.memory_mb:.1f}", f"{c.fidelity:.4f}",
         "–" if c.stsb is None else f"{c.stsb:.2f}", "yes" if c.pareto else "", html.escape(c.verdict))
        for c in report.search.candidates])


def _table(table_id: str, headers: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """An HTML table; cells are already-escaped HTML."""
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table id='{table_id}'><tr>{head}</tr>{body}</table>"


def _figure(name: str, svg: str, caption: str) -> str:
    return f"<figure data-plot='{name}'>{svg}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _svg(fig) -> str:  # a matplotlib Figure
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def _pareto_svg(report: Report) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if report.search is not None and report.search.candidates:
        points = [(c.latency_ms, c.fidelity, f"table {c.setting}" if c.table else f"keep {c.keep_flops:.2f}", c.pareto)
                  for c in report.search.candidates]
        budget = report.search.budget_ms
    else:
        points = [(m.latency_ms["p90"], m.cosine_fidelity or 0.0, m.name, True) for m in report.models]
        budget = report.budget.get("latency_ms")
    for latency, quality, label, _ in points:
        ax.scatter(latency, quality, color="#999999" if label.startswith("table") else "#1a73e8")
        ax.annotate(label, (latency, quality), fontsize=8, xytext=(4, 4), textcoords="offset points")
    front = sorted((p[0], p[1]) for p in points if p[3])
    if len(front) > 1:
        ax.plot(*zip(*front), color="#1a73e8", alpha=0.5)
    if budget:
        ax.axvline(budget, color="#b3261e", linestyle="--", label=f"budget {budget:.3g} ms")
        ax.legend(loc="lower right")
    ax.set_xlabel(f"latency ms ({report.budget.get('percentile', 'p90')}, measured)")
    ax.set_ylabel("cosine fidelity to dense")
    return _svg(fig)


def _kept_svg(report: Report) -> str:
    import matplotlib.pyplot as plt

    fig, (heads, neurons) = plt.subplots(1, 2, figsize=(9, 3))
    layers = list(range(len(report.kept_heads)))
    for ax, kept, dense, title in ((heads, report.kept_heads, report.dense_heads, "heads"),
                                   (neurons, report.kept_neurons, report.dense_neurons, "FFN neurons")):
        ax.bar(layers, [dense] * len(layers), color="#dddddd")
        ax.bar(layers, kept, color="#1a73e8")
        ax.set_title(f"kept {title}")
        ax.set_xlabel("layer")
    return _svg(fig)


def _op_time_svg(report: Report) -> str:
    import matplotlib.pyplot as plt

    ops = sorted(report.op_time_ms, key=lambda op: -max(report.op_time_ms[op].values()))[:12]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(ops) + 1))
    y = range(len(ops))
    ax.barh([i + 0.2 for i in y], [report.op_time_ms[op].get("before", 0.0) for op in ops], height=0.4,
            color="#bbbbbb", label="dense fp32")
    ax.barh([i - 0.2 for i in y], [report.op_time_ms[op].get("after", 0.0) for op in ops], height=0.4,
            color="#1a73e8", label="shipped")
    ax.set_yticks(list(y), ops)
    ax.invert_yaxis()
    ax.set_xlabel("ms per inference")
    ax.legend()
    return _svg(fig)
