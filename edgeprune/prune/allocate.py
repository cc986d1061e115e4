"""Turn importance scores into kept indices per layer under a size target."""

from __future__ import annotations

import math

import torch

from edgeprune.errors import PlanError
from edgeprune.prune.importance import LayerScores
from edgeprune.prune.plan import LayerPlan


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


def global_by_cost(scores: list[LayerScores], head_macs: float, neuron_macs: float,
                   keep_fraction: float) -> tuple[LayerPlan, ...]:
    """Rank every head and neuron of the model together by score per MAC and keep the best within budget.

    The budget is ``keep_fraction`` of the dense encoder's MACs. Each layer first keeps its
    best head and best neuron (an empty layer breaks forward); then units are taken in order
    of importance per MAC while they fit, as in Kwon et al. (2022). Scores must be comparable
    across layers (Fisher or Taylor are; magnitude roughly is).
    """
    if not 0.0 < keep_fraction <= 1.0:
        raise PlanError(f"FLOPs fraction {keep_fraction} is outside (0, 1]", "pass e.g. --keep-flops 0.5")
    budget = keep_fraction * sum(len(s.heads) * head_macs + len(s.neurons) * neuron_macs for s in scores)
    kept: list[tuple[set[int], set[int]]] = [({top_indices(s.heads, 1)[0]}, {top_indices(s.neurons, 1)[0]})
                                              for s in scores]
    spent = len(scores) * (head_macs + neuron_macs)
    units = [(float(score) / cost, layer, kind, index, cost)
             for layer, s in enumerate(scores)
             for kind, values, cost in ((0, s.heads, head_macs), (1, s.neurons, neuron_macs))
             for index, score in enumerate(values)]
    units.sort(key=lambda u: (-u[0], u[1], u[2], u[3]))
    for _, layer, kind, index, cost in units:
        if index in kept[layer][kind]:
            continue
        if spent + cost <= budget:
            kept[layer][kind].add(index)
            spent += cost
    return tuple(LayerPlan(heads=tuple(sorted(h)), neurons=tuple(sorted(n))) for h, n in kept)
