"""Turn a run's manifest (run.json) into the validated ``Report``."""

from __future__ import annotations

from typing import Any

from edgeprune.models.plan import PruningPlan
from edgeprune.report.schema import ModelFigures, Report, VerdictLine


def report_from(manifest: dict[str, Any], plan: PruningPlan) -> Report:
    stages = manifest["stages"]
    models = [ModelFigures(name=row["name"],
                           latency_ms={k: v for k, v in row["latency_ms"].items() if k != "stability"},
                           stability=row["latency_ms"].get("stability"),
                           peak_memory_mb=(row["memory_mb"] or {}).get("peak_over_baseline_mb"),
                           size_mb=row["size_mb"], speedup=row["speedup"], speedup_interval=row["speedup_interval"],
                           speedup_reliable=row["speedup_reliable"], cosine_fidelity=row["cosine_fidelity"],
                           stsb_spearman=row["stsb_spearman"],
                           decode_ms_per_token=(row.get("generation") or {}).get("decode_ms_per_token", {}).get("p50"),
                           tokens_per_s=(row.get("generation") or {}).get("tokens_per_s"))
              for row in manifest["models"]]
    return Report(
        created=manifest["created"], model=manifest["inputs"]["model"], profile=manifest["settings"]["profile"],
        passed=manifest["passed"], settings=manifest["settings"], versions=manifest["versions"],
        host=manifest["host"], host_health=manifest["host_health"], budget=manifest["budget"],
        verdicts=[VerdictLine(**line) for line in manifest["verdicts"]], models=models,
        kept_heads=plan.kept_heads, kept_neurons=plan.kept_neurons, dense_heads=plan.dense.num_heads,
        dense_neurons=plan.dense.ffn_dim, op_time_ms=stages["op_time_ms"],
        quantization={k: v for k, v in stages["quantize"].items() if k != "onnx_path"},
        search=stages.get("search"))
