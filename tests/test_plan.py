from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeprune.errors import PlanError
from edgeprune.models.plan import DenseShape, LayerPlan, PruningPlan

DENSE = DenseShape(num_layers=3, num_heads=6, head_dim=8, ffn_dim=32)


def kept(n: int) -> st.SearchStrategy[tuple[int, ...]]:
    return st.sets(st.integers(0, n - 1), min_size=1).map(lambda s: tuple(sorted(s)))


plans = st.builds(
    PruningPlan,
    layers=st.tuples(*[st.builds(LayerPlan, heads=kept(6), neurons=kept(32)) for _ in range(3)]),
    dense=st.just(DENSE),
    criterion=st.sampled_from(["magnitude", "activation", "taylor", "fisher"]),
    target=st.dictionaries(st.sampled_from(["heads_ratio", "ffn_ratio", "keep_flops"]),
                           st.floats(0.01, 1.0)),
    seed=st.integers(0, 2**31),
    accumulate=st.sampled_from(["sum", "ema"]),
    ema_decay=st.floats(0.0, 0.999),
    calibration_texts=st.integers(0, 10_000),
    allocation=st.sampled_from(["uniform", "global"]),
)


@given(plans)
def test_plan_json_round_trip(plan: PruningPlan) -> None:
    assert PruningPlan.from_json(plan.to_json()) == plan


def test_plan_save_load(tmp_path) -> None:
    plan = PruningPlan(layers=(LayerPlan((0, 5), (1, 2, 31)),) * 3, dense=DENSE, target={"keep_flops": 0.5})
    plan.save(tmp_path / "plan.json")
    assert PruningPlan.load(tmp_path / "plan.json") == plan
    assert plan.kept_heads == [2, 2, 2] and plan.kept_neurons == [3, 3, 3]


@pytest.mark.parametrize("heads, neurons, message", [
    ((), (0,), "nothing kept"),
    ((3, 1), (0,), "sorted and unique"),
    ((1, 1), (0,), "sorted and unique"),
    ((6,), (0,), "out of range"),
    ((0,), (-1,), "out of range"),
])
def test_invalid_layer_plans_are_rejected(heads, neurons, message) -> None:
    with pytest.raises(PlanError, match=message):
        PruningPlan(layers=(LayerPlan(heads, neurons),) + (LayerPlan((0,), (0,)),) * 2, dense=DENSE)


def test_wrong_layer_count_and_malformed_json() -> None:
    with pytest.raises(PlanError, match="3"):
        PruningPlan(layers=(LayerPlan((0,), (0,)),), dense=DENSE)
    with pytest.raises(PlanError, match="not valid JSON"):
        PruningPlan.from_json("{nope")
    with pytest.raises(PlanError, match="malformed"):
        PruningPlan.from_json('{"format_version": 1, "layers": []}')
    with pytest.raises(PlanError, match="format version"):
        PruningPlan.from_json('{"format_version": 99}')
