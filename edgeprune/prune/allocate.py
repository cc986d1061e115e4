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
