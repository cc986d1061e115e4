"""The search's choice and refinement loop on hand-made candidates: no models, no timing."""

from __future__ import annotations

import pytest

from edgeprune.models.plan import DenseShape, LayerPlan, PruningPlan
from edgeprune.search.choice import Bounds, Candidate, advice, choose
from edgeprune.search.latency_table import LatencyTable
from edgeprune.search.refine import REFINEMENTS, refine

BUDGET = Bounds(budget_ms=10.0)  # aims at 9.5 ms


def _c(latency_ms: float, fidelity: float, *, keep: float = 0.5, table: bool = False, stsb: float | None = None,
       memory_mb: float | None = None, bounds: Bounds = BUDGET) -> Candidate:
    return Candidate(keep, "int8", latency_ms, fidelity, stsb=stsb, table=table, memory_mb=memory_mb,
                     meets_budget=bounds.meets(latency_ms, memory_mb))


def test_best_quality_inside_the_margin_is_chosen_and_every_other_says_why() -> None:
    table, a, b, c, d = (_c(5.0, 1.0, table=True), _c(9.0, 0.95), _c(8.0, 0.97), _c(9.8, 0.99), _c(12.0, 0.999))
    choice = choose([table, a, b, c, d], BUDGET)
    assert choice.chosen is b and choice.kept is b
    assert choice.verdicts == ["latency-table point: no recovery, not shipped",
                               "meets the budget with lower quality than the chosen one", "chosen",
                               "meets the budget by less than the 5% timing margin",
                               "misses the budget: 12.000 ms > 10 ms"]
    assert advice(choice, [table, a, b, c, d], BUDGET, floor_ms=2.0, dense_ms=16.0).startswith(
        "keep 0.500 of the encoder MACs, int8: 8.000 ms <= 10 ms (2.00x faster than dense fp32)")


def test_inside_the_budget_but_not_the_margin_only_when_nothing_else_is() -> None:
    close, over = _c(9.8, 0.99), _c(12.0, 0.999)
    choice = choose([over, close], BUDGET)
    assert choice.chosen is close and choice.verdicts == ["misses the budget: 12.000 ms > 10 ms", "chosen"]


def test_nothing_meets_the_budget_keeps_the_fastest_built_candidate_never_a_table_point() -> None:
    candidates = [_c(3.0, 1.0, table=True), _c(12.0, 0.99), _c(11.0, 0.9), _c(13.0, 0.999)]
    choice = choose(candidates, BUDGET)
    assert choice.chosen is None and choice.kept is candidates[2]
    assert choice.verdicts[1:] == [f"misses the budget: {ms:.3f} ms > 10 ms" for ms in (12.0, 11.0, 13.0)]
    assert advice(choice, candidates, BUDGET, floor_ms=2.5, dense_ms=16.0).startswith(
        "budget 10 ms is out of reach: the fastest candidate (keep 0.500, int8) measures 11.000 ms, 1.10x the "
        "budget (the latency table's floor: 2.500 ms)")


def test_a_quality_bound_rejects_lossy_candidates_in_fidelity_or_stsb_points() -> None:
    bound = Bounds(10.0, max_quality_drop=0.02)
    lossy, faithful = _c(8.0, 0.95, bounds=bound), _c(9.0, 0.99, bounds=bound)
    choice = choose([lossy, faithful], bound)
    assert choice.chosen is faithful and choice.verdicts[0] == "loses 0.05 quality, more than 0.02"
    stsb = Bounds(10.0, max_quality_drop=1.0, dense_stsb=85.0)
    poor, good = _c(8.0, 0.999, stsb=83.0, bounds=stsb), _c(8.5, 0.95, stsb=84.5, bounds=stsb)
    choice = choose([poor, good], stsb)
    assert choice.chosen is good and choice.verdicts[0] == "loses 2 quality, more than 1"
    only_lossy = choose([poor], stsb)
    assert only_lossy.chosen is None and only_lossy.kept is poor
    assert advice(only_lossy, [poor], stsb, 2.0, 16.0).startswith(
        "candidates meet the latency budget but lose more quality than allowed: keep 0.500: loses 2 quality")


def test_stsb_decides_over_fidelity_and_ties_go_to_the_least_pruning() -> None:
    by_stsb = [_c(8.0, 0.999, stsb=80.0), _c(8.0, 0.95, stsb=84.0)]
    assert choose(by_stsb, BUDGET).chosen is by_stsb[1]
    tied = [_c(8.0, 0.97, keep=0.4), _c(8.0, 0.97, keep=0.6), _c(8.0, 0.97, keep=0.5)]
    assert choose(tied, BUDGET).chosen is tied[1]


def test_a_memory_miss_is_named() -> None:
    bound = Bounds(10.0, memory_mb=50.0)
    heavy = _c(5.0, 0.99, memory_mb=80.0, bounds=bound)
    choice = choose([heavy], bound)
    assert choice.chosen is None and choice.verdicts == ["misses the memory budget: 80.0 MiB > 50 MiB"]
    assert advice(choice, [heavy], bound, 2.0, 16.0).startswith("memory budget 50 MiB is out of reach")


TABLE = LatencyTable(num_layers=1, heads_ms=((4, 10.0), (1, 7.0)), neurons_ms=((8, 10.0), (1, 4.0)))  # floor 1 ms
BASE = PruningPlan(layers=(LayerPlan(tuple(range(4)), tuple(range(8))),),
                   dense=DenseShape(num_layers=1, num_heads=4, head_dim=8, ffn_dim=8))


def _allocate(kind: str, target_ms: float) -> tuple[LayerPlan, ...]:
    """More units for a larger target; ``uniform`` keeps one neuron fewer, so the two allocations differ."""
    heads = max(1, min(4, int(target_ms // 2.5)))
    neurons = max(1, min(8, int(target_ms // 1.25)) - (kind == "uniform"))
    return (LayerPlan(tuple(range(heads)), tuple(range(neurons))),)


class _Builds:
    """A stand-in for building: each candidate runs at ``speed`` × its target and ``uniform`` keeps more quality."""

    def __init__(self, bounds: Bounds, speed: float, memory_mb: float | None = None) -> None:
        self.bounds, self.speed, self.memory_mb, self.made = bounds, speed, memory_mb, []

    def __call__(self, plan: PruningPlan, target_ms: float) -> Candidate:
        latency = self.speed * target_ms
        self.made.append((plan.allocation, target_ms))
        return Candidate(len(plan.layers[0].neurons) / 8, "int8", latency, 0.9 + 0.05 * (plan.allocation == "uniform"),
                         memory_mb=self.memory_mb, meets_budget=self.bounds.meets(latency, self.memory_mb))


def test_both_allocations_first_then_the_better_one_corrected_by_its_miss() -> None:
    build = _Builds(BUDGET, speed=1.2)
    notes = refine(build, _allocate, BASE, TABLE, BUDGET)
    assert build.made == [("latency", 9.5), ("uniform", 9.5), ("uniform", pytest.approx(9.5 - 1.9))]
    assert notes[0].startswith("allocations for 9.500 ms: latency quality 0.9 at 11.400 ms, uniform quality 0.95")
    assert notes[0].endswith("; refining uniform")
    assert notes[1] == "allocated for 9.500 ms, measured 11.400 ms: correcting the target by the miss"


def test_a_candidate_landing_just_under_the_aim_ends_the_search() -> None:
    build = _Builds(BUDGET, speed=1.0)
    refine(build, _allocate, BASE, TABLE, BUDGET)
    assert [kind for kind, _ in build.made] == ["latency", "uniform"]


def test_a_candidate_far_under_the_aim_is_rebuilt_with_less_pruning_until_builds_run_out() -> None:
    build = _Builds(BUDGET, speed=0.5)
    refine(build, _allocate, BASE, TABLE, BUDGET)
    assert len(build.made) == REFINEMENTS and build.made[-1] == ("uniform", pytest.approx(9.5 + 4.75))


def test_over_the_memory_budget_shrinks_the_target_in_proportion() -> None:
    bound = Bounds(10.0, memory_mb=50.0)
    build = _Builds(bound, speed=0.5, memory_mb=100.0)
    notes = refine(build, _allocate, BASE, TABLE, bound)
    assert build.made[-1] == ("uniform", pytest.approx(4.75 * 50 / 100))
    assert "allocated for 9.500 ms, peaks at 100.0 MiB: shrinking the target in proportion" in notes


def test_an_impossible_budget_builds_the_fastest_once_and_stops_on_a_repeat() -> None:
    bound = Bounds(0.5)
    build = _Builds(bound, speed=10.0)
    notes = refine(build, lambda _kind, _target: BASE.layers, BASE, TABLE, bound)
    assert [kind for kind, _ in build.made] == ["latency"]  # both allocations are the same plan
    assert notes[0] == ("the latency table predicts no allocation meets 0.5 ms (smallest: 1.000 ms); "
                        "building the fastest")
    assert notes[-1].endswith("repeats an earlier candidate; stopping")


def test_an_impossible_budget_builds_only_the_smaller_of_two_equally_fast_allocations() -> None:
    """A flat table stretch makes its units free, so the latency allocation may keep more units than the uniform
    minimum at the same predicted latency: only the smaller model is built, not both."""
    flat = LatencyTable(num_layers=1, heads_ms=((4, 5.0), (1, 5.0)), neurons_ms=((8, 5.0), (1, 5.0)))
    bound = Bounds(0.5)
    build = _Builds(bound, speed=10.0)
    big, small = (LayerPlan((0, 1), tuple(range(8))),), (LayerPlan((0,), (0,)),)
    notes = refine(build, lambda kind, _target: big if kind == "latency" else small, BASE, flat, bound)
    assert [kind for kind, _ in build.made] == ["uniform"]
    assert notes[0].endswith("building the fastest") and notes[-1].endswith("repeats an earlier candidate; stopping")
