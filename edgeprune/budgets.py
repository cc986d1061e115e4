"""Budgets and verdicts: does a model fit its latency and memory limits?

On this host the figures are measured and a line is PASS or FAIL. On any other profile they
are predicted with an error band: PASS when the whole band is within the budget, FAIL when
all of it is over, UNCERTAIN when the band straddles the budget. A latency line whose figures
cannot be trusted (an unstable measurement, a noisy or throttled host, a budget derived from
such a measurement) is UNCERTAIN with the reason, never PASS: a gate that passes on noise is
worse than none.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from edgeprune.errors import BadArgumentError
from edgeprune.options import check_percentile, check_positive
from edgeprune.profiling import DEFAULT_NEW_TOKENS, ProfileResult, measure_or_predict

PASS, FAIL, UNCERTAIN = "PASS", "FAIL", "UNCERTAIN"


@dataclass(frozen=True)
class Budget:
    latency_ms: float | None = None
    memory_mb: float | None = None
    """Peak resident memory of inference over the process baseline (MiB)."""
    percentile: str = "p90"
    tokens_per_s: float | None = None
    """Least decode throughput of a decoder LLM (tokens/s at the median step)."""

    def __post_init__(self) -> None:
        if self.latency_ms is None and self.memory_mb is None and self.tokens_per_s is None:
            raise BadArgumentError("no budget given", "pass --latency-ms, --memory-mb and/or --tokens-per-s")
        check_positive(latency_ms=self.latency_ms, memory_mb=self.memory_mb, tokens_per_s=self.tokens_per_s)
        check_percentile(self.percentile)


@dataclass(frozen=True)
class Verdict:
    """One budget line: what was allowed, what was measured or predicted, and the outcome."""

    metric: str
    budget: float
    value: float
    unit: str
    status: str
    profile: str
    low: float
    """Lower end of the band the value is expected in (the value itself when measured)."""
    high: float
    predicted: bool = False
    reason: str = ""
    """Why the line is UNCERTAIN."""
    higher_is_better: bool = False
    """A throughput floor (tokens/s) rather than a ceiling."""

    @property
    def margin(self) -> float:
        """Headroom as a fraction of the budget (negative when over a ceiling or under a floor)."""
        return ((self.value - self.budget) if self.higher_is_better else (self.budget - self.value)) / self.budget

    def to_dict(self) -> dict[str, Any]:
        """The band appears only on predicted lines: a measured one has none."""
        data = {**asdict(self), "value": round(self.value, 4), "margin": round(self.margin, 4)}
        if not self.reason:
            del data["reason"]
        if not self.higher_is_better:
            del data["higher_is_better"]
        if self.predicted:
            data.update(low=round(self.low, 4), high=round(self.high, 4))
        else:
            del data["low"], data["high"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Verdict:
        """The inverse of ``to_dict`` (a measured line's band is its value), for verdicts read back from JSON."""
        fields = {k: v for k, v in data.items() if k != "margin"}
        return cls(**{"low": data["value"], "high": data["value"], **fields})


def judge(budget: float, low: float, high: float) -> str:
    """PASS when the whole band is within the budget, FAIL when all of it is over, UNCERTAIN when it straddles the
    budget (which a measurement, whose band is its value, never does)."""
    if high <= budget:
        return PASS
    return FAIL if low > budget else UNCERTAIN


def verdicts(result: ProfileResult, budget: Budget, budget_doubts: Sequence[str] = ()) -> list[Verdict]:
    """One line per budget, judged on the result's band: measured values on this host, predicted ones elsewhere.
    ``budget_doubts``: why the latency budget itself is untrustworthy (derived from an unstable measurement)."""
    lines = []
    if budget.latency_ms is not None:
        value, low, high = result.latency(budget.percentile)
        line = Verdict(f"latency_{budget.percentile}", budget.latency_ms, value, "ms",
                       judge(budget.latency_ms, low, high), result.device, low, high, result.predicted)
        lines.append(_with_reason(line, [*result.timing_doubts, *budget_doubts]))
    if budget.tokens_per_s is not None:
        value, low, high = result.tokens_per_s()
        # a floor: judged as a ceiling on its inverse, seconds per token
        line = Verdict("decode_tokens_per_s", budget.tokens_per_s, value, "tokens/s",
                       judge(1 / budget.tokens_per_s, 1 / high, 1 / low), result.device, low, high,
                       result.predicted, higher_is_better=True)
        lines.append(_with_reason(line, result.timing_doubts))
    if budget.memory_mb is not None:
        value, low, high = result.memory()
        lines.append(_with_reason(Verdict("peak_memory", budget.memory_mb, value, "MiB",
                                          judge(budget.memory_mb, low, high), result.device, low, high,
                                          result.predicted), []))
    return lines


def _with_reason(line: Verdict, doubts: Sequence[str]) -> Verdict:
    """A timed line is UNCERTAIN, with why, when its figures cannot be trusted; a band that straddles the budget
    says so."""
    if doubts:
        return dataclasses.replace(line, status=UNCERTAIN, reason="; ".join(doubts))
    if line.status == UNCERTAIN:
        return dataclasses.replace(line, reason="the predicted band straddles the budget")
    return line


def check(onnx_path: Path | str, device: str, budget: Budget, *, threads: int | None = None, batch: int = 1,
          seq_len: int = 128, runs: int = 100, new_tokens: int = DEFAULT_NEW_TOKENS
          ) -> tuple[list[Verdict], ProfileResult]:
    """Measure (this host) or predict (any other profile) ``onnx_path`` and judge it against ``budget``; a decoder
    LLM's latency is its prefill of ``seq_len`` tokens, followed by ``new_tokens`` decode steps."""
    result = measure_or_predict(onnx_path, device, threads=threads, batch=batch, seq_len=seq_len, runs=runs,
                                memory=budget.memory_mb is not None, new_tokens=new_tokens)
    return verdicts(result, budget), result


def passed(lines: list[Verdict]) -> bool:
    return all(line.status == PASS for line in lines)


JUNIT_HEADER = '<?xml version="1.0" encoding="utf-8"?>'


def junit_xml(lines: list[Verdict], suite: str = "edgeprune.check") -> str:
    """JUnit XML with one test case per budget line, for CI systems that render test reports."""
    return "\n".join([JUNIT_HEADER, junit_suite(lines, suite)]) + "\n"


def junit_suite(lines: list[Verdict], suite: str) -> str:
    """One ``<testsuite>`` element (no XML header): a test case per budget line, failed unless it PASSes."""
    failures = sum(line.status != PASS for line in lines)
    cases = []
    for line in lines:
        name = quoteattr(f"{line.profile}.{line.metric}")
        band = f" (predicted {line.low:.3f}-{line.high:.3f})" if line.predicted else ""
        text = f"{line.status}: {line.metric} = {line.value:.3f} {line.unit}{band}, budget {line.budget:g} {line.unit}"
        text += f" ({line.reason})" if line.reason else ""
        body = "" if line.status == PASS else f"<failure message={quoteattr(text)}/>"
        cases.append(f'  <testcase classname={quoteattr(suite)} name={name}>{body}</testcase>')
    header = f'<testsuite name={quoteattr(suite)} tests="{len(lines)}" failures="{failures}">'
    return "\n".join([header, *cases, "</testsuite>"])
