"""Physically remove pruned attention units and FFN neurons: the weight matrices shrink, no masks remain."""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

from edgeprune.errors import PlanError
from edgeprune.models.base import ModelAdapter, RowBlock
from edgeprune.models.plan import DenseShape, PruningPlan


def dense_shape(model: nn.Module, adapter: ModelAdapter) -> DenseShape:
    """The per-layer sizes of an unpruned model (all layers must agree)."""
    layers = adapter.layers(model)
    shapes = {(layer.num_heads, layer.head_dim, layer.ffn_dim, layer.group_size) for layer in layers}
    if len(shapes) != 1:
        raise PlanError("the model is already pruned (its layers differ in size)",
                        "prune the dense model, or load a pruned one with edgeprune.load_pruned")
    num_heads, head_dim, ffn_dim, group_size = shapes.pop()
    return DenseShape(num_layers=len(layers), num_heads=num_heads, head_dim=head_dim, ffn_dim=ffn_dim,
                      group_size=group_size)


@torch.no_grad()
def apply_plan(model: nn.Module, adapter: ModelAdapter, plan: PruningPlan) -> nn.Module:
    """Slice ``model`` in place to the plan's kept units and return it."""
    shape = dense_shape(model, adapter)
    if shape != plan.dense:
        raise PlanError(f"plan was made for {plan.dense} but the model is {shape}",
                        "apply the plan to the model it was made for")
    for layer, kept in zip(adapter.layers(model), plan.layers):
        _keep_rows(layer.attn_in, kept.heads)
        _keep_inputs(layer.attn_out, RowBlock(layer.attn_out, layer.unit_width).unit_rows(kept.heads))
        adapter.set_num_heads(layer, len(kept.heads))
        _keep_rows(layer.ffn_in, kept.neurons)
        _keep_inputs(layer.ffn_out, torch.tensor(kept.neurons, dtype=torch.long))
    return model


def _keep_rows(blocks: tuple[RowBlock, ...], units: tuple[int, ...]) -> None:
    """Keep the kept units' rows of every input projection; a fused projection is sliced once, its parts in
    offset order."""
    rows: dict[nn.Linear, list[torch.Tensor]] = defaultdict(list)
    for block in sorted(blocks, key=lambda b: b.offset):
        rows[block.linear].append(block.unit_rows(units))
    for linear, parts in rows.items():
        _keep_outputs(linear, torch.cat(parts))


def _keep_outputs(linear: nn.Linear, index: torch.Tensor) -> None:
    linear.weight = nn.Parameter(linear.weight.index_select(0, index).clone())
    if linear.bias is not None:
        linear.bias = nn.Parameter(linear.bias.index_select(0, index).clone())
    linear.out_features = len(index)


def _keep_inputs(linear: nn.Linear, index: torch.Tensor) -> None:
    linear.weight = nn.Parameter(linear.weight.index_select(1, index).clone())
    linear.in_features = len(index)
