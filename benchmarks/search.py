"""Budgeted search on all-MiniLM-L6-v2: `edgeprune optimize --latency-ms X` for budgets of 70%, 50%, 40% and
30% of the dense fp32 p90 latency on this host (1 thread, batch 1, seq 128), next to the best single fixed setting
for the same budget: int8 only, or uniform pruning + int8 at the least pruning (of kept-MAC fractions 0.9 … 0.4,
each with optimize's default Fisher scoring and least-squares recovery) whose p90 meets the budget.

Prints per budget: the chosen configuration, its measured p90 latency, STS-B dev Spearman, and the wall time of
the whole optimize run (search, measurement, report); then the 40% budget at 2 threads. Every optimize run is
the CLI's own pipeline (`edgeprune.optimize`); the fixed settings are timed side by side with the dense model.

    python benchmarks/search.py [--budgets 0.7 0.5 0.4 0.3] [--json search.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from edgeprune import evaluate
from edgeprune.exporting import export
from edgeprune.models.loading import load_model
from edgeprune.pipeline import OptimizeSettings, optimize
from edgeprune.profiling import compare_latency
from edgeprune.pruning.loaded import prune_loaded
from edgeprune.quantization import quantize

STSB = Path(__file__).resolve().parents[2] / "shared" / "data" / "stsb" / "sts-dev.csv"
UNIFORM_KEEPS = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4)


def fixed_models(work: Path) -> dict[str, tuple[Path, float]]:
    """Dense fp32, int8 only, and uniform pruning + int8 at each kept fraction: ONNX path and STS-B."""
    dense = load_model(None)
    dense_onnx = export(dense, work / "dense").onnx_path
    paths = {"dense fp32": dense_onnx, "int8 only": quantize(dense_onnx, work / "dense-int8").onnx_path}
    for keep in UNIFORM_KEEPS:
        pruned = prune_loaded(dense, keep_flops=keep)
        paths[f"uniform keep {keep:.1f} + int8"] = quantize(export(pruned, work / f"pruned-{keep}").onnx_path,
                                                             work / f"pruned-{keep}-int8").onnx_path
    return {name: (path, evaluate.stsb_spearman(evaluate.onnx_encoder(path, dense.processor, dense.pooling), STSB))
            for name, path in paths.items()}


def timed(models: dict[str, tuple[Path, float]], threads: int) -> dict[str, dict]:
    """p90 of every fixed model, side by side, with its STS-B."""
    stats = compare_latency([path for path, _ in models.values()], threads, rounds=4, runs=25)
    return {name: {"p90_ms": s.p90, "stsb": stsb} for (name, (_, stsb)), s in zip(models.items(), stats)}


def best_fixed(fixed: dict[str, dict], budget: float, kind: str) -> tuple[str, dict] | None:
    """The least-pruned fixed setting of ``kind`` (``int8`` or ``uniform``) that meets ``budget``."""
    meeting = [(name, f) for name, f in fixed.items() if kind in name and f["p90_ms"] <= budget]
    return meeting[0] if meeting else None


def searched(work: Path, budget: float, threads: int) -> dict:
    started = time.perf_counter()
    result = optimize(OptimizeSettings(latency_ms=budget, threads=threads, stsb=str(STSB), runs=100),
                      work / f"run-{threads}t-{budget:.3f}")
    seconds = time.perf_counter() - started
    search = result.manifest["stages"]["search"]
    shipped = result.rows[-1]
    return {"passed": result.passed, "keep_flops": search["chosen_keep_flops"],
            "precision": result.manifest["stages"]["quantize"]["chosen"],
            "kept_macs": result.manifest["stages"]["prune"]["kept_macs_fraction"],
            "p90_ms": shipped.measurement.latency_stats.p90, "stsb": shipped.stsb_spearman, "seconds": seconds,
            "builds": sum(not c["table"] for c in search["candidates"]), "advice": search["advice"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.7, 0.5, 0.4, 0.3])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        models = fixed_models(work / "fixed")
        for threads in (1, 2):
            fixed = timed(models, threads)
            dense_ms = fixed["dense fp32"]["p90_ms"]
            budgets = args.budgets if threads == 1 else [0.4]
            print(f"\n{threads} thread(s): dense fp32 p90 {dense_ms:.2f} ms, STS-B {fixed['dense fp32']['stsb']:.2f}")
            print("| budget | setting | p90 ms | meets | STS-B | wall s |")
            print("|---|---|---|---|---|---|")
            for fraction in budgets:
                budget = fraction * dense_ms
                found = searched(work, budget, threads)
                results[f"{threads}t-{fraction}"] = {"budget_ms": budget, "search": found, "fixed": fixed}
                print(f"| {fraction:.0%} = {budget:.2f} ms | search: keep {found['keep_flops']} {found['precision']} "
                      f"({found['builds']} built) | {found['p90_ms']:.2f} | {'yes' if found['passed'] else 'NO'} "
                      f"| {found['stsb']:.2f} | {found['seconds']:.0f} |")
                for kind in ("int8 only", "uniform"):
                    best = best_fixed(fixed, budget, kind)
                    if best is None:
                        fastest = min((f["p90_ms"], name) for name, f in fixed.items() if kind in name)
                        print(f"| | {kind}: none meets (fastest {fastest[1]}: {fastest[0]:.2f} ms) | | no | | |")
                    else:
                        print(f"| | {best[0]} | {best[1]['p90_ms']:.2f} | yes | {best[1]['stsb']:.2f} | |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
