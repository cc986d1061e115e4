"""Per-layer latency of attention heads and FFN neurons on the target, as piecewise-linear functions.

Latency is piecewise linear in a layer's kept heads and neurons, with flat stretches where
pruning saves nothing (Kwon et al. 2022: kernels work in blocks, fixed costs stay). The table
measures that on the real runtime: the model with every layer cut to a grid of head counts
(neurons dense), and to a grid of neuron counts (heads dense), each in dynamic int8. All layers
have the same shape, so a layer's cost at ``k`` heads is the model's latency at ``k`` heads per
layer, relative to the smallest count, divided by the number of layers. Between grid points the
cost is interpolated linearly; it is made non-decreasing in the count, since noise can make a
larger layer time faster and a budget allocation must not believe that.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeprune.models.plan import LayerPlan

HEAD_GRID = (1.0, 0.75, 0.5, 0.25, 0.0)
"""Fractions of the heads kept per layer in the table (0 means one head: a layer needs one)."""
NEURON_GRID = (1.0, 0.75, 0.5, 0.25, 0.05)
"""Fractions of the FFN neurons kept per layer in the table."""


def grid_counts(total: int, fractions: tuple[float, ...]) -> list[int]:
    """Distinct unit counts for ``fractions`` of ``total`` (at least one), largest first."""
    return sorted({max(1, round(total * f)) for f in fractions}, reverse=True)


@dataclass(frozen=True)
class LatencyTable:
    """Whole-model latency (ms, at the budget's percentile) with every layer at a head count or a neuron count."""

    num_layers: int
    heads_ms: tuple[tuple[int, float], ...]
    """(heads per layer, model ms) with all neurons kept; the largest count is the dense model."""
    neurons_ms: tuple[tuple[int, float], ...]
    """(neurons per layer, model ms) with all heads kept."""

    def __post_init__(self) -> None:
        if not self.heads_ms or not self.neurons_ms:
            raise ValueError("a latency table needs at least one head count and one neuron count")

    @property
    def dense_ms(self) -> float:
        return max(self.heads_ms)[1]

    def head_cost(self, count: float) -> float:
        """One layer's attention cost in ms at ``count`` heads, 0 at the smallest measured count."""
        return _layer_cost(self.heads_ms, self.num_layers, count)

    def neuron_cost(self, count: float) -> float:
        """One layer's FFN cost in ms at ``count`` neurons, 0 at the smallest measured count."""
        return _layer_cost(self.neurons_ms, self.num_layers, count)

    @property
    def fixed_ms(self) -> float:
        """What no head or neuron pruning removes: embeddings, pooling, and every layer at its smallest counts."""
        heads, neurons = max(self.heads_ms)[0], max(self.neurons_ms)[0]
        return self.dense_ms - self.num_layers * (self.head_cost(heads) + self.neuron_cost(neurons))

    def predict(self, layers: tuple[LayerPlan, ...]) -> float:
        """Model latency in ms with these kept heads and neurons per layer (costs add across layers)."""
        return self.fixed_ms + sum(self.head_cost(len(p.heads)) + self.neuron_cost(len(p.neurons)) for p in layers)

    def to_dict(self) -> dict[str, list[dict[str, float]]]:
        return {"heads": [{"count": k, "model_ms": round(ms, 4)} for k, ms in self.heads_ms],
                "neurons": [{"count": k, "model_ms": round(ms, 4)} for k, ms in self.neurons_ms]}


def _layer_cost(points: tuple[tuple[int, float], ...], num_layers: int, count: float) -> float:
    counts, model_ms = zip(*sorted(points))
    monotone = np.maximum.accumulate(np.asarray(model_ms, dtype=np.float64))
    return float(np.interp(count, counts, monotone) - monotone[0]) / num_layers
