"""The search's latency table: per-layer costs from whole-model timings, piecewise linear and non-decreasing."""

from __future__ import annotations

import pytest

from edgeprune.models.plan import LayerPlan
from edgeprune.search.latency_table import LatencyTable, grid_counts

TABLE = LatencyTable(num_layers=2,
                     heads_ms=((4, 10.0), (2, 8.0), (1, 8.2)),  # 1 head timed slower than 2: noise
                     neurons_ms=((64, 10.0), (32, 7.0), (8, 4.0)))


def test_layer_costs_interpolate_and_never_decrease_with_the_count() -> None:
    assert TABLE.head_cost(1) == 0.0 and TABLE.head_cost(2) == 0.0  # noise flattened, not believed
    assert TABLE.head_cost(4) == pytest.approx((10.0 - 8.2) / 2)
    assert TABLE.head_cost(3) == pytest.approx((9.1 - 8.2) / 2)  # between the flattened 8.2 and 10.0
    assert TABLE.neuron_cost(8) == 0.0 and TABLE.neuron_cost(48) == pytest.approx((8.5 - 4.0) / 2)


def test_prediction_reproduces_the_measured_points() -> None:
    dense = (LayerPlan(tuple(range(4)), tuple(range(64))),) * 2
    assert TABLE.predict(dense) == pytest.approx(10.0)
    assert TABLE.predict((LayerPlan((0, 1, 2, 3), tuple(range(32))),) * 2) == pytest.approx(7.0)
    smallest = (LayerPlan((0,), tuple(range(8))),) * 2
    assert TABLE.predict(smallest) == pytest.approx(TABLE.fixed_ms)
    assert TABLE.fixed_ms == pytest.approx(10.0 - (10.0 - 8.2) - (10.0 - 4.0))


def test_grid_counts_are_distinct_and_at_least_one() -> None:
    assert grid_counts(12, (1.0, 0.75, 0.5, 0.25, 0.0)) == [12, 9, 6, 3, 1]
    assert grid_counts(2, (1.0, 0.75, 0.5, 0.25, 0.0)) == [2, 1]
