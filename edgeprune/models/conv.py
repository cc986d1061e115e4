"""Channel groups of a CNN, found by tracing it with torch.fx, and physical channel slicing.

Any ``nn.Module`` built from convolutions, linear layers, BatchNorm, activations, pooling,
element-wise arithmetic, concatenation and flattening can be pruned without an adapter:
``channel_graph`` follows every channel from the layer that writes it to every layer that
reads it. Channels joined by a residual add or an element-wise product (a squeeze-and-
excitation gate), or passed through a depthwise convolution, must go together; each such
coupled set is one prunable **unit**. Units whose layers have the same structure (the
expanded channels of one block, the residual stream of one stage) form a **space**, and
allocation keeps the same fraction of every space. Channels that reach the model's input
or output, or pass through an operation this module does not know, are never pruned.
"""

from __future__ import annotations

import contextlib
import math
import operator
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from edgeprune.errors import UnsupportedModelError

SLICEABLE = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.BatchNorm1d)
"""Modules whose weights are sliced; traced as leaves so padding wrappers (``Conv2dStaticSamePadding``) stay whole."""

_PASSTHROUGH_MODULES = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.GELU,
                        nn.LeakyReLU, nn.ELU, nn.Mish, nn.Dropout, nn.Dropout2d, nn.Identity, nn.MaxPool2d,
                        nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.ZeroPad2d, nn.Upsample,
                        nn.Flatten)
_PASSTHROUGH_FUNCTIONS = {F.relu, F.relu6, F.silu, F.hardswish, F.hardsigmoid, F.gelu, F.leaky_relu, F.elu,
                          F.dropout, F.adaptive_avg_pool2d, F.avg_pool2d, F.max_pool2d, F.interpolate,
                          torch.relu, torch.sigmoid, torch.tanh, torch.flatten, torch.reshape, torch.clamp}
_PASSTHROUGH_METHODS = {"relu", "sigmoid", "tanh", "clamp", "contiguous", "clone", "flatten", "view", "reshape",
                        "mean", "sum", "amax"}
_ELEMENTWISE = {operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub, torch.mul,
                torch.div, "add", "sub", "mul", "div", "add_", "mul_"}
_CONCAT = {torch.cat, torch.concat}


@dataclass(frozen=True)
class Space:
    """Units with the same set of layers: allocation keeps the same fraction of each space."""

    name: str
    """The first layer (in forward order) that writes these channels."""
    units: tuple[int, ...]


@dataclass
class ChannelGraph:
    """Where every prunable unit lives: per (module, role), the unit of each position (−1 = never pruned).

    Roles: ``out`` (output channels/features of a conv or linear layer), ``in`` (its input
    channels/features), ``dw`` (a depthwise convolution's channels), ``bn`` (a BatchNorm's).
    """

    slots: dict[tuple[str, str], torch.Tensor]
    spaces: list[Space]
    num_units: int
    spatial: dict[str, int]
    """Output pixels (H·W) of each convolution at the traced input size, for MAC counts."""
    order: dict[str, int]
    """Forward order of every sliced module."""
    scope: str | None = None
    """The submodule pruning was limited to (``within``); MAC counts cover only it."""

    def consumers(self) -> list[str]:
        """Modules that read prunable channels (in forward order): where masks and refits apply."""
        names = [m for (m, role), ids in self.slots.items() if role == "in" and bool((ids >= 0).any())]
        return sorted(names, key=self.order.__getitem__)

    def kept_positions(self, module: str, role: str, keep: torch.Tensor) -> torch.Tensor:
        """Indices (in the dense numbering) a module keeps along ``role`` when ``keep[unit]`` says which units stay."""
        ids = self.slots[(module, role)]
        kept = (ids < 0) | keep[ids.clamp(min=0)]
        return kept.nonzero().flatten()


class _Tracer(fx.Tracer):
    """fx tracer that keeps sliceable layers whole and remembers which module a tracing error came from."""

    def __init__(self) -> None:
        super().__init__()
        self.failed_in: str | None = None

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, SLICEABLE) or super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):  # fx's own signature
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:  # re-raised: only notes which of the user's modules failed to trace
            if self.failed_in is None:
                self.failed_in = f"{self.path_of_module(m)} ({type(m).__name__})"
            raise


def trace(model: nn.Module, example: torch.Tensor) -> fx.GraphModule:
    """An fx graph of ``model`` with every node's output shape at ``example``'s size."""
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # tracing runs the user's own forward code: whatever it raises is about their model
        where = tracer.failed_in or f"the forward of {type(model).__name__}"
        raise UnsupportedModelError(
            f"torch.fx cannot trace {where}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
            "make that module's forward free of data-dependent Python control flow, or prune a model without it",
        ) from exc
    module = fx.GraphModule(model, graph)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        ShapeProp(module).propagate(example)
    model.train(was_training)
    return module


class _Units:
    """Union-find over channel labels; a label marked fixed makes its whole set unprunable."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.fixed: list[bool] = []

    def fresh(self, n: int, fixed: bool = False) -> list[int]:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        self.fixed.extend([fixed] * n)
        return list(range(start, start + n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: list[int], b: list[int]) -> None:
        for i, j in zip(a, b):
            ri, rj = self.find(i), self.find(j)
            if ri != rj:
                self.parent[rj] = ri
                self.fixed[ri] = self.fixed[ri] or self.fixed[rj]

    def fix(self, labels: list[int]) -> None:
        for i in labels:
            self.fixed[self.find(i)] = True


def channel_graph(model: nn.Module, example: torch.Tensor, within: str | None = None) -> ChannelGraph:
    """Trace ``model`` on ``example`` (one input batch) and find its prunable units.

    ``within`` restricts pruning to units whose layers all sit under that submodule name
    (e.g. ``"encoder"`` prunes a VAE's encoder and leaves its decoder whole).
    """
    gm = trace(model, example)
    units = _Units()
    labels: dict[fx.Node, list[int]] = {}
    slots: dict[tuple[str, str], list[int]] = {}
    spatial: dict[str, int] = {}
    order: dict[str, int] = {}

    def record(module: str, role: str, ids: list[int]) -> None:
        order.setdefault(module, len(order))
        if (module, role) in slots:  # a module called twice shares its weights: both uses are one unit
            units.union(slots[(module, role)], ids)
        else:
            slots[(module, role)] = ids

    for node in gm.graph.nodes:
        inputs = [n for n in node.all_input_nodes if n in labels]
        if node.op == "placeholder":
            _label_new(node, labels, units, fixed=True)
        elif node.op == "output":
            for n in inputs:
                units.fix(labels[n])
        elif node.op == "call_module" and isinstance(gm.get_submodule(node.target), SLICEABLE):
            _label_layer(node, gm.get_submodule(node.target), labels, units, record, spatial)
        elif _passes_channels(node, gm, labels):
            labels[node] = labels[node.all_input_nodes[0]]
        elif _is_elementwise(node) and _shape(node) is not None:
            _label_elementwise(node, inputs, labels, units)
        elif _is_concat(node) and _shape(node) is not None:
            labels[node] = [label for n in node.args[0] for label in labels[n]]
        elif _is_flatten(node, gm, labels):
            source = node.all_input_nodes[0]
            repeat = math.prod(_shape(source)[2:])
            labels[node] = [label for label in labels[source] for _ in range(repeat)]
        else:
            for n in inputs:
                units.fix(labels[n])
            _label_new(node, labels, units, fixed=True)
    return _resolve(units, slots, spatial, order, within)


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return tuple(shape) if shape is not None else None


def _channels(node: fx.Node) -> int | None:
    shape = _shape(node)
    return shape[1] if shape is not None and len(shape) >= 2 else None


def _label_new(node: fx.Node, labels: dict, units: _Units, fixed: bool) -> None:
    channels = _channels(node)
    if channels is not None:
        labels[node] = units.fresh(channels, fixed=fixed)


def _label_layer(node: fx.Node, module: nn.Module, labels: dict, units: _Units, record, spatial: dict) -> None:
    name = str(node.target)
    source = labels.get(node.all_input_nodes[0])
    if source is None:
        _label_new(node, labels, units, fixed=True)
        return
    if isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
        record(name, "bn", source)
        labels[node] = source
        return
    if isinstance(module, nn.Linear) and len(_shape(node)) != 2:
        units.fix(source)  # a linear map over a non-channel axis: leave its channels alone
        _label_new(node, labels, units, fixed=True)
        return
    if isinstance(module, nn.Conv2d):
        spatial[name] = math.prod(_shape(node)[2:])
        if module.groups > 1:
            if module.groups == module.in_channels == module.out_channels:
                record(name, "dw", source)
                labels[node] = source
            else:  # grouped or channel-multiplier convolutions are not sliced
                units.fix(source)
                _label_new(node, labels, units, fixed=True)
            return
    record(name, "in", source)
    labels[node] = units.fresh(_channels(node))
    record(name, "out", labels[node])


def _passes_channels(node: fx.Node, gm: fx.GraphModule, labels: dict) -> bool:
    """A one-input op that keeps every channel where it was (activations, pooling, dropout, reductions over space)."""
    if not node.all_input_nodes or node.all_input_nodes[0] not in labels:
        return False
    source = node.all_input_nodes[0]
    if _channels(node) != _channels(source) or len(_shape(node) or ()) < 2:
        return False
    if node.op == "call_module":
        known = isinstance(gm.get_submodule(node.target), _PASSTHROUGH_MODULES)
    elif node.op == "call_function":
        known = node.target in _PASSTHROUGH_FUNCTIONS
    else:
        known = node.op == "call_method" and node.target in _PASSTHROUGH_METHODS
    if not known or len([n for n in node.all_input_nodes if n in labels]) != 1:
        return False
    rank = len(_shape(source))
    if node.target in ("mean", "sum", "amax"):
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
        return bool(dims) and all(d % rank not in (0, 1) for d in dims)
    return _shape(node)[0] == _shape(source)[0] and len(_shape(node)) == rank


def _is_elementwise(node: fx.Node) -> bool:
    return node.op in ("call_function", "call_method") and node.target in _ELEMENTWISE


def _label_elementwise(node: fx.Node, inputs: list[fx.Node], labels: dict, units: _Units) -> None:
    """Operands with the output's channel count share channels; a broadcast operand (1 channel) is never pruned."""
    channels = _channels(node)
    full = [n for n in inputs if _channels(n) == channels]
    for n in inputs:
        if _channels(n) != channels:
            units.fix(labels[n])
    if not full:
        _label_new(node, labels, units, fixed=True)
        return
    for other in full[1:]:
        units.union(labels[full[0]], labels[other])
    labels[node] = labels[full[0]]


def _is_concat(node: fx.Node) -> bool:
    if node.op != "call_function" or node.target not in _CONCAT:
        return False
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    parts = node.args[0]
    return dim in (1, -3) and all(isinstance(p, fx.Node) for p in parts)


def _is_flatten(node: fx.Node, gm: fx.GraphModule, labels: dict) -> bool:
    """(N, C, H, W) → (N, C·H·W): each channel becomes H·W consecutive features."""
    if not node.all_input_nodes or node.all_input_nodes[0] not in labels:
        return False
    source, shape = _shape(node.all_input_nodes[0]), _shape(node)
    flattening = node.target in (torch.flatten, "flatten", "view", "reshape", torch.reshape) or (
        node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.Flatten))
    return (flattening and source is not None and shape is not None and len(shape) == 2
            and shape[0] == source[0] and shape[1] == math.prod(source[1:]))


def _resolve(units: _Units, slots: dict[tuple[str, str], list[int]], spatial: dict[str, int],
             order: dict[str, int], within: str | None) -> ChannelGraph:
    roots = {}
    members: dict[int, set[tuple[str, str]]] = defaultdict(set)
    for key, labels in slots.items():
        for label in labels:
            members[units.find(label)].add(key)
    if within is not None:
        prefix = within.rstrip(".") + "."
        for root, keys in members.items():
            if any(not module.startswith(prefix) for module, _ in keys):
                units.fixed[root] = True
    for root in sorted(members, key=lambda r: min(order[m] for m, _ in members[r])):
        if not units.fixed[root] and any(role == "out" for _, role in members[root]):
            roots[root] = len(roots)
        # a set nobody writes (only the input) or one that is fixed is never pruned
    unit_slots = {key: torch.tensor([roots.get(units.find(label), -1) for label in labels], dtype=torch.long)
                  for key, labels in slots.items()}
    by_signature: dict[tuple, list[int]] = defaultdict(list)
    for root, unit in roots.items():
        by_signature[tuple(sorted(members[root], key=lambda k: (order[k[0]], k[1])))].append(unit)
    spaces = []
    for signature, space_units in by_signature.items():
        writer = next(module for module, role in signature if role == "out")
        spaces.append(Space(name=writer, units=tuple(space_units)))
    spaces.sort(key=lambda s: min(s.units))
    return ChannelGraph(slots=unit_slots, spaces=spaces, num_units=len(roots), spatial=spatial, order=order,
                        scope=within)


def layer_macs(model: nn.Module, graph: ChannelGraph, keep: torch.Tensor | None = None) -> int:
    """Multiply-accumulates of the convolutions and linear layers (within the graph's scope) with only
    ``keep`` units (None = all)."""
    keep = torch.ones(graph.num_units, dtype=torch.bool) if keep is None else keep
    total = 0
    for name in graph.order:
        if graph.scope is not None and not name.startswith(graph.scope.rstrip(".") + "."):
            continue
        module = model.get_submodule(name)
        if isinstance(module, nn.Conv2d):
            out_ch, in_ch = (_kept(graph, name, role, keep, size)
                             for role, size in (("out", module.out_channels), ("in", module.in_channels)))
            if (name, "dw") in graph.slots:
                out_ch = in_ch = _kept(graph, name, "dw", keep, module.out_channels)
                total += out_ch * math.prod(module.kernel_size) * graph.spatial[name]
            else:
                total += out_ch * in_ch // module.groups * math.prod(module.kernel_size) * graph.spatial[name]
        elif isinstance(module, nn.Linear):
            total += (_kept(graph, name, "out", keep, module.out_features)
                      * _kept(graph, name, "in", keep, module.in_features))
    return total


def unit_macs(model: nn.Module, graph: ChannelGraph) -> torch.Tensor:
    """MACs each unit costs in the dense model (every layer it touches, other channels at dense size)."""
    costs = torch.zeros(graph.num_units)
    for (name, role), ids in graph.slots.items():
        module = model.get_submodule(name)
        if role == "bn":
            continue
        if isinstance(module, nn.Linear):
            per_position = module.in_features if role == "out" else module.out_features
        else:
            kernel = math.prod(module.kernel_size) * graph.spatial[name]
            per_position = kernel * {"out": module.in_channels // module.groups, "in": module.out_channels,
                                     "dw": 1}[role]
        prunable = ids >= 0
        costs.index_add_(0, ids[prunable], torch.full((int(prunable.sum()),), float(per_position)))
    return costs


def _kept(graph: ChannelGraph, module: str, role: str, keep: torch.Tensor, size: int) -> int:
    if (module, role) not in graph.slots:
        return size
    return len(graph.kept_positions(module, role, keep))


@torch.no_grad()
def slice_channels(model: nn.Module, graph: ChannelGraph, keep: torch.Tensor) -> nn.Module:
    """Remove, in place, every channel of the units where ``keep`` is False; return ``model``."""
    for (name, role), _ in graph.slots.items():
        module = model.get_submodule(name)
        index = graph.kept_positions(name, role, keep)
        if role == "bn":
            for attr in ("weight", "bias", "running_mean", "running_var"):
                _take(module, attr, 0, index)
            module.num_features = len(index)
        elif role in ("out", "dw"):
            _take(module, "weight", 0, index)
            _take(module, "bias", 0, index)
            if isinstance(module, nn.Linear):
                module.out_features = len(index)
            else:
                module.out_channels = len(index)
                if role == "dw":
                    module.in_channels = module.groups = len(index)
        else:
            _take(module, "weight", 1, index)
            if isinstance(module, nn.Linear):
                module.in_features = len(index)
            else:
                module.in_channels = len(index)
    return model


def _take(module: nn.Module, attr: str, dim: int, index: torch.Tensor) -> None:
    value = getattr(module, attr, None)
    if value is None:
        return
    sliced = value.index_select(dim, index).clone()
    if isinstance(value, nn.Parameter):
        setattr(module, attr, nn.Parameter(sliced, requires_grad=value.requires_grad))
    else:
        setattr(module, attr, sliced)


@contextlib.contextmanager
def input_hooks(model: nn.Module, names: list[str], fn: Callable[[str, torch.Tensor], torch.Tensor | None]) -> Iterator:
    """Run ``fn(name, input)`` before each named module; a returned tensor replaces its input."""

    def pre_hook(module, args, name):
        out = fn(name, args[0])
        return None if out is None else (out, *args[1:])

    handles = [model.get_submodule(n).register_forward_pre_hook(lambda m, a, n=n: pre_hook(m, a, n)) for n in names]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
