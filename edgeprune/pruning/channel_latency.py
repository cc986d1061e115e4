"""Latency-aware channel allocation (HALP-style): keep the channels with the most importance per measured millisecond.

Global allocation by MACs does not follow latency: on EfficientNet-Lite0, Taylor-global needed
0.65 of the MACs for 1.3x where magnitude-uniform needed 0.75, because a depthwise block's MACs
are cheap but its memory traffic is not, and the head's 1×1 convolutions are the reverse. A
``ChannelLatencyTable`` holds what the target runtime actually takes: the whole model timed with
one channel space cut to a few counts and every other space dense (``search.channel_table``
measures it). A space's cost is piecewise linear in its kept count (non-decreasing: noise must
not make a larger layer look faster), and costs of different spaces add. Allocation then ranks
units by importance per millisecond their space saves per unit and keeps the most it can while
the table's prediction stays within the budget.

Costs do not quite add: on EfficientNet-Lite0, allocations the table priced at 1.3x and 1.6x
measured 1.10x and 1.12x once every space was cut at once on one host, and 1.52x and 1.62x on
another (AVX-512, where channels round to 16). ``allocate_measured`` closes the loop: it times
each allocation whole and re-aims the table by how far the measurement landed from the
budget, over it or well under it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from edgeprune.errors import PlanError
from edgeprune.models.conv import ChannelGraph
from edgeprune.pruning.channels import keep_per_space


@dataclass(frozen=True)
class ChannelLatencyTable:
    """Model latency (ms) with one space cut to a count and all others dense."""

    dense_ms: float
    spaces: dict[str, tuple[tuple[int, float], ...]]
    """Per space, (kept channels, model ms); the dense count (with ``dense_ms``) is one of the points."""

    def cost(self, space: str, count: float) -> float:
        """What ``space`` costs at ``count`` kept units above its smallest measured count, in ms."""
        counts, model_ms = zip(*sorted(self.spaces[space]))
        monotone = np.maximum.accumulate(np.asarray(model_ms, dtype=np.float64))
        return float(np.interp(count, counts, monotone) - monotone[0])

    def predict(self, counts: dict[str, int]) -> float:
        """Model latency in ms with ``counts`` kept units per space (spaces not named stay dense)."""
        saved = sum(self.cost(name, max(c for c, _ in points)) - self.cost(name, counts.get(name, max(points)[0]))
                    for name, points in self.spaces.items())
        return self.dense_ms - saved

    def ms_per_unit(self, space: str) -> float:
        """The average ms one unit of ``space`` costs over its measured range (a floor of 1e-6 ms)."""
        counts = [c for c, _ in self.spaces[space]]
        span = max(counts) - min(counts)
        return max(1e-6, self.cost(space, max(counts)) / span) if span else 1e-6

    def to_dict(self) -> dict[str, object]:
        return {"dense_ms": round(self.dense_ms, 4),
                "spaces": {name: [{"count": c, "model_ms": round(ms, 4)} for c, ms in points]
                           for name, points in self.spaces.items()}}


def kept_counts(graph: ChannelGraph, keep: torch.Tensor) -> dict[str, int]:
    """Units kept per channel space: what ``ChannelLatencyTable.predict`` prices."""
    return {s.name: int(keep[list(s.units)].sum()) for s in graph.spaces}


def allocate_for_latency(graph: ChannelGraph, scores: torch.Tensor, table: ChannelLatencyTable, budget_ms: float,
                         multiple: int = 1, comparable: bool = True) -> torch.Tensor:
    """The most units (a bool per unit of ``graph``) ranked by score per ms whose table prediction is at most
    ``budget_ms``, every space rounded up to ``multiple`` channels (at least one multiple).

    ``comparable``: the scores estimate one loss across spaces (Taylor, Fisher). Otherwise (weight norms) each
    space's scores are divided by their mean first, so a unit is judged against its own layer.
    """
    priority = scores.clone().float()
    for space in graph.spaces:
        units = torch.tensor(space.units)
        if not comparable:
            priority[units] = priority[units] / priority[units].mean().clamp(min=1e-12)
        if space.name in table.spaces:
            priority[units] = priority[units] / table.ms_per_unit(space.name)
        else:  # a space the table did not time saves nothing measurable: never prefer cutting it
            priority[units] = math.inf
    order = torch.argsort(-priority, stable=True)

    def keep_top(k: int) -> tuple[torch.Tensor, float]:
        chosen = torch.zeros(graph.num_units, dtype=torch.bool)
        chosen[order[:k]] = True
        # rounding up adds the units with the most importance per ms that the ranking left out
        keep = keep_per_space(graph, lambda units: int(chosen[units].sum()), priority - (~chosen).float() * 1e30,
                              multiple)
        return keep, table.predict(kept_counts(graph, keep))

    keep, ms = keep_top(0)
    if ms > budget_ms:
        raise PlanError(f"{budget_ms:.3f} ms is below what the latency table predicts with every channel space at its "
                        f"floor of {multiple} channel(s) ({ms:.3f} ms)", "raise the latency budget")
    low, high = 0, graph.num_units  # the most units whose prediction is within the budget (monotone in k)
    while low < high:
        middle = (low + high + 1) // 2
        if keep_top(middle)[1] <= budget_ms:
            low = middle
        else:
            high = middle - 1
    return keep_top(low)[0]


MEASURED_ATTEMPTS = 4
"""Allocations timed whole at most: the table's aim is corrected after each."""
CLOSE_ENOUGH = 0.95
"""An allocation measured between this share of the budget and the budget is kept without trying for more."""


@dataclass(frozen=True)
class Attempt:
    """One allocation timed whole: what the table was asked for, what it predicted, what was measured."""

    aim_ms: float
    predicted_ms: float
    measured_ms: float
    kept_units: int

    def to_dict(self) -> dict[str, float]:
        return {"aim_ms": round(self.aim_ms, 4), "predicted_ms": round(self.predicted_ms, 4),
                "measured_ms": round(self.measured_ms, 4), "kept_units": self.kept_units}


def allocate_measured(graph: ChannelGraph, scores: torch.Tensor, table: ChannelLatencyTable, budget_ms: float,
                      time_keep: Callable[[torch.Tensor], float], multiple: int = 1, comparable: bool = True,
                      attempts: int = MEASURED_ATTEMPTS) -> tuple[torch.Tensor, list[Attempt]]:
    """``allocate_for_latency`` checked by ``time_keep`` (a kept-units mask → the pruned model's measured ms, on the
    table's scale). The table's aim is scaled by budget / measured after each timing, both ways: down when the model
    was over the budget, up when it was well under (channel rounding and costs that do not add can leave a third of
    the budget unused, and every unit cut costs quality). Returns, of the allocations measured within the budget,
    the one keeping the most units, else the last one timed (the budget check that follows says it missed), and
    every attempt."""
    aim, tried, fits = budget_ms, [], []
    keep = allocate_for_latency(graph, scores, table, aim, multiple, comparable)
    for attempt in range(attempts):
        measured = time_keep(keep)
        tried.append(Attempt(aim, table.predict(kept_counts(graph, keep)), measured, int(keep.sum())))
        if measured <= budget_ms:
            fits.append(keep)
            if measured >= CLOSE_ENOUGH * budget_ms:
                break
        if attempt == attempts - 1:
            break
        aim *= budget_ms / measured
        try:
            keep = allocate_for_latency(graph, scores, table, aim, multiple, comparable)
        except PlanError:  # the corrected aim is below every space's floor: what was timed is what there is
            break
        if any(torch.equal(keep, earlier) for earlier in fits):  # the aim moved too little to change anything
            break
    return (max(fits, key=lambda k: int(k.sum())) if fits else keep), tried
