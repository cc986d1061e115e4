"""Channel pruning for CNNs: score units → allocate (per space, or globally by score per MAC) → slice → recover.

The transformer pruner's vocabulary carries over: the same criteria names (plus ``l1`` and
``bn_scale``, which only make sense for convolutions), the same ``Accumulation`` of
per-batch scores, and a JSON plan that rebuilds the pruned model from the dense one.
A unit is a set of coupled channels (see ``edgeprune.models.conv``); calibration batches
are image tensors (N, C, H, W).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeprune.errors import PlanError
from edgeprune.files import atomic_write_text
from edgeprune.models.conv import ChannelGraph, channel_graph, input_hooks, layer_macs, slice_channels, unit_macs
from edgeprune.pruning.conv_distill import DISTILL_DEFAULTS, DistillOptions, Tick, distill_channels, split_held_aside
from edgeprune.pruning.conv_recover import first_output, recover_channels
from edgeprune.pruning.importance import MEAN, PROJECTIONS, Accumulation

Loss = Callable[[nn.Module, torch.Tensor], torch.Tensor]
"""A scalar loss of the model on one calibration batch, for Taylor/Fisher scores (e.g. a VAE's reconstruction)."""

DEFAULT_MULTIPLE = 8
"""Kept channel counts are rounded up to this multiple unless told otherwise: onnxruntime's blocked (NCHWc)
convolutions need multiples of 8 (AVX2, NEON) or 16 (AVX-512); off-multiple counts measured 2x SLOWER than
the dense model on this host (benchmarks/cnn.py)."""

CHANNEL_RECOVERY = ("none", "bn", "lstsq", "distill")
"""``bn`` re-estimates BatchNorm statistics; ``lstsq`` re-fits the layers that read pruned channels; ``distill``
trains the pruned model towards the dense one on the (unlabeled) calibration images, from the start
``DistillOptions.start`` names, fitted on its training images only (never the held-aside ones its guard reads)."""


@dataclass(frozen=True)
class ChannelPlan:
    """Which units of each space a pruned CNN keeps (positions within the space, in the dense numbering)."""

    spaces: dict[str, tuple[int, ...]]
    dense_sizes: dict[str, int]
    criterion: str = "magnitude"
    target: dict[str, float] = field(default_factory=dict)
    allocation: str = "uniform"
    multiple: int = 1
    accumulate: str = "sum"
    ema_decay: float = 0.9
    calibration_images: int = 0
    seed: int = 0
    within: str | None = None
    """The submodule pruning was limited to (None = the whole model)."""
    recovery: dict[str, Any] = field(default_factory=lambda: {"method": "none"})

    def keep_mask(self, graph: ChannelGraph) -> torch.Tensor:
        """The plan as a bool per unit of ``graph`` (the dense model's graph)."""
        sizes = {space.name: len(space.units) for space in graph.spaces}
        if sizes != self.dense_sizes:
            raise PlanError("the plan was made for a model with other channel groups",
                            "apply the plan to the dense model it was made for")
        keep = torch.zeros(graph.num_units, dtype=torch.bool)
        for space in graph.spaces:
            keep[torch.tensor(space.units)[list(self.spaces[space.name])]] = True
        return keep

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["spaces"] = {name: list(kept) for name, kept in self.spaces.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChannelPlan:
        try:
            return cls(**{**data, "spaces": {k: tuple(v) for k, v in data["spaces"].items()}})
        except (TypeError, KeyError, AttributeError) as exc:
            raise PlanError(f"not a channel pruning plan ({exc})", "pass a plan written by edgeprune") from None

    def save(self, path: Path | str) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: Path | str) -> ChannelPlan:
        return cls.from_dict(json.loads(Path(path).read_text()))


def self_label_loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of a classifier against its own predictions: a label-free Taylor/Fisher loss that,
    unlike random output directions, weighs what decides the predicted class."""
    logits = model(batch)
    return nn.functional.cross_entropy(logits, logits.argmax(dim=1).detach(), reduction="sum")


def channel_scores(model: nn.Module, graph: ChannelGraph, criterion: str = "magnitude",
                   batches: Sequence[torch.Tensor] | None = None, accumulation: Accumulation = MEAN,
                   loss: Loss | None = None, seed: int = 0) -> torch.Tensor:
    """Importance of every unit of ``graph`` (higher = keep), one float per unit."""
    torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        if criterion in ("magnitude", "l1"):
            return _weight_norms(model, graph, p=2 if criterion == "magnitude" else 1)
        if criterion == "bn_scale":
            return _bn_scales(model, graph)
        if criterion == "activation":
            return accumulation.fold_tensors([_activation(model, graph, b)] for b in batches or ())[0]
        if criterion in ("taylor", "fisher"):
            square = criterion == "fisher"
            return accumulation.fold_tensors([_mask_gradients(model, graph, b, loss, square)]
                                             for b in batches or ())[0]
    finally:
        model.train(was_training)
    raise PlanError(f"unknown channel importance criterion '{criterion}'",
                    "choose one of: magnitude, l1, bn_scale, activation, taylor, fisher")


def _add(scores: torch.Tensor, ids: torch.Tensor, values: torch.Tensor) -> None:
    prunable = ids >= 0
    scores.index_add_(0, ids[prunable], values[prunable].float())


@torch.no_grad()
def _weight_norms(model: nn.Module, graph: ChannelGraph, p: int) -> torch.Tensor:
    """Sum over a unit's layers of the Lp norm of the weights it owns (filter rows, reader columns)."""
    scores = torch.zeros(graph.num_units)
    for (name, role), ids in graph.slots.items():
        if role != "bn":
            weight = model.get_submodule(name).weight
            dim = 1 if role == "in" else 0
            _add(scores, ids, weight.transpose(0, dim).reshape(weight.shape[dim], -1).norm(p=p, dim=1))
    return scores


@torch.no_grad()
def _bn_scales(model: nn.Module, graph: ChannelGraph) -> torch.Tensor:
    """Network-slimming score: the sum of |γ| of a unit's BatchNorm channels."""
    scores, seen = torch.zeros(graph.num_units), torch.zeros(graph.num_units)
    for (name, role), ids in graph.slots.items():
        if role == "bn":
            _add(scores, ids, model.get_submodule(name).weight.abs())
            _add(seen, ids, torch.ones(len(ids)))
    if bool((seen == 0).any()):
        raise PlanError("bn_scale needs a BatchNorm on every prunable channel group and some have none",
                        "use --criterion magnitude or taylor for this model")
    return scores


@torch.no_grad()
def _activation(model: nn.Module, graph: ChannelGraph, batch: torch.Tensor) -> torch.Tensor:
    """Wanda-style ‖X_c‖·Σ|W[:, c]| at every layer that reads the unit's channels."""
    readers = graph.consumers()
    inputs: dict[str, torch.Tensor] = {}
    with input_hooks(model, readers, lambda name, x: inputs.__setitem__(name, x)):
        model(batch)
    scores = torch.zeros(graph.num_units)
    for name in readers:
        x = inputs[name]
        norms = x.transpose(0, 1).reshape(x.shape[1], -1).norm(dim=1)
        weight = model.get_submodule(name).weight.abs()
        _add(scores, graph.slots[(name, "in")], norms * weight.transpose(0, 1).reshape(weight.shape[1], -1).sum(1))
    return scores


def _mask_gradients(model: nn.Module, graph: ChannelGraph, batch: torch.Tensor, loss: Loss | None,
                    square: bool) -> torch.Tensor:
    """Gradient of the loss w.r.t. a mask on each unit (held at 1), applied where its channels are read.

    Removing a unit is exactly zeroing its channels at every reader, so the mask sits
    there. Without a ``loss``, the loss is vᵀy for random directions v of the output y.
    """
    mask = torch.ones(graph.num_units, requires_grad=True)
    padded = torch.cat([mask, torch.ones(1)])  # index −1 (never pruned) reads the constant 1

    def scale(name: str, x: torch.Tensor) -> torch.Tensor:
        m = padded[graph.slots[(name, "in")]]
        return x * m.view(1, -1, *([1] * (x.dim() - 2)))

    total = torch.zeros(graph.num_units)
    with input_hooks(model, graph.consumers(), scale):
        for _ in range(1 if loss is not None else PROJECTIONS):
            if loss is not None:
                value = loss(model, batch)
            else:
                output = first_output(model(batch))
                value = (output * torch.randn_like(output)).sum()
            (grad,) = torch.autograd.grad(value, [mask])
            total += grad.pow(2) if square else grad.abs()
    return total


def allocate(graph: ChannelGraph, scores: torch.Tensor, keep_ratio: float, multiple: int = 1) -> torch.Tensor:
    """Keep the top ``keep_ratio`` of every space by score, rounded up to a multiple of ``multiple`` channels."""
    return keep_per_space(graph, lambda units: keep_ratio * len(units), scores, multiple)


def allocate_global(graph: ChannelGraph, scores: torch.Tensor, costs: torch.Tensor, keep_units: int,
                    multiple: int = 1) -> torch.Tensor:
    """Keep the ``keep_units`` units with the highest score per MAC across all spaces, then round every
    space up to a multiple of ``multiple`` (at least ``multiple`` per space, so no layer is emptied).

    Scores must be comparable across spaces: Taylor and Fisher estimate the same loss change
    everywhere; weight norms and BN scales are not comparable (use uniform allocation for them).
    """
    order = torch.argsort(-(scores / costs.clamp(min=1.0)), stable=True)
    chosen = torch.zeros(graph.num_units, dtype=torch.bool)
    chosen[order[:keep_units]] = True
    # rounding up adds the best-scoring units the global ranking left out
    priority = scores - (~chosen).float() * 1e30
    return keep_per_space(graph, lambda units: int(chosen[units].sum()), priority, multiple)


def rounded_count(wanted: float, size: int, multiple: int) -> int:
    """``wanted`` channels of a space of ``size`` rounded up to a multiple of ``multiple`` (at least one multiple,
    at most all)."""
    return min(size, max(multiple, math.ceil(round(wanted, 6) / multiple) * multiple))


def keep_per_space(graph: ChannelGraph, wanted: Callable[[torch.Tensor], float], priority: torch.Tensor,
                   multiple: int) -> torch.Tensor:
    """In every space keep ``wanted(units)`` units rounded up to a multiple of ``multiple`` (at least one
    multiple, at most all), highest ``priority`` first; ties go to the lower unit."""
    keep = torch.ones(graph.num_units, dtype=torch.bool)
    for space in graph.spaces:
        units = torch.tensor(space.units)
        keep[units] = False
        count = rounded_count(wanted(units), len(units), multiple)
        keep[units[torch.argsort(-priority[units], stable=True)[:count]]] = True
    return keep


ALLOCATIONS = ("uniform", "global")


def allocate_for_macs(model: nn.Module, graph: ChannelGraph, scores: torch.Tensor, keep_flops: float,
                      allocation: str = "uniform", multiple: int = 1) -> torch.Tensor:
    """The smallest allocation (uniform ratio, or global unit count) keeping at least ``keep_flops`` of the MACs."""
    if allocation not in ALLOCATIONS:
        raise PlanError(f"unknown allocation '{allocation}'", f"use one of: {', '.join(ALLOCATIONS)}")
    dense = layer_macs(model, graph)
    costs = unit_macs(model, graph)

    def keep_at(x: float) -> torch.Tensor:
        if allocation == "uniform":
            return allocate(graph, scores, x, multiple)
        return allocate_global(graph, scores, costs, round(x * graph.num_units), multiple)

    low, high = 0.0, 1.0
    for _ in range(20):
        mid = (low + high) / 2
        if layer_macs(model, graph, keep_at(mid)) >= keep_flops * dense:
            high = mid
        else:
            low = mid
    return keep_at(high)


def prune_channels(model: nn.Module, example: torch.Tensor, *, keep_flops: float | None = None,
                   keep_ratio: float | None = None, criterion: str = "magnitude",
                   batches: Sequence[torch.Tensor] | None = None, accumulation: Accumulation = MEAN,
                   allocation: str = "uniform", multiple: int = DEFAULT_MULTIPLE, recovery: str = "none",
                   loss: Loss | None = None, within: str | None = None,
                   scores: torch.Tensor | None = None, seed: int = 0, distill: DistillOptions = DISTILL_DEFAULTS,
                   keep: torch.Tensor | None = None, tick: Tick | None = None) -> tuple[nn.Module, ChannelPlan]:
    """A physically smaller copy of the CNN ``model`` and the plan that reproduces it; ``model`` is untouched.

    Target: ``keep_flops`` (fraction of conv/linear MACs at ``example``'s size) or
    ``keep_ratio`` (fraction of every channel space). ``multiple`` rounds every space's kept
    count up to that many channels (see ``channel_multiple``). ``within`` limits pruning to
    one submodule. Pass ``scores`` from ``channel_scores`` to plan several targets from one scoring, or ``keep``
    (one bool per unit of the dense graph, e.g. from ``allocate_for_latency``) to prune exactly those units.
    ``distill`` sets the ``distill`` recovery's budget; ``tick(step, steps)`` reports its progress.
    """
    if (keep_flops is None) + (keep_ratio is None) + (keep is None) != 2:
        raise PlanError("give exactly one channel target", "pass keep_flops, keep_ratio or keep")
    target = keep_flops if keep_flops is not None else keep_ratio if keep_ratio is not None else 1.0
    if not 0.0 < target <= 1.0:
        raise PlanError(f"channel target {target} is outside (0, 1]", "pass a fraction such as 0.7")
    if keep_ratio is not None and allocation != "uniform":
        raise PlanError("a per-space keep ratio is a uniform allocation", "pass keep_flops for global allocation")
    if recovery not in CHANNEL_RECOVERY:
        raise PlanError(f"unknown channel recovery '{recovery}'", f"use one of: {', '.join(CHANNEL_RECOVERY)}")
    if recovery != "none" and not batches:
        raise PlanError(f"recovery '{recovery}' needs calibration images", "pass calibration batches")
    graph = channel_graph(model, example, within)
    if graph.num_units == 0:
        raise PlanError("the model has no prunable channels", "check `within`, or prune a model with conv layers")
    if keep is not None and len(keep) != graph.num_units:
        raise PlanError(f"the kept-unit mask has {len(keep)} entries for {graph.num_units} units",
                        "allocate on this model's channel graph")
    if keep is None and scores is None:
        scores = channel_scores(model, graph, criterion, batches, accumulation, loss, seed)
    if keep_ratio is not None:
        keep = allocate(graph, scores, keep_ratio, multiple)
    elif keep_flops is not None:
        keep = allocate_for_macs(model, graph, scores, keep_flops, allocation, multiple)
    pruned = slice_channels(copy.deepcopy(model), graph, keep).eval()
    if recovery == "distill":
        train, _ = split_held_aside(torch.cat(list(batches)))
        start = recover_channels(model, pruned, graph, keep, list(train.split(len(batches[0]))),
                                 distill.starting(synthesized=False))
        report = distill_channels(model, pruned, graph, keep, torch.cat(list(batches)), distill, tick).to_dict()
        report["start"] = start
    else:
        report = recover_channels(model, pruned, graph, keep, batches or [], recovery)
    plan = ChannelPlan(
        spaces={s.name: tuple(torch.nonzero(keep[list(s.units)]).flatten().tolist()) for s in graph.spaces},
        dense_sizes={s.name: len(s.units) for s in graph.spaces}, criterion=criterion,
        target=({"keep_flops": keep_flops} if keep_flops is not None else {"keep_ratio": keep_ratio}
                if keep_ratio is not None else {"keep_units": int(keep.sum())}),
        allocation=allocation, multiple=multiple, accumulate=accumulation.mode, ema_decay=accumulation.decay,
        calibration_images=sum(len(b) for b in batches or ()), seed=seed, within=within, recovery=report)
    return pruned, plan


def apply_channel_plan(model: nn.Module, example: torch.Tensor, plan: ChannelPlan) -> nn.Module:
    """Rebuild the pruned architecture from the dense ``model`` (a copy). Recovery is not replayed: to ship
    recovered weights, save the pruned model's ``state_dict`` with the plan and load it into this rebuild."""
    graph = channel_graph(model, example, plan.within)
    return slice_channels(copy.deepcopy(model), graph, plan.keep_mask(graph)).eval()


def channel_multiple(isa: Sequence[str]) -> int:
    """Channel count multiple that suits a target's int8 kernels: 16 for AVX-512, 8 for AVX2 / NEON, else 1.

    Kernels process channels in vector-width blocks, so a count just past a multiple pays
    for a whole extra block (see benchmarks/cnn.py for whether rounding pays on this host).
    """
    flags = set(isa)
    if flags & {"avx512f", "avx512_vnni", "amx"}:
        return 16
    if flags & {"avx2", "neon", "dotprod", "i8mm"}:
        return 8
    return 1
