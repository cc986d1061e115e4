from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from edgeprune.errors import PlanError
from edgeprune.models.loading import load_model
from edgeprune.pruning import make_plan
from edgeprune.pruning.allocate import by_latency, global_by_cost, uniform
from edgeprune.pruning.importance import LayerScores


def _scores() -> list[LayerScores]:
    """Layer 0 matters little, layer 2 a lot."""
    torch.manual_seed(0)
    return [LayerScores(torch.rand(4) * scale, torch.rand(8) * scale) for scale in (0.01, 1.0, 100.0)]


def test_global_allocation_is_uneven_within_budget_and_keeps_one_per_layer() -> None:
    head, neuron = 10.0, 2.0
    scores = _scores()
    plan = global_by_cost(scores, head, neuron, keep_fraction=0.5)
    spent = sum(len(p.heads) * head + len(p.neurons) * neuron for p in plan)
    dense = 3 * (4 * head + 8 * neuron)
    assert spent <= 0.5 * dense
    assert spent > 0.5 * dense - head  # greedy fills the budget up to one unit
    assert all(len(p.heads) >= 1 and len(p.neurons) >= 1 for p in plan)
    assert len(plan[2].heads) == 4 and len(plan[2].neurons) == 8  # the important layer keeps everything
    assert len(plan[0].heads) == 1 and len(plan[0].neurons) == 1
    assert global_by_cost(scores, head, neuron, 1.0) == uniform(scores, 1.0, 1.0)


def test_global_allocation_on_a_model_and_its_errors(tiny_bert_dir) -> None:
    model = load_model(tiny_bert_dir).model
    plan = make_plan(model, keep_flops=0.5, allocation="global")
    assert plan.allocation == "global" and sum(plan.kept_heads) >= 3
    with pytest.raises(PlanError, match="needs a FLOPs target"):
        make_plan(model, heads_ratio=0.5, allocation="global")
    with pytest.raises(PlanError, match="unknown allocation"):
        make_plan(model, keep_flops=0.5, allocation="random")
    with pytest.raises(PlanError, match="outside"):
        global_by_cost(_scores(), 1.0, 1.0, 0.0)


def _stepped(count: int) -> float:
    """A layer's FFN ms: flat up to 4 neurons (one kernel block), then 1 ms per neuron."""
    return float(max(0, count - 4))


def test_latency_allocation_keeps_flat_stretches_and_spends_by_score_per_ms() -> None:
    scores = _scores()

    def head_ms(count: int) -> float:
        return 2.0 * count

    plan = by_latency(scores, head_ms, _stepped, budget_ms=0.0)
    assert all(len(p.neurons) == 4 for p in plan)  # free: pruning inside the flat block saves nothing
    assert all(len(p.heads) == 1 for p in plan)  # the best head of each layer is always kept
    assert plan[0].neurons == uniform(scores, 1.0, 0.5)[0].neurons  # the four best, by score
    plan = by_latency(scores, head_ms, _stepped, budget_ms=4 * 1.0 + 3 * 2.0)
    assert plan[2] == uniform(scores, 1.0, 1.0)[2]  # the important layer's units win every millisecond
    assert [len(p.heads) for p in plan[:2]] == [1, 1] and [len(p.neurons) for p in plan[:2]] == [4, 4]
    assert by_latency(scores, head_ms, _stepped, budget_ms=1e9) == uniform(scores, 1.0, 1.0)


@given(st.floats(0.0, 60.0), st.floats(0.1, 5.0))
def test_latency_allocation_never_exceeds_its_budget(budget, slope) -> None:
    scores = _scores()

    def head_ms(count: int) -> float:
        return slope * count

    plan = by_latency(scores, head_ms, _stepped, budget)
    spent = sum(head_ms(len(p.heads)) - head_ms(1) + _stepped(len(p.neurons)) - _stepped(1) for p in plan)
    assert spent <= budget + 1e-9
    assert all(len(p.heads) >= 1 and len(p.neurons) >= 4 for p in plan)
