"""report.md: the verdicts and figures as a short Markdown page, for CI comments and job summaries."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edgeprune.report.schema import Report, VerdictLine, fmt, health_text


def verdict_table(verdicts: Sequence[VerdictLine | dict[str, Any]]) -> list[str]:
    """The budget lines as a Markdown table (``edgeprune check --markdown`` writes just this)."""
    lines = ["| profile | metric | budget | value | band | verdict |", "|---|---|---|---|---|---|"]
    for v in verdicts:
        v = v if isinstance(v, VerdictLine) else VerdictLine(**v)
        band = f"{v.low:.3g}–{v.high:.3g}" if v.predicted else "measured"
        reason = f" ({v.reason})" if v.reason else ""
        lines.append(f"| {v.profile} | {v.metric} | {v.budget:.4g} {v.unit} | {v.value:.4g} {v.unit} | {band} "
                     f"| **{v.status}**{reason} |")
    return lines


def render_markdown(report: Report) -> str:
    status = "PASS" if report.passed else "FAIL"
    lines = [f"# edgeprune: {status} — {report.model} on `{report.profile}`", "", health_text(report.host_health),
             "", *verdict_table(report.verdicts)]
    lines += ["", "| model | p50 ms | p90 ms | speedup | size MB | peak MB | cosine | STS-B | ms/token | tokens/s |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for m in report.models:
        lines.append(f"| {m.name} | {m.latency_ms['p50']:.3f} | {m.latency_ms['p90']:.3f} | {m.speedup_text()} "
                     f"| {m.size_mb:.1f} | {fmt(m.peak_memory_mb, '.1f')} | {fmt(m.cosine_fidelity, '.4f')} "
                     f"| {fmt(m.stsb_spearman, '.2f')} | {fmt(m.decode_ms_per_token, '.2f')} "
                     f"| {fmt(m.tokens_per_s, '.1f')} |")
    if report.search is not None:
        s = report.search
        lines += ["", f"**Search** ({s.seconds:.0f} s): {s.advice}", "",
                  "| setting | kept MACs | precision | latency ms | cosine | Pareto | verdict |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {c.setting} | {c.keep_flops:.3f} | {c.precision} | {c.latency_ms:.3f} | {c.fidelity:.4f} "
                  f"| {'yes' if c.pareto else ''} | {c.verdict} |" for c in s.candidates]
    return "\n".join(lines) + "\n"

