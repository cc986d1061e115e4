"""Physically remove pruned heads and neurons: the weight matrices shrink, no masks remain."""

from __future__ import annotations

import torch
from torch import nn

from edgeprune.errors import PlanError
from edgeprune.models import ModelAdapter
from edgeprune.prune.plan import DenseShape, PruningPlan


def dense_shape(model: nn.Module, adapter: ModelAdapter) -> DenseShape:
    """The per-layer sizes of an unpruned model (all layers must agree)."""
    layers = adapter.layers(model)
    shapes = {(layer.num_heads, layer.head_dim, layer.ffn_dim) for layer in layers}
    if len(shapes) != 1:
        raise PlanError("the model is already pruned (its layers differ in size)",
                        "prune the dense model, or load a pruned one with edgeprune.load_pruned")
    num_heads, head_dim, ffn_dim = shapes.pop()
    return DenseShape(num_layers=len(layers), num_heads=num_heads, head_dim=head_dim, ffn_dim=ffn_dim)


@torch.no_grad()
def apply_plan(model: nn.Module, adapter: ModelAdapter, plan: PruningPlan) -> nn.Module:
    """Slice ``model`` in place to the plan's kept units and return it."""
    shape = dense_shape(model, adapter)
    if shape != plan.dense:
        raise PlanError(f"plan was made for {plan.dense} but the model is {shape}",
                        "apply the plan to the model it was made for")
    for layer, kept in zip(adapter.layers(model), plan.layers):
        rows = _head_rows(kept.heads, layer.head_dim)
        for linear in (layer.query, layer.key, layer.value):
            _keep_outputs(linear, rows)
        _keep_inputs(layer.attn_out, rows)
        adapter.set_num_heads(layer, len(kept.heads))
        neurons = torch.tensor(kept.neurons, dtype=torch.long)
        _keep_outputs(layer.ffn_in, neurons)
        _keep_inputs(layer.ffn_out, neurons)
    return model


def _head_rows(heads: tuple[int, ...], head_dim: int) -> torch.Tensor:
    return torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in heads])


def _keep_outputs(linear: nn.Linear, index: torch.Tensor) -> None:
    linear.weight = nn.Parameter(linear.weight.index_select(0, index).clone())
    if linear.bias is not None:
        linear.bias = nn.Parameter(linear.bias.index_select(0, index).clone())
    linear.out_features = len(index)


def _keep_inputs(linear: nn.Linear, index: torch.Tensor) -> None:
    linear.weight = nn.Parameter(linear.weight.index_select(1, index).clone())
    linear.in_features = len(index)
