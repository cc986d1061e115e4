"""Measuring a CNN's ``ChannelLatencyTable`` on this host's runtime.

For every channel space and every fraction of ``CHANNEL_GRID``, the dense model with only that
space cut (to a count rounded to the ISA's multiple) is exported and timed in fp32, all of them
side by side with the dense model in interleaved rounds, so a slow stretch of the host hits
every point alike. Which channels are cut does not change latency, so the first ones are kept.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from edgeprune.exporting import export_module
from edgeprune.models.conv import ChannelGraph, slice_channels
from edgeprune.profiling.measure import compare_latency
from edgeprune.pruning.channel_latency import ChannelLatencyTable
from edgeprune.pruning.channels import rounded_count

DENSE_FILE = "dense.onnx"
"""The dense model's export in a table's folder, which ``pruned_timer`` times allocations beside."""
CHANNEL_GRID = (0.5, 0.25)
"""Fractions of a space's channels in the table, besides the dense count."""

Tick = Callable[[int, int], None]


def measure_channel_table(model: nn.Module, example: torch.Tensor, graph: ChannelGraph, work: Path | str, *,
                          multiple: int = 1, threads: int = 1, runs: int = 20, rounds: int = 3,
                          percentile: str = "p50", grid: tuple[float, ...] = CHANNEL_GRID,
                          tick: Tick | None = None) -> ChannelLatencyTable:
    """Export and time the dense model and each space cut to each ``grid`` fraction (``work`` must not exist:
    the ONNX files are written there)."""
    work = Path(work)
    work.mkdir(parents=True)
    points: list[tuple[str, int]] = []
    for space in graph.spaces:
        size = len(space.units)
        for count in sorted({rounded_count(size * f, size, multiple) for f in grid}):
            if count < size:
                points.append((space.name, count))
    paths = [export_module(model, work / DENSE_FILE, example).onnx_path]
    units = {space.name: torch.tensor(space.units) for space in graph.spaces}
    for i, (name, count) in enumerate(points):
        keep = torch.ones(graph.num_units, dtype=torch.bool)
        keep[units[name][count:]] = False
        paths.append(_export_cut(model, graph, keep, work / f"point-{i}.onnx", example))
        if tick is not None:
            tick(i + 1, len(points))
    stats = compare_latency(paths, threads=threads, rounds=rounds, runs=runs)
    timed = [s.percentile(percentile) for s in stats]
    spaces: dict[str, list[tuple[int, float]]] = {s.name: [(len(s.units), timed[0])] for s in graph.spaces}
    for (name, count), ms in zip(points, timed[1:]):
        spaces[name].append((count, ms))
    return ChannelLatencyTable(dense_ms=timed[0], spaces={k: tuple(sorted(v)) for k, v in spaces.items()})


def pruned_timer(model: nn.Module, example: torch.Tensor, graph: ChannelGraph, table: ChannelLatencyTable,
                 work: Path | str, *, threads: int = 1, runs: int = 20, rounds: int = 3,
                 percentile: str = "p50") -> Callable[[torch.Tensor], float]:
    """A kept-units mask → ``model`` sliced to it, exported into ``work`` (the folder ``measure_channel_table``
    measured ``table`` into) and timed side by side with the dense model exported there, in ms on the table's scale
    (its share of the dense time that run, times the table's dense ms, so the host's drift since the table does not
    count): what ``allocate_measured`` checks allocations with."""
    work = Path(work)
    dense = work / DENSE_FILE
    calls = 0

    def time_keep(keep: torch.Tensor) -> float:
        nonlocal calls
        calls += 1
        path = _export_cut(model, graph, keep, work / f"timer-{calls}.onnx", example)
        base, pruned = (s.percentile(percentile) for s in compare_latency([dense, path], threads=threads,
                                                                           rounds=rounds, runs=runs))
        return pruned / base * table.dense_ms

    return time_keep


def _export_cut(model: nn.Module, graph: ChannelGraph, keep: torch.Tensor, path: Path, example: torch.Tensor) -> Path:
    """A copy of ``model`` with only the ``keep`` units, exported (parity-checked) to ``path``."""
    return export_module(slice_channels(copy.deepcopy(model), graph, keep).eval(), path, example).onnx_path
