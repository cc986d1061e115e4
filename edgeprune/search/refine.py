"""The search's refinement loop: allocate the latency target, build, correct the target by the miss, rebuild.

The first round builds both allocations of the target — importance per millisecond across all
layers, and the same fraction in every layer — since which keeps more quality varies and neither
the scores nor the unrecovered model tell reliably; the better one is then refined. While a
candidate's latency misses the aim (or beats it by far), the target moves by the miss; one that
is fast enough but over the memory budget shrinks the target in proportion. ``REFINEMENTS``
builds in all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from edgeprune.models.plan import LayerPlan, PruningPlan
from edgeprune.pruning.allocate import by_latency, uniform
from edgeprune.pruning.importance import LayerScores
from edgeprune.search.choice import Bounds, Candidate, quality
from edgeprune.search.latency_table import LatencyTable

REFINEMENTS = 3
"""Real candidates built at most: both allocations of the budget, then the better one corrected by its miss."""
ALLOCATIONS = ("latency", "uniform")
"""Importance per ms across layers (``pruning.allocate.by_latency``), and the same fraction in every layer."""
SLACK = 0.1
"""A candidate faster than the budget by more than this fraction is rebuilt with less pruning (if builds remain)."""

Allocate = Callable[[str, float], tuple[LayerPlan, ...]]
"""(allocation, target ms) → kept heads and neurons per layer."""
Build = Callable[[PruningPlan, float], Candidate]
"""(plan, target ms it was allocated for) → the built, timed and scored candidate."""


def refine(build: Build, allocate: Allocate, base: PruningPlan, table: LatencyTable, bounds: Bounds) -> list[str]:
    """Build candidates with ``build`` (at most ``REFINEMENTS``) from ``base`` with the layers ``allocate`` gives,
    until one lands close enough under ``bounds.aim_ms``, is already too lossy, or would repeat an earlier
    allocation; return the notes saying why each target moved."""
    notes: list[str] = []
    target = bounds.aim_ms
    tried: list[tuple[LayerPlan, ...]] = []
    preferred: str | None = None  # decided by the first round, which builds both allocations
    builds = 0
    while builds < REFINEMENTS:
        plans = _new_plans(ALLOCATIONS if preferred is None else (preferred,), allocate, base, target, tried)
        if not plans:
            notes.append(f"the allocation for {target:.3f} ms repeats an earlier candidate; stopping")
            break
        tried.extend(p.layers for p in plans.values())
        predicted = {kind: table.predict(p.layers) for kind, p in plans.items()}
        if min(predicted.values()) > bounds.budget_ms:
            notes.append(f"the latency table predicts no allocation meets {bounds.budget_ms:g} ms "
                         f"(smallest: {table.fixed_ms:.3f} ms); building the fastest")
            fastest = min(plans, key=lambda kind: (predicted[kind], _units(plans[kind].layers)))
            plans = {fastest: plans[fastest]}  # on a tie (flat table stretches), the smaller model
        round_ = {kind: build(plan, target) for kind, plan in list(plans.items())[:REFINEMENTS - builds]}
        builds += len(round_)
        if preferred is None:
            preferred = max(round_, key=lambda kind: quality(round_[kind]))
            if len(round_) > 1:
                notes.append(f"allocations for {target:.3f} ms: " + ", ".join(
                    f"{kind} quality {quality(c):.4g} at {c.latency_ms:.3f} ms" for kind, c in round_.items())
                    + f"; refining {preferred}")
        next_target = _retarget(round_[preferred], target, bounds, notes)
        if next_target is None:
            break
        target = next_target
    return notes


def _new_plans(kinds: tuple[str, ...], allocate: Allocate, base: PruningPlan, target: float,
               tried: list[tuple[LayerPlan, ...]]) -> dict[str, PruningPlan]:
    """A plan per allocation for ``target`` ms, leaving out any that repeats a tried or an earlier one."""
    plans: dict[str, PruningPlan] = {}
    for kind in kinds:
        layers = allocate(kind, target)
        if layers not in tried and layers not in [p.layers for p in plans.values()]:
            plans[kind] = dataclasses.replace(base, layers=layers, allocation=kind,
                                              target={"latency_ms": round(target, 4)})
    return plans


def _units(layers: tuple[LayerPlan, ...]) -> int:
    return sum(len(layer.heads) + len(layer.neurons) for layer in layers)


def _retarget(c: Candidate, target: float, bounds: Bounds, notes: list[str]) -> float | None:
    """The next target after ``c`` was built for ``target`` ms, with a note when it moves for a reason worth
    telling; None when ``c`` is close enough under the aim, or too lossy already (more pruning cannot help)."""
    miss = c.latency_ms - bounds.aim_ms
    if c.meets_budget and (not bounds.acceptable(c) or -SLACK * bounds.budget_ms <= miss <= 0):
        return None
    if c.memory_mb is not None and c.memory_mb > bounds.memory_mb:
        notes.append(f"allocated for {target:.3f} ms, peaks at {c.memory_mb:.1f} MiB: shrinking the target in "
                     f"proportion")
        return min(target, c.latency_ms) * bounds.memory_mb / c.memory_mb
    if miss > 0:
        notes.append(f"allocated for {target:.3f} ms, measured {c.latency_ms:.3f} ms: correcting the target by the "
                     f"miss")
    return target - miss


def allocate(scores: list[LayerScores], table: LatencyTable, allocation: str,
             target_ms: float) -> tuple[LayerPlan, ...]:
    """Kept heads and neurons per layer predicted by ``table`` to run within ``target_ms``: by importance per ms
    across layers (``latency``), or the same fraction in every layer (``uniform``)."""
    if allocation == "latency":
        return by_latency(scores, table.head_cost, table.neuron_cost, target_ms - table.fixed_ms)
    return _uniform_within(scores, table, target_ms)


def _uniform_within(scores: list[LayerScores], table: LatencyTable, target_ms: float) -> tuple[LayerPlan, ...]:
    """Uniform pruning at the largest kept fraction the table predicts within ``target_ms`` (bisection; the
    fraction's layers are monotone in it)."""
    low, high = 0.0, 1.0
    if table.predict(uniform(scores, 1.0, 1.0)) <= target_ms:
        return uniform(scores, 1.0, 1.0)
    for _ in range(30):
        middle = (low + high) / 2
        if middle > 0 and table.predict(uniform(scores, middle, middle)) <= target_ms:
            low = middle
        else:
            high = middle
    return uniform(scores, max(low, 1e-6), max(low, 1e-6))
