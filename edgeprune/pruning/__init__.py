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
from edgeprune.models import TransformerLayer, adapter_for, encoder_macs
from edgeprune.models.plan import DenseShape, LayerPlan, PruningPlan
from edgeprune.models.slicing import apply_plan, dense_shape
from edgeprune.options import PruneOptions, check_target
from edgeprune.pruning.allocate import global_by_cost, uniform
from edgeprune.pruning.importance import MEAN, Accumulation, Batches, LayerScores
from edgeprune.pruning.importance import criterion as get_criterion
from edgeprune.pruning.recover import Tick, recover


def resolve_target(heads_ratio: float | None, ffn_ratio: float | None,
                   keep_flops: float | None) -> dict[str, float]:
    """Turn the user's size target into per-unit keep ratios.

    Encoder MACs are linear in the number of heads and neurons of each layer, so keeping
    the same fraction ``f`` of both keeps ``f`` of the encoder's MACs (up to rounding).
    """
    check_target(keep_flops, heads_ratio, ffn_ratio)
    if keep_flops is not None:
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


DEFAULTS = PruneOptions()
LOSS_ESTIMATES = ("taylor", "fisher")
"""Criteria that estimate the loss change of removing a unit: comparable across layers and unit kinds as they are."""


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Dropout off and no key/value cache while scoring or recovering (recovery replays each block on the same
    inputs; a cache would grow with every replay); the caller's mode and cache setting are restored afterwards."""
    was_training = model.training
    config = getattr(model, "config", None)
    use_cache = getattr(config, "use_cache", None)
    model.eval()
    if use_cache is not None:
        config.use_cache = False
    try:
        yield
    finally:
        model.train(was_training)
        if use_cache is not None:
            config.use_cache = use_cache


def make_plan(model: nn.Module, *, heads_ratio: float | None = None, ffn_ratio: float | None = None,
              keep_flops: float | None = None, criterion: str = "magnitude", batches: Batches | None = None,
              accumulation: Accumulation = MEAN, allocation: str = "uniform", seed: int = 0,
              scores: list[LayerScores] | None = None) -> PruningPlan:
    """Score the dense ``model`` (on calibration ``batches`` for data-driven criteria); decide what each layer keeps.

    ``allocation`` is ``uniform`` (the same ratio in every layer) or ``global`` (units of all
    layers ranked together under ``keep_flops``: by score per MAC for loss estimates, by
    standardized score otherwise; attention units stay uniform where the architecture needs it). Pass ``scores`` from
    ``score`` to plan several targets from one scoring run.
    """
    adapter = adapter_for(model)
    target = resolve_target(heads_ratio, ffn_ratio, keep_flops)
    batches = list(batches) if batches is not None else None
    if scores is None:
        scores = score(model, criterion, batches, accumulation, seed)
    layers = _allocate(allocation, scores, target, adapter.layers(model)[0], criterion, adapter.uniform_attention)
    texts = 0 if criterion == "magnitude" or not batches else sum(len(next(iter(b.values()))) for b in batches)
    return PruningPlan(layers=layers, dense=dense_shape(model, adapter), criterion=criterion, target=target,
                       seed=seed, accumulate=accumulation.mode, ema_decay=accumulation.decay,
                       calibration_texts=texts, allocation=allocation)


def _allocate(allocation: str, scores: list[LayerScores], target: dict[str, float], layer: TransformerLayer,
              criterion: str, uniform_attention: bool, seq_len: int = 128) -> tuple[LayerPlan, ...]:
    if allocation == "uniform":
        return uniform(scores, target["heads_ratio"], target["ffn_ratio"])
    if allocation != "global":
        raise PlanError(f"unknown allocation '{allocation}'", "use uniform or global")
    if "keep_flops" not in target:
        raise PlanError("global allocation needs a FLOPs target", "pass --keep-flops with --allocation global")
    return global_by_cost(scores, *layer.unit_macs(seq_len), target["keep_flops"],
                          standardize=criterion not in LOSS_ESTIMATES, uniform_heads=uniform_attention)


def prune(model: nn.Module, *, heads_ratio: float | None = None, ffn_ratio: float | None = None,
          keep_flops: float | None = None, options: PruneOptions = DEFAULTS, batches: Batches | None = None,
          tick: Tick | None = None, plan: PruningPlan | None = None) -> tuple[nn.Module, PruningPlan]:
    """Return a physically pruned copy of ``model`` and the plan that produced it.

    ``options`` say how units are scored, allocated and recovered (the CLI's defaults: Fisher,
    uniform, least squares); data-driven scoring and recovery read the calibration ``batches``
    (dicts of model inputs). A ready ``plan`` (e.g. a latency-budget allocation from the search)
    replaces the target and scoring. ``tick`` reports recovery progress as (done, total).
    """
    batches = list(batches) if batches is not None else None
    if options.needs_data and not batches:
        raise PlanError(f"--criterion {options.criterion} with --recover {options.recover} needs calibration "
                        "batches and got none",
                        "pass calibration batches, or PruneOptions(criterion='magnitude', recover='none')")
    accumulation = Accumulation(options.accumulate, options.ema_decay)
    plan = plan or make_plan(model, heads_ratio=heads_ratio, ffn_ratio=ffn_ratio, keep_flops=keep_flops,
                             criterion=options.criterion, batches=batches, accumulation=accumulation,
                             allocation=options.allocation, seed=options.seed)
    adapter = adapter_for(model)
    pruned = apply_plan(copy.deepcopy(model), adapter, plan).eval()
    with _eval_mode(model), _eval_mode(pruned):
        report = recover(model, pruned, adapter, batches or [], options.recover, plan, options.distill_steps,
                         options.seed, tick)
    if options.recover != "none" and plan.criterion == "magnitude":
        plan = dataclasses.replace(plan, calibration_texts=sum(len(next(iter(b.values()))) for b in batches or ()))
    return pruned.eval(), dataclasses.replace(plan, recovery=report.summary())


def kept_macs_fraction(pruned: nn.Module, dense: DenseShape, seq_len: int = 128) -> float:
    """Encoder MACs of ``pruned`` over those of its dense shape, at ``seq_len`` tokens."""
    layers = adapter_for(pruned).layers(pruned)
    per_unit, per_neuron = layers[0].unit_macs(seq_len)
    dense_macs = dense.num_layers * (dense.num_heads * per_unit + dense.ffn_dim * per_neuron)
    return encoder_macs(layers, seq_len) / dense_macs


__all__ = ["DEFAULTS", "Accumulation", "PruneOptions", "LayerPlan", "PruningPlan", "apply_plan", "kept_macs_fraction",
           "make_plan", "prune", "resolve_target", "score"]
