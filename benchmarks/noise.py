"""Verdicts under noise: dense fp32 vs pruned int8 all-MiniLM-L6-v2, quiet and beside 1 and 2 busy processes.

The budget is what the demo derives — the dense fp32 p90 over a required speedup — taken once
from the quiet measurement (a fixed budget) and again from each condition's own dense
measurement (a derived one). For each condition the table shows the host's health verdict, medians, CV and p90/p50,
the speedup with its bootstrap interval, the time spent re-measuring, and the verdict a naive
gate would give (PASS/FAIL on the figure) beside edgeprune's (UNCERTAIN when the timing cannot
be trusted). Run it on an otherwise idle machine: it makes its own noise.

    python benchmarks/noise.py [--threads 1] [--runs 100] [--min-speedup 1.5]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edgeprune.budgets import Budget, judge, verdicts
from edgeprune.exporting import export
from edgeprune.models.loading import load_model
from edgeprune.profiling import Measurement, check_health, compare_latency, speedup_interval
from edgeprune.profiling.measure import LatencyStats
from edgeprune.provenance import host_fingerprint
from edgeprune.pruning.loaded import prune_loaded
from edgeprune.quantization import quantize


def models(work: Path) -> tuple[Path, Path]:
    dense = load_model(None)
    dense_onnx = export(dense, work / "dense").onnx_path
    pruned = prune_loaded(dense, keep_flops=2 / 3)
    pruned_onnx = export(pruned, work / "pruned").onnx_path
    return dense_onnx, quantize(pruned_onnx, work / "int8", runs=20).onnx_path


def measured(path: Path, stats: LatencyStats, threads: int, state: object) -> Measurement:
    return Measurement(model=path.name, profile="host", size_mb=0.0, threads=threads, batch=1, seq_len=128,
                       latency_stats=stats, memory_stats=None, health=state)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=100, help="timed runs per model, over 4 interleaved rounds")
    parser.add_argument("--min-speedup", type=float, default=1.5, help="budget = dense fp32 p90 / this")
    args = parser.parse_args()
    print(f"cpu: {host_fingerprint()['cpu']}; {args.threads} thread(s), seq 128, batch 1")
    with tempfile.TemporaryDirectory() as tmp:
        dense_onnx, pruned_onnx = models(Path(tmp))
        fixed: Budget | None = None
        header = (f"{'condition':<10}{'host':>10}{'dense p50':>10}{'CV':>6}{'pruned p50':>11}{'CV':>6}{'p90/p50':>8}"
                  f"{'speedup (95%)':>22}{'remeasure s':>12}{'naive':>7}{'fixed budget':>14}{'derived':>11}")
        rows = []
        for busy in (0, 1, 2):
            procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
            try:
                time.sleep(0.5 if busy else 0)
                state = check_health()
                start = time.perf_counter()
                dense, pruned = compare_latency([dense_onnx, pruned_onnx], args.threads, rounds=4,
                                                 runs=args.runs // 4)
                wall = time.perf_counter() - start
            finally:
                for p in procs:
                    p.kill()
                    p.wait()
            fixed = fixed or Budget(latency_ms=dense.p90 / args.min_speedup)
            shipped = measured(pruned_onnx, pruned, args.threads, state)
            dense_m = measured(dense_onnx, dense, args.threads, state)
            derived = Budget(latency_ms=dense.p90 / args.min_speedup)
            doubt = ["derived from an untrustworthy dense p90"] if dense_m.timing_doubts else []
            naive = judge(fixed.latency_ms, pruned.p90, pruned.p90)
            low, high = speedup_interval(dense, pruned)
            s = pruned.stability
            rows.append(f"{['quiet', '1 busy', '2 busy'][busy]:<10}{state.verdict:>10}{dense.p50:>10.2f}"
                        f"{dense.stability.cv:>6.0%}{pruned.p50:>11.2f}{s.cv:>6.0%}{s.tail:>8.2f}"
                        f"{f'{dense.p50 / pruned.p50:.2f}x ({low:.2f}-{high:.2f})':>22}{s.remeasure_s:>12.1f}"
                        f"{naive:>7}{verdicts(shipped, fixed)[0].status:>14}"
                        f"{verdicts(shipped, derived, doubt)[0].status:>11}")
            reasons = sorted({*shipped.timing_doubts, *dense_m.timing_doubts})
            rows.append(f"{'':<10}wall {wall:.1f} s; " + ("; ".join(reasons) if reasons else "no doubts"))
        print(f"fixed budget: {fixed.latency_ms:.2f} ms p90 (the quiet dense p90 / {args.min_speedup:g})")
        print(header)
        print("\n".join(rows))


if __name__ == "__main__":
    main()
