"""Importance criteria: one score per attention head and per FFN neuron, higher = more useful.

Every criterion has the same shape, ``(model, adapter, batches) -> list[LayerScores]``, so
data-driven criteria (activation, Taylor, Fisher) take calibration ``batches`` (dicts of
model inputs) while weight-only criteria ignore them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from edgeprune.errors import PlanError
from edgeprune.models import ModelAdapter


@dataclass
class LayerScores:
    heads: torch.Tensor
    """Shape (num_heads,)."""
    neurons: torch.Tensor
    """Shape (ffn_dim,)."""


Batches = Iterable[dict[str, torch.Tensor]]
Importance = Callable[[nn.Module, ModelAdapter, "Batches | None"], list[LayerScores]]


@torch.no_grad()
def magnitude(model: nn.Module, adapter: ModelAdapter, batches: Batches | None = None) -> list[LayerScores]:
    """Norm of the weights a unit writes to the residual stream.

    A head's score is the Frobenius norm of its columns of the attention output projection;
    a neuron's is ‖input row‖·‖output column‖, since either being small silences it.
    """
    scores = []
    for layer in adapter.layers(model):
        out_cols = layer.attn_out.weight.reshape(layer.hidden_size, layer.num_heads, layer.head_dim)
        heads = out_cols.pow(2).sum(dim=(0, 2)).sqrt()
        neurons = layer.ffn_in.weight.norm(dim=1) * layer.ffn_out.weight.norm(dim=0)
        scores.append(LayerScores(heads=heads.float(), neurons=neurons.float()))
    return scores


CRITERIA: dict[str, Importance] = {"magnitude": magnitude}


def criterion(name: str) -> Importance:
    try:
        return CRITERIA[name]
    except KeyError:
        raise PlanError(f"unknown importance criterion '{name}'",
                        f"choose one of: {', '.join(CRITERIA)}") from None
