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


MIN_SHARE = 0.25
"""The share of every channel space's units a latency allocation keeps whatever the ranking says, so that no layer
is emptied because its channels cost many ms. Chosen on EfficientNet-Lite0's 84 calibration images (Fisher scores
per ms, BatchNorm re-estimated, judged on those images): at 1.6x a floor of 0.25 kept 0.155 top-1 agreement where
none kept 0.060 (0.643 and 0.667 at 1.3x); a floor of 0.5 forces cuts into layers that cannot lose them (0.18 at
1.3x)."""
UNIFORM_STEPS = 1000
"""Resolution of the shared kept share when scores do not compare across spaces."""


@dataclass(frozen=True)
class LatencyAllocation:
    """How units are ranked and rounded when allocating for a latency budget."""

    multiple: int = 1
    """Every space keeps a multiple of this many channels (at least one multiple)."""
    comparable: bool = True
    """The scores estimate one loss across spaces (Taylor, Fisher) and rank units by importance per ms. Otherwise
    (weight norms, BatchNorm scales) they cannot say which layer to cut: every space keeps the same share, the largest
    the table prices within the budget. (Weight norms divided by each space's mean and ranked per ms cut the
    costliest layers to one multiple and left EfficientNet-Lite0 with top-1 agreement <= 0.05 at 1.3x.)"""
    min_share: float = MIN_SHARE
    """Every space keeps at least this share of its units (its best by score)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_share <= 1.0:
            raise PlanError(f"minimum kept share {self.min_share} is outside [0, 1]", "pass a share such as 0.25")


def allocate_for_latency(graph: ChannelGraph, scores: torch.Tensor, table: ChannelLatencyTable, budget_ms: float,
                         rule: LatencyAllocation = LatencyAllocation()) -> torch.Tensor:
    """The most units (a bool per unit of ``graph``) whose table prediction is at most ``budget_ms``: ranked by
    score per ms, or one share for every space (see ``LatencyAllocation.comparable``); every space keeps
    ``rule.min_share`` of its units and a multiple of ``rule.multiple`` channels."""
    if rule.comparable:
        priority = _priority_per_ms(graph, scores, table, rule.min_share)
        order = torch.argsort(-priority, stable=True)

        def keep_at(k: int) -> torch.Tensor:
            chosen = torch.zeros(graph.num_units, dtype=torch.bool)
            chosen[order[:k]] = True
            # rounding up adds the units with the most importance per ms that the ranking left out
            return keep_per_space(graph, lambda units: int(chosen[units].sum()),
                                  priority - (~chosen).float() * 1e30, rule.multiple)

        low, high = int(torch.isinf(priority).sum()), graph.num_units
    else:
        timed = {u for space in graph.spaces if space.name in table.spaces for u in space.units}

        def keep_at(k: int) -> torch.Tensor:  # a space the table did not time saves nothing measurable: kept whole
            return keep_per_space(graph, lambda units: len(units) * (k / UNIFORM_STEPS if int(units[0]) in timed
                                                                     else 1.0), scores, rule.multiple)

        low, high = math.ceil(round(rule.min_share * UNIFORM_STEPS, 6)), UNIFORM_STEPS

    def predicted(keep: torch.Tensor) -> float:
        return table.predict(kept_counts(graph, keep))

    least = predicted(keep_at(low))
    if least > budget_ms:
        raise PlanError(f"{budget_ms:.3f} ms is below what the latency table predicts with every channel space at its "
                        f"floor ({rule.min_share:.0%} of its channels, at least {rule.multiple}): {least:.3f} ms",
                        "raise the latency budget")
    while low < high:  # the largest k within the budget (the prediction is monotone in k)
        middle = (low + high + 1) // 2
        if predicted(keep_at(middle)) <= budget_ms:
            low = middle
        else:
            high = middle - 1
    return keep_at(low)


def _priority_per_ms(graph: ChannelGraph, scores: torch.Tensor, table: ChannelLatencyTable,
                     min_share: float) -> torch.Tensor:
    """Each unit's score per ms its space saves per unit; +inf for the best ``min_share`` of every space and for
    every unit of a space the table did not time (cutting it saves nothing measurable)."""
    priority = scores.clone().float()
    for space in graph.spaces:
        units = torch.tensor(space.units)
        if space.name not in table.spaces:
            priority[units] = math.inf
            continue
        floor = units[torch.argsort(-priority[units], stable=True)[:math.ceil(round(min_share * len(units), 6))]]
        priority[units] = priority[units] / table.ms_per_unit(space.name)
        priority[floor] = math.inf
    return priority


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
                      time_keep: Callable[[torch.Tensor], float], rule: LatencyAllocation = LatencyAllocation(),
                      attempts: int = MEASURED_ATTEMPTS) -> tuple[torch.Tensor, list[Attempt]]:
    """``allocate_for_latency`` checked by ``time_keep`` (a kept-units mask → the pruned model's measured ms, on the
    table's scale). The table's aim is scaled by budget / measured after each timing, both ways: down when the model
    was over the budget, up when it was well under (channel rounding and costs that do not add can leave a third of
    the budget unused, and every unit cut costs quality). Returns, of the allocations measured within the budget,
    the one keeping the most units, else the last one timed (the budget check that follows says it missed), and
    every attempt."""
    aim, tried, fits = budget_ms, [], []
    keep = allocate_for_latency(graph, scores, table, aim, rule)
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
            keep = allocate_for_latency(graph, scores, table, aim, rule)
        except PlanError:  # the corrected aim is below every space's floor: what was timed is what there is
            break
        if any(torch.equal(keep, earlier) for earlier in fits):  # the aim moved too little to change anything
            break
    return (max(fits, key=lambda k: int(k.sum())) if fits else keep), tried
