"""Budgets and verdicts: does a measured model fit its latency and memory limits?"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from edgeprune.errors import EdgepruneError
from edgeprune.profile import Measurement, profile

PASS, FAIL = "PASS", "FAIL"


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

    @property
    def margin(self) -> float:
        """Headroom as a fraction of the budget (negative when over)."""
        return (self.budget - self.value) / self.budget

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "value": round(self.value, 4), "margin": round(self.margin, 4)}


def verdicts(measurement: Measurement, budget: Budget) -> list[Verdict]:
    lines = []
    if budget.latency_ms is not None:
        value = measurement.latency.percentile(budget.percentile)
        lines.append(Verdict(f"latency_{budget.percentile}", budget.latency_ms, value, "ms",
                             PASS if value <= budget.latency_ms else FAIL, measurement.profile))
    if budget.memory_mb is not None:
        if measurement.memory is None:
            raise EdgepruneError("a memory budget needs a memory measurement", "profile with memory on")
        value = measurement.memory.peak_over_baseline_mb
        lines.append(Verdict("peak_memory", budget.memory_mb, value, "MiB",
                             PASS if value <= budget.memory_mb else FAIL, measurement.profile))
    return lines


def check(onnx_path: Path | str, device: str, budget: Budget, *, threads: int | None = None, batch: int = 1,
          seq_len: int = 128, runs: int = 100) -> tuple[list[Verdict], Measurement]:
    """Measure ``onnx_path`` on ``device`` and judge it against ``budget``."""
    measurement = profile(onnx_path, device, threads=threads, batch=batch, seq_len=seq_len, runs=runs,
                          memory=budget.memory_mb is not None)
    return verdicts(measurement, budget), measurement


def passed(lines: list[Verdict]) -> bool:
    return all(line.status == PASS for line in lines)


def junit_xml(lines: list[Verdict], suite: str = "edgeprune.check") -> str:
    """JUnit XML with one test case per budget line, for CI systems that render test reports."""
    failures = sum(line.status != PASS for line in lines)
    cases = []
    for line in lines:
        name = quoteattr(f"{line.profile}.{line.metric}")
        text = f"{line.metric} = {line.value:.3f} {line.unit}, budget {line.budget:g} {line.unit}"
        body = "" if line.status == PASS else f"<failure message={quoteattr(text)}/>"
        cases.append(f'  <testcase classname="{suite}" name={name}>{body}</testcase>')
    header = f'<testsuite name="{suite}" tests="{len(lines)}" failures="{failures}">'
    return "\n".join(['<?xml version="1.0" encoding="utf-8"?>', header, *cases, "</testsuite>"]) + "\n"
