"""The report's data: one pydantic model, so report.json is validated when written and can be checked when read
(``report.schema.json`` beside it is this model's JSON Schema)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from edgeprune.search import SearchSummary

SCHEMA_VERSION = 2


class _Strict(BaseModel):
    # extra="forbid" also applies to the search dataclasses nested in Report; the written JSON Schema
    # describes report.json as written, where every field is present
    model_config = ConfigDict(extra="forbid", json_schema_serialization_defaults_required=True)


class ModelFigures(_Strict):
    name: str
    latency_ms: dict[str, float] = Field(description="p50/p90/p99/mean/std/min/max in ms, and runs")
    peak_memory_mb: float | None
    size_mb: float
    speedup: float = Field(description="dense fp32 p50 / this model's p50, measured side by side")
    speedup_interval: list[float] | None = Field(
        description="95% bootstrap interval of the speedup over the interleaved rounds (none for the dense model)")
    speedup_reliable: bool = Field(description="false when a measurement behind the speedup was unstable")
    stability: dict[str, Any] | None = Field(
        description="spread (CV, p90/p50), rounds kept and re-measured, CPU sharing while timing, reasons")
    cosine_fidelity: float | None
    stsb_spearman: float | None
    decode_ms_per_token: float | None = Field(
        description="decoders: p50 ms per generated token, timed side by side (none for encoders)")
    tokens_per_s: float | None = Field(description="decoders: 1000 / decode_ms_per_token")


    def speedup_text(self) -> str:
        return speedup_text(self.speedup, self.speedup_interval, self.speedup_reliable)


def fmt(value: float | None, spec: str) -> str:
    """A figure for a table cell; a dash when there is none."""
    return "–" if value is None else format(value, spec)


def speedup_text(speedup: float, interval: Sequence[float] | None, reliable: bool) -> str:
    """``2.91x (2.80-3.02)``: the interval when there is one, flagged when the measurements behind it were
    unstable."""
    if interval is None:
        return f"{speedup:.2f}x"
    low, high = interval
    return f"{speedup:.2f}x ({low:.2f}-{high:.2f}{'' if reliable else ', unreliable'})"


class VerdictLine(_Strict):
    metric: str
    budget: float
    value: float
    unit: str
    status: str = Field(pattern="^(PASS|FAIL|UNCERTAIN)$")
    profile: str
    low: float | None = None
    high: float | None = None
    margin: float = Field(description="headroom as a fraction of the budget (negative when over)")
    predicted: bool
    reason: str | None = Field(default=None, description="why an UNCERTAIN line is uncertain")
    higher_is_better: bool = Field(default=False, description="a floor (tokens/s) rather than a ceiling")


def health_text(health: dict[str, Any]) -> str:
    """One line on the host's state before timing, for the reports."""
    reasons = "; ".join(health["reasons"])
    return f"host {health['verdict']} before timing" + (f": {reasons}" if reasons else "")


class Report(_Strict):
    schema_version: int = SCHEMA_VERSION
    created: str
    model: str
    profile: str
    passed: bool
    settings: dict[str, Any]
    versions: dict[str, str]
    host: dict[str, Any]
    host_health: dict[str, Any] = Field(description="the host's state before timing: quiet, noisy or throttled")
    budget: dict[str, Any]
    verdicts: list[VerdictLine]
    models: list[ModelFigures]
    kept_heads: list[int]
    kept_neurons: list[int]
    dense_heads: int
    dense_neurons: int
    op_time_ms: dict[str, dict[str, float]] = Field(
        description="per operator type: summed kernel time (ms, 1 thread) of the dense fp32 and the shipped model")
    quantization: dict[str, Any]
    search: SearchSummary | None = None
    """The budgeted search, when the run searched (its dataclasses validate under this model's strict config)."""
