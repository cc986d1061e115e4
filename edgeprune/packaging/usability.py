"""Which mobile execution providers can take a model, and whether they would be worth it.

onnxruntime's own mobile usability checker (``onnxruntime.tools.mobile_helpers.usability_checker``)
replays its graph partitioner over the operator lists NNAPI and Core ML support: how many nodes
each provider takes, in how many partitions, and what falls back to the CPU and why (an
unsupported operator, a dynamic input shape, a tensor rank the provider cannot hold). XNNPACK
has no list in the wheel, so ``XnnpackOps`` answers from onnxruntime's XNNPACK documentation.

The verdict follows onnxruntime's rule: every partition boundary is a copy between the CPU and
the accelerator, so a provider that splits the graph into more than two partitions, or takes
little of it, is likely slower than the CPU alone — a known onnxruntime pitfall. XNNPACK runs
on the CPU (no copy, but an NCHW↔NHWC transpose at each boundary), so the same rule is a
conservative reading there. The check runs on the graph after onnxruntime's basic optimizations,
the form partitioning sees, once as the model is and once as if its inputs had fixed sizes, so
the bundle can say whether a fixed-shape variant would help.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import onnx

PROVIDERS = ("NNAPI", "CoreML", "XNNPACK")
"""The mobile execution providers a device profile may list (``runtime.mobile_execution_providers``)."""

VERDICTS = {2: "use", 1: "maybe", 0: "avoid"}
"""onnxruntime's ``PartitioningInfo.TryWithEP`` (YES / MAYBE / NO) in the report's words."""

XNNPACK_OPS = {
    "ai.onnx:AveragePool": "2D pooling only",
    "ai.onnx:Conv": "2D only; weights and bias constant",
    "ai.onnx:ConvTranspose": "2D only; weights and bias constant",
    "ai.onnx:MaxPool": "2D pooling only",
    "ai.onnx:Softmax": "opset 13+: only along the last axis",
    "ai.onnx:QLinearConv": "2D only; constant weights, scales and zero points",
    "ai.onnx:Resize": "bilinear, 2D/4D",
    "ai.onnx:Gemm": "2D only",
    "ai.onnx:MatMul": "2D only",
    "com.microsoft:QLinearAveragePool": "2D only; constant scales and zero points",
    "com.microsoft:QLinearSoftmax": "constant scales and zero points",
    "com.microsoft:QLinearConvTranspose": "constant scales and zero points",
}
"""Operators onnxruntime's XNNPACK execution provider takes (docs/execution-providers/Xnnpack-ExecutionProvider.md,
onnxruntime 1.14+), with their conditions."""
TWO_D_ONLY = {"ai.onnx:Gemm", "ai.onnx:MatMul"}


@dataclass
class EpUsability:
    """How one execution provider would partition the model (counts are nodes of the basic-optimized graph)."""

    provider: str
    nodes: int
    supported_nodes: int
    partitions: int
    unsupported_ops: list[str]
    dynamic_shape_nodes: int
    """Nodes refused only because an input has a dynamic size (fixing the input shapes can win these back)."""
    rank_nodes: int
    """Nodes refused because a tensor's rank exceeds what the provider holds."""
    verdict: str
    """``use`` / ``maybe`` / ``avoid`` (onnxruntime's YES / MAYBE / NO)."""
    reason: str
    caveats: list[str]
    """Conditions on operators the provider took that the checker cannot verify (2D only, constant weights...)."""
    with_fixed_shapes: EpUsability | None = None
    """The same provider if the inputs had fixed sizes; None when the inputs are fixed already."""

    @property
    def coverage(self) -> float:
        return self.supported_nodes / self.nodes if self.nodes else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["coverage"] = round(self.coverage, 4)
        if self.with_fixed_shapes is not None:
            data["with_fixed_shapes"] = self.with_fixed_shapes.to_dict()
        return data


class XnnpackOps:
    """The operator check ``check_partitioning`` asks of a provider, for XNNPACK: its operator table plus its
    2D-only Gemm/MatMul (a transformer's batched 3D MatMuls stay on the CPU)."""

    def __init__(self, ranks: dict[str, int]) -> None:
        self._ranks = ranks
        self._seen: set[str] = set()

    def is_op_supported(self, node: onnx.NodeProto) -> bool:
        name = f"{node.domain or 'ai.onnx'}:{node.op_type}"
        if name not in XNNPACK_OPS:
            return False
        if name in TWO_D_ONLY and any(self._ranks.get(i, 0) != 2 for i in node.input[:2]):
            return False
        self._seen.add(name)
        return True

    def get_caveats(self) -> list[str]:
        return [f"{name}: {XNNPACK_OPS[name]}" for name in sorted(self._seen)]


def analyze(onnx_path: Path, providers: list[str]) -> list[EpUsability]:
    """The partition report of ``onnx_path`` for each of ``providers`` (names from ``PROVIDERS``)."""
    from onnxruntime.tools.onnx_model_utils import ModelProtoWithShapeInfo, optimize_model

    from edgeprune.quiet import quiet

    with tempfile.TemporaryDirectory(prefix="edgeprune-usability-") as tmp:
        basic = Path(tmp) / onnx_path.name
        with quiet():
            optimize_model(onnx_path, basic, use_external_initializers=True)
            model = ModelProtoWithShapeInfo(basic).model_with_shape_info
        fixed_inputs = all(_fixed(value) for value in model.graph.input)
        report = []
        for provider in providers:
            as_is = _partition(model, provider, require_fixed=True)
            as_is.with_fixed_shapes = None if fixed_inputs else _partition(model, provider, require_fixed=False)
            report.append(as_is)
    return report


def fixing_shapes_helps(report: list[EpUsability]) -> bool:
    """Whether any provider's verdict improves if the inputs had fixed sizes."""
    order = list(VERDICTS.values())
    return any(ep.with_fixed_shapes is not None
               and order.index(ep.with_fixed_shapes.verdict) < order.index(ep.verdict) for ep in report)


def _partition(model: onnx.ModelProto, provider: str, require_fixed: bool) -> EpUsability:
    from onnxruntime.tools.mobile_helpers import usability_checker as checker

    if provider == "NNAPI":
        info = checker.check_nnapi_partitions(model, require_fixed)
    elif provider == "CoreML":
        info = checker.check_coreml_partitions(model, require_fixed, "coreml_supported_mlprogram_ops.md")
    else:
        ops = XnnpackOps(_ranks(model))
        info = checker.check_partitioning(model.graph, ops, require_fixed)
    verdict = VERDICTS[int(info.suitability())]
    return EpUsability(
        provider=provider, nodes=info.num_nodes, supported_nodes=info.num_supported_nodes,
        partitions=info.num_partitions, unsupported_ops=sorted(info.unsupported_ops),
        dynamic_shape_nodes=info.nodes_unsupported_due_to_dynamic_input,
        rank_nodes=info.num_unsupported_nodes_due_to_rank, verdict=verdict,
        reason=_reason(info.num_nodes, info.num_supported_nodes, info.num_partitions, verdict),
        caveats=list(info.supported_ops_checker.get_caveats()))


def _reason(nodes: int, supported: int, partitions: int, verdict: str) -> str:
    share = f"{supported} of {nodes} nodes ({supported / nodes:.0%})" if nodes else "no nodes"
    if verdict == "avoid" and partitions > 2:
        return (f"takes {share} in {partitions} partitions: each boundary is a copy to and from the CPU, "
                "so this is likely slower than the CPU alone")
    if verdict == "avoid":
        return f"takes only {share} in {partitions} partition(s): too little to pay for the copies"
    if verdict == "maybe":
        return f"takes {share} in {partitions} partition(s): measure it against the CPU"
    return f"takes {share} in {partitions} partition(s)"


def _fixed(value: onnx.ValueInfoProto) -> bool:
    from onnxruntime.tools.onnx_model_utils import is_fixed_size_tensor

    return is_fixed_size_tensor(value)


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    """The rank of every value whose shape is known (graph inputs, outputs, inferred values, initializers)."""
    graph = model.graph
    ranks = {i.name: len(i.dims) for i in graph.initializer}
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
            ranks[value.name] = len(value.type.tensor_type.shape.dim)
    return ranks
