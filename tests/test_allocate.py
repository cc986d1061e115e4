from __future__ import annotations

import pytest
import torch

from edgeprune.errors import PlanError
from edgeprune.models.loading import load_model
from edgeprune.prune import make_plan
from edgeprune.prune.allocate import global_by_cost, uniform
from edgeprune.prune.importance import LayerScores


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
