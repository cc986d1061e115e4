"""Structured pruning: score units → allocate what to keep → slice the model.

``prune(model, ...)`` returns a new, physically smaller model and the ``PruningPlan`` that
reproduces it; the input model is left untouched.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Iterator

import torch
from torch import nn

from edgeprune.errors import PlanError
from edgeprune.models import TransformerLayer, adapter_for, encoder_macs, layer_macs
from edgeprune.prune.allocate import global_by_cost, uniform
from edgeprune.prune.apply import apply_plan, dense_shape
from edgeprune.prune.importance import MEAN, Accumulation, Batches, LayerScores
from edgeprune.prune.importance import criterion as get_criterion
from edgeprune.prune.plan import DenseShape, LayerPlan, PruningPlan
from edgeprune.prune.recover import DISTILL_STEPS, RECOVERY_METHODS, Tick, check_recovery, recover


def resolve_target(heads_ratio: float | None, ffn_ratio: float | None,
                   keep_flops: float | None) -> dict[str, float]:
    """Turn the user's size target into per-unit keep ratios.

    Encoder MACs are linear in the number of heads and neurons of each layer, so keeping
    the same fraction ``f`` of both keeps ``f`` of the encoder's MACs (up to rounding).
    """
    if keep_flops is not None:
        if heads_ratio is not None or ffn_ratio is not None:
            raise PlanError("--keep-flops cannot be combined with --heads-ratio/--ffn-ratio",
                            "give either a FLOPs fraction or per-unit ratios")
        return {"keep_flops": keep_flops, "heads_ratio": keep_flops, "ffn_ratio": keep_flops}
    if heads_ratio is None and ffn_ratio is None:
        raise PlanError("no pruning target given", "pass --keep-flops, --heads-ratio or --ffn-ratio")
    return {"heads_ratio": 1.0 if heads_ratio is None else heads_ratio,
            "ffn_ratio": 1.0 if ffn_ratio is None else ffn_ratio}


def score(model: nn.Module, criterion: str = "magnitude", batches: Batches | None = None,
          accumulation: Accumulation = MEAN, seed: int = 0) -> list[LayerScores]:
    """Importance of every head and FFN neuron of the dense ``model`` (higher = keep)."""
    criterion_fn = get_criterion(criterion)
    torch.manual_seed(seed)
    with _eval_mode(model):
        return criterion_fn(model, adapter_for(model), batches, accumulation)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Dropout off while scoring or recovering; the caller's train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def make_plan(model: nn.Module, *, heads_ratio: float | None = None, ffn_ratio: float | None = None,
              keep_flops: float | None = None, criterion: str = "magnitude", batches: Batches | None = None,
              accumulation: Accumulation = MEAN, allocation: str = "uniform", seed: int = 0,
              scores: list[LayerScores] | None = None) -> PruningPlan:
    """Score the dense ``model`` (on calibration ``batches`` for data-driven criteria); decide what each layer keeps.

    ``allocation`` is ``uniform`` (the same ratio in every layer) or ``global`` (units of all
    layers ranked together by score per MAC under ``keep_flops``). Pass ``scores`` from
    ``score`` to plan several targets from one scoring run.
    """
    adapter = adapter_for(model)
    target = resolve_target(heads_ratio, ffn_ratio, keep_flops)
    batches = list(batches) if batches is not None else None
    if scores is None:
        scores = score(model, criterion, batches, accumulation, seed)
    layers = _allocate(allocation, scores, target, adapter.layers(model)[0])
    texts = 0 if criterion == "magnitude" or not batches else sum(len(b["input_ids"]) for b in batches)
    return PruningPlan(layers=layers, dense=dense_shape(model, adapter), criterion=criterion, target=target,
                       seed=seed, accumulate=accumulation.mode, ema_decay=accumulation.decay,
                       calibration_texts=texts, allocation=allocation)


def _allocate(allocation: str, scores: list[LayerScores], target: dict[str, float], layer: TransformerLayer,
              seq_len: int = 128) -> tuple[LayerPlan, ...]:
    if allocation == "uniform":
        return uniform(scores, target["heads_ratio"], target["ffn_ratio"])
    if allocation != "global":
        raise PlanError(f"unknown allocation '{allocation}'", "use uniform or global")
    if "keep_flops" not in target:
        raise PlanError("global allocation needs a FLOPs target", "pass --keep-flops with --allocation global")
    head = layer_macs(layer.hidden_size, 1, layer.head_dim, 0, seq_len)
    neuron = layer_macs(layer.hidden_size, 0, layer.head_dim, 1, seq_len)
    return global_by_cost(scores, head, neuron, target["keep_flops"])


def prune(model: nn.Module, *, heads_ratio: float | None = None, ffn_ratio: float | None = None,
          keep_flops: float | None = None, criterion: str = "magnitude", batches: Batches | None = None,
          accumulation: Accumulation = MEAN, allocation: str = "uniform", recovery: str = "none",
          distill_steps: int = DISTILL_STEPS, seed: int = 0, tick: Tick | None = None,
          plan: PruningPlan | None = None) -> tuple[nn.Module, PruningPlan]:
    """Return a physically pruned copy of ``model`` and the plan that produced it.

    A ready ``plan`` (e.g. a latency-budget allocation from the search) replaces the target
    and scoring arguments. ``recovery`` (``none``, ``lstsq``, ``distill``) then re-fits the pruned copy towards
    ``model`` on the same calibration ``batches``; the plan records what it did. ``tick``
    reports recovery progress as (done, total).
    """
    check_recovery(recovery, distill_steps)  # before minutes of scoring
    batches = list(batches) if batches is not None else None
    plan = plan or make_plan(model, heads_ratio=heads_ratio, ffn_ratio=ffn_ratio, keep_flops=keep_flops,
                             criterion=criterion, batches=batches, accumulation=accumulation,
                             allocation=allocation, seed=seed)
    adapter = adapter_for(model)
    pruned = apply_plan(copy.deepcopy(model), adapter, plan).eval()
    with _eval_mode(model):
        report = recover(model, pruned, adapter, batches or [], recovery, distill_steps, seed, tick)
    if recovery != "none" and plan.criterion == "magnitude":
        plan = dataclasses.replace(plan, calibration_texts=sum(len(b["input_ids"]) for b in batches or ()))
    return pruned.eval(), dataclasses.replace(plan, recovery=report.summary())


def kept_macs_fraction(pruned: nn.Module, dense: DenseShape, seq_len: int = 128) -> float:
    """Encoder MACs of ``pruned`` over those of its dense shape, at ``seq_len`` tokens."""
    layers = adapter_for(pruned).layers(pruned)
    hidden = layers[0].hidden_size
    dense_macs = dense.num_layers * layer_macs(hidden, dense.num_heads, dense.head_dim, dense.ffn_dim, seq_len)
    return encoder_macs(layers, seq_len) / dense_macs


__all__ = ["RECOVERY_METHODS", "Accumulation", "LayerPlan", "PruningPlan", "apply_plan", "kept_macs_fraction",
           "make_plan", "prune", "resolve_target", "score"]
