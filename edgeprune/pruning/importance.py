"""Importance criteria: one score per attention head and per FFN neuron, higher = more useful.

Every criterion has the same shape, ``(model, adapter, batches, accumulation) ->
list[LayerScores]``: data-driven criteria (activation, Taylor, Fisher) score each
calibration batch (a dict of model inputs) and fold the batch scores with
``accumulation`` (a plain mean, or an exponential moving average); weight-only criteria
ignore both.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from edgeprune.errors import PlanError
from edgeprune.models import ModelAdapter, TransformerLayer
from edgeprune.models.base import token_mask


@dataclass
class LayerScores:
    heads: torch.Tensor
    """Shape (num_heads,)."""
    neurons: torch.Tensor
    """Shape (ffn_dim,)."""


@dataclass(frozen=True)
class Accumulation:
    """How per-batch scores combine: ``sum`` (a running mean) or ``ema`` with ``decay``.

    EMA: s ← decay·s + (1 − decay)·batch, so decay 0 keeps only the last batch.
    """

    mode: str = "sum"
    decay: float = 0.9

    def __post_init__(self) -> None:
        if self.mode not in ("sum", "ema"):
            raise PlanError(f"unknown accumulation '{self.mode}'", "use sum or ema")
        if not 0.0 <= self.decay < 1.0:
            raise PlanError(f"EMA decay {self.decay} is outside [0, 1)", "pass a decay such as 0.9")

    def fold(self, per_batch: Iterable[list[LayerScores]]) -> list[LayerScores]:
        flat = ([t for s in scores for t in (s.heads, s.neurons)] for scores in per_batch)
        total = self.fold_tensors(flat)
        return [LayerScores(total[i], total[i + 1]) for i in range(0, len(total), 2)]

    def fold_tensors(self, per_batch: Iterable[list[torch.Tensor]]) -> list[torch.Tensor]:
        """Fold per-batch score tensors (any list of tensors, the same shapes every batch)."""
        total: list[torch.Tensor] | None = None
        count = 0
        for scores in per_batch:
            count += 1
            if total is None:
                total = [s.clone() for s in scores]
                continue
            a, b = (1.0 - 1.0 / count, 1.0 / count) if self.mode == "sum" else (self.decay, 1.0 - self.decay)
            for acc, new in zip(total, scores):
                acc.mul_(a).add_(new, alpha=b)
        if total is None:
            raise PlanError("this criterion needs calibration batches and got none",
                            "pass calibration data, or use a weight-only criterion such as magnitude")
        return total


MEAN = Accumulation()
"""The default: a plain running mean over batches."""

Batches = Iterable[dict[str, torch.Tensor]]
Importance = Callable[[nn.Module, ModelAdapter, "Batches | None", Accumulation], list[LayerScores]]


@torch.no_grad()
def magnitude(model: nn.Module, adapter: ModelAdapter, batches: Batches | None = None,
              accumulation: Accumulation = MEAN) -> list[LayerScores]:
    """Norm of the weights a unit writes to the residual stream.

    An attention unit's score is the Frobenius norm of its columns of the output projection;
    a neuron's is the product of its row norms in every MLP input projection (up, gate) and its
    output column norm, since any of them being small silences it.
    """
    scores = []
    for layer in adapter.layers(model):
        out_cols = layer.attn_out.weight.reshape(layer.hidden_size, layer.num_heads, layer.unit_width)
        heads = out_cols.pow(2).sum(dim=(0, 2)).sqrt()
        neurons = layer.ffn_out.weight.norm(dim=0)
        for block in layer.ffn_in:
            neurons = neurons * block.linear.weight[block.offset:block.offset + layer.ffn_dim].norm(dim=1)
        scores.append(LayerScores(heads=heads.float(), neurons=neurons.float()))
    return scores


def activation(model: nn.Module, adapter: ModelAdapter, batches: Batches | None,
               accumulation: Accumulation = MEAN) -> list[LayerScores]:
    """Wanda-style |W|·‖X‖ at the output projections, summed over the columns a unit owns.

    ‖X_j‖ is the L2 norm of input channel j over the batch's real (non-padding) tokens, so
    a unit scores high only when it both carries signal and has weight to pass it on.
    """
    return _column_scores(model, adapter, batches, accumulation,
                          lambda x, weight: x.norm(dim=0) * weight.abs().sum(dim=0))


def fluctuation(model: nn.Module, adapter: ModelAdapter, batches: Batches | None,
                accumulation: Accumulation = MEAN) -> list[LayerScores]:
    """FLAP's fluctuation metric at the output projections: Var(X_j) · ‖W_{:,j}‖², summed over a unit's columns.

    A channel whose input barely varies over the calibration tokens can be replaced by its mean
    (bias compensation, ``recover="bias"``), so what removing it costs is its variance, not its
    size, carried through the squared norm of the weights that pass it on (An et al., 2024).
    """
    return _column_scores(model, adapter, batches, accumulation,
                          lambda x, weight: x.var(dim=0, correction=0) * weight.float().pow(2).sum(dim=0))


def _column_scores(model: nn.Module, adapter: ModelAdapter, batches: Batches | None, accumulation: Accumulation,
                   column: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> list[LayerScores]:
    """Score every input column of the attention- and FFN-output projections with ``column(X, W)`` (X: the
    column's inputs over a batch's real tokens, W: the projection's weight) and sum a unit's columns."""
    layers = adapter.layers(model)

    @torch.no_grad()
    def one_batch(batch: dict[str, torch.Tensor]) -> list[LayerScores]:
        with capture_inputs(layers) as captured:
            model(**batch)
        scores = []
        for layer, (context, ffn_act) in zip(layers, captured):
            real = token_mask(batch, context)
            heads = column(context[real].float(), layer.attn_out.weight)
            neurons = column(ffn_act[real].float(), layer.ffn_out.weight)
            scores.append(LayerScores(heads.reshape(layer.num_heads, layer.unit_width).sum(dim=1), neurons))
        return scores

    return accumulation.fold(one_batch(batch) for batch in batches or ())


def taylor(model: nn.Module, adapter: ModelAdapter, batches: Batches | None,
           accumulation: Accumulation = MEAN) -> list[LayerScores]:
    """First-order Taylor estimate of the loss change when a unit is removed: |∂L/∂m| at m = 1."""
    return accumulation.fold(_mask_gradients(model, adapter, b, square=False) for b in batches or ())


def fisher(model: nn.Module, adapter: ModelAdapter, batches: Batches | None,
           accumulation: Accumulation = MEAN) -> list[LayerScores]:
    """Empirical Fisher diagonal of the unit masks: the sum of squared mask gradients."""
    return accumulation.fold(_mask_gradients(model, adapter, b, square=True) for b in batches or ())


PROJECTIONS = 4
"""Random directions per batch for label-free sensitivity (see ``_mask_gradients``)."""


def _mask_gradients(model: nn.Module, adapter: ModelAdapter, batch: dict[str, torch.Tensor],
                    square: bool) -> list[LayerScores]:
    """Gradients of the adapter's sensitivity loss (task, language-model, or label-free projections)
    with respect to unit masks held at 1; a label-free loss is drawn ``PROJECTIONS`` times."""
    layers = adapter.layers(model)
    masks = [(torch.ones(layer.num_heads, requires_grad=True), torch.ones(layer.ffn_dim, requires_grad=True))
             for layer in layers]
    directions = PROJECTIONS if adapter.label_free(model, batch) else 1
    totals = [LayerScores(torch.zeros(layer.num_heads), torch.zeros(layer.ffn_dim)) for layer in layers]
    with _apply_masks(layers, masks):
        for _ in range(directions):
            loss = adapter.sensitivity_loss(model, batch)
            grads = torch.autograd.grad(loss, [m for pair in masks for m in pair])
            for i, total in enumerate(totals):
                for acc, grad in ((total.heads, grads[2 * i]), (total.neurons, grads[2 * i + 1])):
                    acc.add_(grad.pow(2) if square else grad.abs())
    return totals


@contextlib.contextmanager
def _apply_masks(layers: list[TransformerLayer], masks: list[tuple[torch.Tensor, torch.Tensor]]) -> Iterator[None]:
    """Multiply each head's context / each neuron's activation by its mask, at the output projections."""
    hooks = []
    for layer, (head_mask, neuron_mask) in zip(layers, masks):
        def scale_heads(_module, args, m=head_mask, d=layer.unit_width):
            return (args[0] * m.repeat_interleave(d),)

        hooks.append(layer.attn_out.register_forward_pre_hook(scale_heads))
        hooks.append(layer.ffn_out.register_forward_pre_hook(lambda _module, args, m=neuron_mask: (args[0] * m,)))
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


@contextlib.contextmanager
def capture_inputs(layers: list[TransformerLayer]) -> Iterator[list[list[torch.Tensor]]]:
    """Record the inputs of each layer's attention-output and FFN-output projections."""
    captured: list[list[torch.Tensor]] = [[] for _ in layers]
    hooks = []
    for slot, layer in zip(captured, layers):
        for linear in (layer.attn_out, layer.ffn_out):
            hooks.append(linear.register_forward_pre_hook(lambda _module, args, s=slot: s.append(args[0].detach())))
    try:
        yield captured
    finally:
        for hook in hooks:
            hook.remove()


CRITERIA: dict[str, Importance] = {"magnitude": magnitude, "activation": activation, "fluctuation": fluctuation,
                                   "taylor": taylor, "fisher": fisher}


def criterion(name: str) -> Importance:
    try:
        return CRITERIA[name]
    except KeyError:
        raise PlanError(f"unknown importance criterion '{name}'",
                        f"choose one of: {', '.join(CRITERIA)}") from None
