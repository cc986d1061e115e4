"""Turn importance scores into kept indices per layer under a size target."""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable

import torch

from edgeprune.errors import PlanError
from edgeprune.models.plan import LayerPlan
from edgeprune.pruning.importance import LayerScores


def top_indices(scores: torch.Tensor, keep: int) -> tuple[int, ...]:
    """The ``keep`` highest-scoring indices, sorted; ties go to the lower index so results are deterministic."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return tuple(sorted(order[:keep]))


def kept_count(total: int, ratio: float) -> int:
    """Units kept at ``ratio``: rounded to nearest, at least one (an empty layer breaks forward)."""
    return max(1, min(total, math.floor(total * ratio + 0.5)))


def uniform(scores: list[LayerScores], heads_ratio: float, ffn_ratio: float) -> tuple[LayerPlan, ...]:
    """Keep the same fraction of heads and of FFN neurons in every layer, by score."""
    for name, ratio in (("heads ratio", heads_ratio), ("FFN ratio", ffn_ratio)):
        if not 0.0 < ratio <= 1.0:
            raise PlanError(f"{name} {ratio} is outside (0, 1]", "pass a fraction of units to keep, e.g. 0.5")
    return tuple(
        LayerPlan(
            heads=top_indices(layer.heads, kept_count(len(layer.heads), heads_ratio)),
            neurons=top_indices(layer.neurons, kept_count(len(layer.neurons), ffn_ratio)),
        )
        for layer in scores
    )


MIN_LAYER_SHARE = 0.1
"""Global allocation leaves every layer at least this share of its units of each kind (and one): a layer emptied
by a global ranking breaks the residual stream's statistics the next layers were trained on (FLAP)."""


def standardized(scores: list[LayerScores]) -> list[LayerScores]:
    """Scores as z-scores within each layer's heads and within its neurons (FLAP), for criteria whose raw values
    are not comparable across layers and unit kinds (magnitude, activation, fluctuation)."""
    def z(values: torch.Tensor) -> torch.Tensor:
        spread = values.std() if len(values) > 1 else values.new_tensor(0.0)
        return (values - values.mean()) / (spread if spread > 0 else 1.0)
    return [LayerScores(z(s.heads.double()), z(s.neurons.double())) for s in scores]


def global_by_cost(scores: list[LayerScores], head_macs: float, neuron_macs: float, keep_fraction: float, *,
                   standardize: bool = False, uniform_heads: bool = False) -> tuple[LayerPlan, ...]:
    """Rank every head and neuron of the model together and keep the best within budget.

    The budget is ``keep_fraction`` of the dense encoder's MACs. Each layer first keeps its best
    ``MIN_LAYER_SHARE`` of heads and of neurons (at least one); then units are taken in order of
    importance per MAC while they fit, as in Kwon et al. (2022) — scores must then be comparable
    across layers (Fisher or Taylor are) — or, with ``standardize``, in order of their z-score within
    their layer and kind, as in FLAP. ``uniform_heads`` keeps the same number of attention units in
    every layer (``keep_fraction`` of them, by score): a decoder's key/value cache is exported with
    one head count for all layers; the neurons share what is left of the budget.
    """
    if not 0.0 < keep_fraction <= 1.0:
        raise PlanError(f"FLOPs fraction {keep_fraction} is outside (0, 1]", "pass e.g. --keep-flops 0.5")
    budget = keep_fraction * sum(len(s.heads) * head_macs + len(s.neurons) * neuron_macs for s in scores)
    ranked = standardized(scores) if standardize else scores

    def least(total: int) -> int:
        return max(1, math.floor(total * MIN_LAYER_SHARE))

    kept = [(set(top_indices(s.heads, kept_count(len(s.heads), keep_fraction) if uniform_heads
                             else least(len(s.heads)))),
             set(top_indices(s.neurons, least(len(s.neurons)))))
            for s in ranked]
    spent = sum(len(h) * head_macs + len(n) * neuron_macs for h, n in kept)
    kinds = ((1, neuron_macs),) if uniform_heads else ((0, head_macs), (1, neuron_macs))
    units = [(float(values[index]) / (1.0 if standardize else cost), layer, kind, index, cost)
             for layer, s in enumerate(ranked)
             for kind, cost in kinds
             for values in ((s.heads, s.neurons)[kind],)
             for index in range(len(values))]
    units.sort(key=lambda u: (-u[0], u[1], u[2], u[3]))
    for _, layer, kind, index, cost in units:
        if index in kept[layer][kind]:
            continue
        if spent + cost <= budget:
            kept[layer][kind].add(index)
            spent += cost
    return tuple(LayerPlan(heads=tuple(sorted(h)), neurons=tuple(sorted(n))) for h, n in kept)


def by_latency(scores: list[LayerScores], head_ms: Callable[[int], float], neuron_ms: Callable[[int], float],
               budget_ms: float) -> tuple[LayerPlan, ...]:
    """Keep the most important heads and neurons whose summed per-layer latency fits ``budget_ms``.

    ``head_ms(k)`` / ``neuron_ms(k)`` is one layer's attention / FFN latency with ``k`` units
    (non-decreasing, e.g. a measured piecewise-linear table). Each layer keeps its best head and
    best neuron, whose cost is not counted against the budget. Then, in every layer, the next-best
    unit costs the latency step it adds; units of all layers are taken by score per millisecond,
    as in Kwon et al. (2022), so a unit in a flat stretch of its table (no latency saved by
    removing it) is always kept. A unit that does not fit closes its layer's stream: the ones
    after it score less. Scores must be comparable across layers and unit kinds (Fisher, Taylor).
    """
    streams = []
    for layer, s in enumerate(scores):
        for kind, values, cost in ((0, s.heads, head_ms), (1, s.neurons, neuron_ms)):
            order = sorted(range(len(values)), key=lambda i: (-float(values[i]), i))
            streams.append((layer, kind, [(float(values[i]), i) for i in order], cost))
    kept: list[tuple[set[int], set[int]]] = [(set(), set()) for _ in scores]
    frontier = []
    for stream_id, (layer, kind, units, _) in enumerate(streams):
        kept[layer][kind].add(units[0][1])
        if len(units) > 1:
            heapq.heappush(frontier, _priority(streams[stream_id], 1) + (stream_id,))
    spent = 0.0
    while frontier:
        _, _, step, position, stream_id = heapq.heappop(frontier)
        layer, kind, units, _ = streams[stream_id]
        if spent + step > budget_ms:
            continue
        spent += step
        kept[layer][kind].add(units[position][1])
        if position + 1 < len(units):
            heapq.heappush(frontier, _priority(streams[stream_id], position + 1) + (stream_id,))
    return tuple(LayerPlan(heads=tuple(sorted(h)), neurons=tuple(sorted(n))) for h, n in kept)


def _priority(stream: tuple[int, int, list[tuple[float, int]], Callable[[int], float]],
              position: int) -> tuple[float, int, float, int]:
    """Heap key of a stream's unit at ``position`` (it makes ``position + 1`` units): score per ms, free first."""
    layer, _, units, cost = stream
    step = max(0.0, cost(position + 1) - cost(position))
    per_ms = math.inf if step == 0 else units[position][0] / step
    return (-per_ms, layer, step, position)
