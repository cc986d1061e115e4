"""End-to-end figures on all-MiniLM-L6-v2: dense fp32 vs pruned fp32 vs pruned int8.

Runs the same `optimize` as `edgeprune optimize` (1 thread, seq 128, batch 1, timed with
the three models interleaved), then times the three again at 2 threads over 5 alternating
sessions (2-thread timings on small VMs are bimodal across sessions, so one session is not
enough). Prints one table; pass --keep-flops to try another pruning level.

    python benchmarks/minilm_e2e.py [--keep-flops 0.667] [--stsb ../shared/data/stsb/sts-dev.csv]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from edgeprune.pipeline import DEFAULT_KEEP_FLOPS, OptimizeSettings, optimize
from edgeprune.profiling import compare_latency

STSB = Path(__file__).resolve().parents[2] / "shared" / "data" / "stsb" / "sts-dev.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep-flops", type=float, default=DEFAULT_KEEP_FLOPS)
    parser.add_argument("--stsb", type=Path, default=STSB)
    parser.add_argument("--runs", type=int, default=200, help="1-thread timed runs per model")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        start = time.perf_counter()
        result = optimize(OptimizeSettings(keep_flops=args.keep_flops, threads=1, runs=args.runs,
                                           stsb=str(args.stsb)), out)
        wall = time.perf_counter() - start
        paths = [out / row.measurement.model for row in result.rows]
        two = compare_latency(paths, threads=2, rounds=5, runs=60)

    base1 = result.rows[0].measurement.latency_stats.p50
    base2 = two[0].p50
    header = (f"{'model':<14}{'p50 1T ms':>10}{'speedup 1T':>11}{'p50 2T ms':>10}{'speedup 2T':>11}"
              f"{'size MB':>9}{'peak MiB':>9}{'cosine':>8}{'STS-B':>7}")
    print(f"all-MiniLM-L6-v2, batch 1, seq 128; keep {args.keep_flops:.3f} of encoder FLOPs; "
          f"kept heads {result.manifest['stages']['prune']['kept_heads']}, "
          f"neurons {result.manifest['stages']['prune']['kept_neurons']}")
    print(header)
    print("-" * len(header))
    for row, lat2 in zip(result.rows, two):
        m = row.measurement
        print(f"{row.name:<14}{m.latency_stats.p50:>10.2f}{base1 / m.latency_stats.p50:>10.2f}x{lat2.p50:>10.2f}"
              f"{base2 / lat2.p50:>10.2f}x{m.size_mb:>9.1f}{m.memory_stats.peak_over_baseline_mb:>9.0f}"
              f"{row.fidelity:>8.4f}{row.stsb_spearman:>7.2f}")
    print(f"2-thread p50 per session (5 alternating sessions x 60 runs), final model: "
          f"{[round(float(np.median(two[-1].samples_ms[i:i + 60])), 2) for i in range(0, 300, 60)]}")
    print(f"quantize decision (1-thread p50 ms): {result.manifest['stages']['quantize']['p50_ms_1_thread']}")
    print(f"optimize wall time: {wall:.1f} s (includes dense export and STS-B on 3 models)")
    print(f"budget verdict: {[(v.metric, round(v.value, 2), round(v.budget, 2), v.status) for v in result.verdicts]}")


if __name__ == "__main__":
    main()
