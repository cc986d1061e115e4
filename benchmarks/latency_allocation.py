"""Latency-aware channel allocation on EfficientNet-Lite0: the latency table alone vs the table checked by timing.

The channel latency table (each space cut alone, timed here) prices an allocation by adding per-space savings.
For dense fp32 / 1.3 and / 1.6 (1 thread, batch 1, 224×224), the benchmark allocates magnitude scores per measured ms
by the table alone (``allocate_for_latency``) and by the table checked by timing each allocation whole
(``allocate_measured``, what ``edgeprune optimize --latency-ms`` does for image models), then times the dense model
and every allocation side by side in one run and prints the speedup asked, the table's prediction and the speedup
measured. Pruning only: no recovery, since accuracy is not what this measures (``benchmarks/cnn.py`` does).

    python benchmarks/latency_allocation.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from edgeprune.devices import detect_host
from edgeprune.exporting import export_module
from edgeprune.models.conv import channel_graph
from edgeprune.models.pretrained import efficientnet_lite0
from edgeprune.profiling.measure import compare_latency
from edgeprune.pruning.channel_latency import LatencyAllocation, allocate_for_latency, allocate_measured, kept_counts
from edgeprune.pruning.channels import channel_multiple, channel_scores, prune_channels
from edgeprune.search.channel_table import measure_channel_table, pruned_timer

LEVELS = (1.3, 1.6)


def main() -> None:
    started = time.perf_counter()
    host = detect_host()
    torch.manual_seed(0)
    model = efficientnet_lite0().eval()
    example = torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    graph = channel_graph(model, example[:1])
    multiple = channel_multiple(host.cpu.isa)
    scores = channel_scores(model, graph, "magnitude")
    print(f"EfficientNet-Lite0 on {host.cpu.name} ({', '.join(host.cpu.isa)}), channel multiple {multiple}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        table = measure_channel_table(model, example, graph, work / "table", multiple=multiple)
        print(f"latency table: {sum(len(p) - 1 for p in table.spaces.values())} points over {len(table.spaces)} "
              f"spaces, dense {table.dense_ms:.2f} ms [{time.perf_counter() - started:.0f} s]")
        timer = pruned_timer(model, example, graph, table, work / "table")
        masks, attempts, rule = {}, {}, LatencyAllocation(multiple, comparable=False)
        for level in LEVELS:
            budget = table.dense_ms / level
            masks[("table", level)] = allocate_for_latency(graph, scores, table, budget, rule)
            masks[("measured", level)], attempts[level] = allocate_measured(graph, scores, table, budget, timer, rule)
        paths = [export_module(model, work / "dense.onnx", example).onnx_path]
        for (how, level), keep in masks.items():
            pruned, _ = prune_channels(model, example[:1], keep=keep, multiple=multiple)
            paths.append(export_module(pruned, work / f"{how}-{level}.onnx", example).onnx_path)
        stats = compare_latency(paths, threads=1, rounds=5, runs=30)
    dense = stats[0].p50
    print(f"\n{'allocation':<10}{'asked':>7}{'table predicts':>16}{'measured':>10}{'kept units':>12}  attempts "
          f"(aim → measured ms)")
    for ((how, level), keep), s in zip(masks.items(), stats[1:]):
        predicted = table.predict(kept_counts(graph, keep))
        tried = ", ".join(f"{a.aim_ms:.2f} → {a.measured_ms:.2f}" for a in attempts[level]) if how == "measured" \
            else ""
        tried = f"  {tried}" if tried else ""
        print(f"{how:<10}{level:>6.1f}x{table.dense_ms / predicted:>15.2f}x{dense / s.p50:>9.2f}x"
              f"{int(keep.sum()):>7}/{graph.num_units:<5}{tried}")
    print(f"dense fp32 p50 {dense:.2f} ms (1 thread); wall time {(time.perf_counter() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
