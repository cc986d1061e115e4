"""Budgets and verdicts: does a model fit its latency and memory limits?

On this host the figures are measured and a line is PASS or FAIL. On any other profile they
are predicted with an error band: PASS when the whole band is within the budget, FAIL when
all of it is over, UNCERTAIN when the band straddles the budget.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from edgeprune.errors import EdgepruneError
from edgeprune.profile import Estimate, Measurement, estimate, load_profile, profile

PASS, FAIL, UNCERTAIN = "PASS", "FAIL", "UNCERTAIN"


@dataclass(frozen=True)
class Budget:
    latency_ms: float | None = None
    memory_mb: float | None = None
    """Peak resident memory of inference over the process baseline (MiB)."""
    percentile: str = "p90"

    def __post_init__(self) -> None:
        if self.latency_ms is None and self.memory_mb is None:
            raise EdgepruneError("no budget given", "pass --latency-ms and/or --memory-mb")
        for name, value in (("latency", self.latency_ms), ("memory", self.memory_mb)):
            if value is not None and not value > 0:
                raise EdgepruneError(f"{name} budget {value} is not positive", f"pass a positive {name} budget")
        if not re.fullmatch(r"p(50|90|95|99)", self.percentile):
            raise EdgepruneError(f"unknown percentile '{self.percentile}'", "use p50, p90, p95 or p99")


@dataclass(frozen=True)
class Verdict:
    """One budget line: what was allowed, what was measured, and the outcome."""

    metric: str
    budget: float
    value: float
    unit: str
    status: str
    profile: str
    low: float | None = None
    """Lower end of the error band (predicted lines only)."""
    high: float | None = None

    @property
    def margin(self) -> float:
        """Headroom as a fraction of the budget (negative when over)."""
        return (self.budget - self.value) / self.budget

    @property
    def predicted(self) -> bool:
        return self.low is not None

    def to_dict(self) -> dict[str, Any]:
        data = {**asdict(self), "value": round(self.value, 4), "margin": round(self.margin, 4),
                "predicted": self.predicted}
        if self.predicted:
            data.update(low=round(self.low, 4), high=round(self.high, 4))
        else:
            del data["low"], data["high"]
        return data


def judge(value: float, budget: float, low: float | None = None, high: float | None = None) -> str:
    """PASS/FAIL for a measured value; with a band, UNCERTAIN when the band straddles the budget."""
    if low is None or high is None:
        return PASS if value <= budget else FAIL
    if high <= budget:
        return PASS
    return FAIL if low > budget else UNCERTAIN


def verdicts(result: Measurement | Estimate, budget: Budget) -> list[Verdict]:
    """One line per budget: measured values on this host, predicted values with their band elsewhere."""
    lines = []
    name = result.device if isinstance(result, Estimate) else result.profile
    if budget.latency_ms is not None:
        if isinstance(result, Estimate):
            value, low, high = result.latency(budget.percentile)
        else:
            value, low, high = result.latency.percentile(budget.percentile), None, None
        lines.append(Verdict(f"latency_{budget.percentile}", budget.latency_ms, value, "ms",
                             judge(value, budget.latency_ms, low, high), name, low, high))
    if budget.memory_mb is not None:
        if isinstance(result, Estimate):
            value, low, high = result.memory()
        elif result.memory is None:
            raise EdgepruneError("a memory budget needs a memory measurement", "profile with memory on")
        else:
            value, low, high = result.memory.peak_over_baseline_mb, None, None
        lines.append(Verdict("peak_memory", budget.memory_mb, value, "MiB",
                             judge(value, budget.memory_mb, low, high), name, low, high))
    return lines


def check(onnx_path: Path | str, device: str, budget: Budget, *, threads: int | None = None, batch: int = 1,
          seq_len: int = 128, runs: int = 100) -> tuple[list[Verdict], Measurement | Estimate]:
    """Measure (this host) or predict (any other profile) ``onnx_path`` and judge it against ``budget``."""
    target = load_profile(device)
    run = profile if target.is_host else estimate
    result = run(onnx_path, target, threads=threads, batch=batch, seq_len=seq_len, runs=runs,
                 memory=budget.memory_mb is not None)
    return verdicts(result, budget), result


def passed(lines: list[Verdict]) -> bool:
    return all(line.status == PASS for line in lines)


def junit_xml(lines: list[Verdict], suite: str = "edgeprune.check") -> str:
    """JUnit XML with one test case per budget line, for CI systems that render test reports."""
    failures = sum(line.status != PASS for line in lines)
    cases = []
    for line in lines:
        name = quoteattr(f"{line.profile}.{line.metric}")
        band = f" (predicted {line.low:.3f}-{line.high:.3f})" if line.predicted else ""
        text = f"{line.status}: {line.metric} = {line.value:.3f} {line.unit}{band}, budget {line.budget:g} {line.unit}"
        body = "" if line.status == PASS else f"<failure message={quoteattr(text)}/>"
        cases.append(f'  <testcase classname="{suite}" name={name}>{body}</testcase>')
    header = f'<testsuite name="{suite}" tests="{len(lines)}" failures="{failures}">'
    return "\n".join(['<?xml version="1.0" encoding="utf-8"?>', header, *cases, "</testsuite>"]) + "\n"
