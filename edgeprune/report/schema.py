"""The report's data: one pydantic model, so report.json is validated when written and can be checked when read
(``report.schema.json`` beside it is this model's JSON Schema)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelFigures(_Strict):
    name: str
    latency_ms: dict[str, float] = Field(description="p50/p90/p99/mean/std/min/max in ms, and runs")
    peak_memory_mb: float | None
    size_mb: float
    speedup: float = Field(description="dense fp32 p50 / this model's p50, measured side by side")
    cosine_fidelity: float | None
    stsb_spearman: float | None


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


class SearchCandidate(_Strict):
    keep_flops: float
    precision: str
    latency_ms: float
    fidelity: float
    stsb: float | None
    meets_budget: bool
    pareto: bool
    verdict: str
    table: bool
    low_ms: float | None
    high_ms: float | None


class SearchFigures(_Strict):
    budget_ms: float
    percentile: str
    device: str
    predicted: bool
    threads: int
    dense_fp32_ms: float
    table: list[dict[str, float]]
    candidates: list[SearchCandidate]
    passed: bool
    advice: str
    seconds: float
    notes: list[str]


class Report(_Strict):
    schema_version: int = SCHEMA_VERSION
    created: str
    model: str
    profile: str
    passed: bool
    settings: dict[str, Any]
    versions: dict[str, str]
    host: dict[str, Any]
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
    search: SearchFigures | None = None
