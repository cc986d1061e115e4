"""Per-operator time, work and traffic of an ONNX model on this host, from onnxruntime's profiler.

onnxruntime runs an optimized (fused, pre-packed) graph, so the profile's node names are
those of that graph: it is saved next to the profile and read back for the weights' shapes.
Work is counted from the shapes the profiler recorded at run time; traffic is every
activation read and written plus every weight read once.
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
from collections import defaultdict
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort

from edgeprune import runtime

GEMM_FP32 = frozenset({"MatMul", "FusedMatMul", "Gemm", "FusedGemm", "Conv", "FusedConv", "ConvTranspose",
                       "Attention", "MultiHeadAttention", "NhwcFusedConv"})
GEMM_INT8 = frozenset({"MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QLinearMatMul",
                       "ConvInteger", "QLinearConv", "QAttention", "QGemm", "NhwcQLinearConv"})
ROWWISE = frozenset({"LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization",
                     "SkipSimplifiedLayerNormalization", "Softmax", "LogSoftmax", "Gelu", "BiasGelu", "FastGelu",
                     "QuickGelu", "BiasSoftmax"})
"""Memory-class ops onnxruntime splits by rows across threads (they scale with threads; Add, Mul, Transpose,
Reshape did not in MiniLM's profiles)."""
TINY_BYTES = 4096
"""Nodes moving less than this are bookkeeping (shapes, scalars): their time is pure overhead."""
ITEMSIZE = {"float": 4, "float16": 2, "double": 8, "int64": 8, "int32": 4, "int8": 1, "uint8": 1, "bool": 1,
            "int16": 2, "uint16": 2}


@dataclass(frozen=True)
class OpTiming:
    """One node of the optimized graph: its class, work (FLOP or int8 ops), traffic (bytes) and time."""

    name: str
    op_type: str
    op_class: str
    """``gemm_fp32``, ``gemm_int8``, ``memory`` (element-wise, normalization, data movement) or ``tiny``."""
    work: float
    traffic: float
    ms: float
    """Median kernel time over the timed runs."""
    weight_bytes: float = 0.0
    """Bytes of constant inputs (weights): a GEMM with weights is one dynamic quantization turns to int8."""
    conv_kind: str = ""
    """Convolutions: ``conv_kind`` of their weights and strides, which picks the host probe they are priced by."""
    dequantizes: str = ""
    """The integer GEMM (ConvInteger, MatMulInteger) this node serves: the Cast/Mul/bias Add turning its int32 output
    back to float, or an activation or Pad a float Conv would fuse; nodes the float graph does not have."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class OperatorProfile:
    ops: list[OpTiming]
    wall_ms: float
    """Median end-to-end run time under the profiler; minus the kernels' sum, the framework's own time."""
    threads: int
    batch: int
    seq_len: int
    weight_bytes: float = 0.0
    """All constant tensors of the optimized graph."""
    int8_weight_bytes: float = 0.0
    """The 8-bit ones among them (onnxruntime keeps them next to a packed copy, unlike fp32 ones)."""
    peak_activation_bytes: float = 0.0
    """Most bytes of intermediate tensors alive at once, in execution order (each freed after its last reader)."""

    @property
    def kernel_ms(self) -> float:
        return sum(op.ms for op in self.ops)

    def by_class(self) -> dict[str, dict[str, float]]:
        totals: dict[str, dict[str, float]] = defaultdict(lambda: {"ms": 0.0, "work": 0.0, "traffic": 0.0,
                                                                    "nodes": 0})
        for op in self.ops:
            total = totals[op.op_class]
            total["ms"] += op.ms
            total["work"] += op.work
            total["traffic"] += op.traffic
            total["nodes"] += 1
        return dict(totals)


def profile_operators(onnx_path: Path | str, threads: int, *, batch: int = 1, seq_len: int = 128, runs: int = 20,
                      warmup: int = 5) -> OperatorProfile:
    """Run ``onnx_path`` under onnxruntime's profiler and cost every node of the graph it executed."""
    onnx_path = Path(onnx_path)
    runtime.session(onnx_path)  # a clear error for a missing or corrupt file
    with tempfile.TemporaryDirectory(prefix="edgeprune-ops-") as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        sess = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        inputs = runtime.synthetic_feed(sess, batch, seq_len)
        for _ in range(warmup + runs):
            sess.run(None, inputs)
        events = json.loads(Path(sess.end_profiling()).read_text(encoding="utf-8"))
        graph = onnx.load(str(Path(tmp) / "optimized.onnx"), load_external_data=False).graph
    weights = {init.name: (list(init.dims), _initializer_itemsize(init)) for init in graph.initializer}
    nodes = {node.name: node for node in graph.node}
    per_node: dict[str, list[dict[str, Any]]] = defaultdict(list)
    walls = []
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_node[event["name"].removesuffix("_kernel_time")].append(event)
        elif event.get("cat") == "Session" and event["name"] == "SequentialExecutor::Execute":
            walls.append(event["dur"] / 1e3)
    scaffolding = _dequantization_scaffolding(graph, weights)
    ops = []
    for name, records in per_node.items():
        timed = records[warmup:] or records
        args = timed[-1]["args"]
        node = nodes.get(name)
        ops.append(replace(node_timing(name, args["op_name"], args.get("input_type_shape", []),
                                       args.get("output_type_shape", []), node, weights,
                                       ms=statistics.median(r["dur"] for r in timed) / 1e3),
                           dequantizes=scaffolding.get(name, "")))
    output_bytes = {name: [math.prod(shape) * ITEMSIZE.get(dtype, 4) for spec in records[-1]["args"].get(
        "output_type_shape", []) for dtype, shape in spec.items()] for name, records in per_node.items()}
    return OperatorProfile(ops=ops, wall_ms=statistics.median(walls[warmup:] or walls), threads=threads,
                           batch=batch, seq_len=seq_len,
                           weight_bytes=float(sum(math.prod(d) * size for d, size in weights.values())),
                           int8_weight_bytes=float(sum(math.prod(d) for d, size in weights.values() if size == 1)),
                           peak_activation_bytes=_peak_live_bytes(list(per_node), nodes, output_bytes, graph))


FUSED_INTO_FLOAT_CONV = frozenset({"Relu", "Clip", "Sigmoid", "Tanh", "LeakyRelu", "HardSigmoid", "Pad"})
"""Nodes onnxruntime fuses into a float Conv (activations into FusedConv, an explicit Pad into its pads) but leaves
as nodes around a ConvInteger."""


def _dequantization_scaffolding(graph: onnx.GraphProto, weights: dict[str, tuple[list[int], int]]) -> dict[str, str]:
    """Node name → the integer GEMM it dequantizes: the single-consumer chain after a ConvInteger/MatMulInteger of a
    Cast, the Mul by the scales (with the Mul computing them) and an Add of a constant bias (an Add of two
    activations is the model's own), and
    around a ConvInteger what the float graph fuses into its Conv: the activation after it, the Pad before the
    input's DynamicQuantizeLinear."""
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    producer = {tensor: node for node in graph.node for tensor in node.output}
    for node in graph.node:
        for tensor in node.input:
            consumers[tensor].append(node)
    found = {}
    for node in graph.node:
        if node.op_type not in ("ConvInteger", "MatMulInteger"):
            continue
        conv = node.op_type == "ConvInteger"
        quantize = producer.get(node.input[0])
        if conv and quantize is not None and quantize.op_type == "DynamicQuantizeLinear":
            pad = producer.get(quantize.input[0])
            if pad is not None and pad.op_type == "Pad" and len(consumers[pad.output[0]]) == 1:
                found[pad.name] = node.name
        tensor = node.output[0]
        chain = (("Cast",), ("Mul",), ("Add",), FUSED_INTO_FLOAT_CONV - {"Pad"} if conv else ())
        for op_types in chain:
            after = consumers.get(tensor, [])
            if len(after) != 1 or after[0].op_type not in op_types or (
                    after[0].op_type == "Add" and not any(name in weights for name in after[0].input)):
                break
            found[after[0].name] = node.name
            if after[0].op_type == "Mul":  # the scale it multiplies by: input scale × weight scale, one more node
                scales = producer.get(next((t for t in after[0].input if t != tensor), ""))
                if scales is not None and scales.op_type == "Mul" and len(consumers[scales.output[0]]) == 1:
                    found[scales.name] = node.name
            tensor = after[0].output[0]
    return found


def _peak_live_bytes(order: list[str], nodes: dict[str, onnx.NodeProto], output_bytes: dict[str, list[float]],
                     graph: onnx.GraphProto) -> float:
    """Walk the nodes in execution order: outputs become live, inputs die after their last reader."""
    last_reader: dict[str, int] = {}
    for index, name in enumerate(order):
        for tensor in nodes[name].input if name in nodes else ():
            last_reader[tensor] = index
    kept = {out.name for out in graph.output}
    sizes: dict[str, float] = {}
    live = peak = 0.0
    for index, name in enumerate(order):
        node = nodes.get(name)
        if node is None:
            continue
        for tensor, size in zip(node.output, output_bytes.get(name, [])):
            sizes[tensor] = size
            live += size
        peak = max(peak, live)
        for tensor in node.input:
            if tensor in sizes and last_reader.get(tensor) == index and tensor not in kept:
                live -= sizes.pop(tensor)
    return peak


def node_timing(name: str, op_type: str, inputs: list[dict[str, list[int]]], outputs: list[dict[str, list[int]]],
                node: onnx.NodeProto | None, weights: dict[str, tuple[list[int], int]], ms: float) -> OpTiming:
    """One node's class, work, traffic and weights from its run-time shapes and the graph's initializers."""
    names = [n for n in node.input if n] if node is not None else []
    weight_bytes = float(sum(math.prod(weights[n][0]) * weights[n][1] for n in names if n in weights))
    activations = [(dtype, shape) for i, spec in enumerate(inputs) for dtype, shape in spec.items()
                   if i >= len(names) or names[i] not in weights]
    outs = [(dtype, shape) for spec in outputs for dtype, shape in spec.items()]
    traffic = weight_bytes + sum(math.prod(s) * ITEMSIZE.get(d, 4) for d, s in activations + outs)
    out_elements = sum(math.prod(s) for _, s in outs[:1])
    if op_type in GEMM_FP32 or op_type in GEMM_INT8:
        op_class = "gemm_int8" if op_type in GEMM_INT8 else "gemm_fp32"
        if "Attention" in op_type:
            work = _attention_work(inputs, names, weights)
        else:
            work = 2.0 * out_elements * _reduction(op_type, inputs, names, weights)
        kind = ""
        if "Conv" in op_type:
            shape = next((weights[n][0] for n in names[1:] if n in weights and len(weights[n][0]) == 4), None)
            strides = next((list(a.ints) for a in node.attribute if a.name == "strides"), []) if node else []
            kind = conv_kind(shape, strides)
        return OpTiming(name, op_type, op_class, work, traffic, ms, weight_bytes, kind)
    op_class = "tiny" if traffic < TINY_BYTES else "memory"
    return OpTiming(name, op_type, op_class, float(out_elements), traffic, ms, weight_bytes)


def conv_kind(weight_shape: list[int] | None, strides: list[int]) -> str:
    """``pointwise`` (1×1), ``depthwise`` (one input channel per group, 3×3 or smaller), ``depthwise-5x5`` (5×5 or
    larger), ``dense-strided`` or ``dense``: kinds onnxruntime runs through different kernels at very different
    rates. ``dense`` when the weights are not a 4-D initializer (a 1-D or 3-D convolution, or weights computed)."""
    if weight_shape is None:
        return "dense"
    _, per_group, kh, kw = weight_shape
    if per_group == 1:
        return "depthwise-5x5" if kh * kw >= 25 else "depthwise"
    if kh * kw == 1:
        return "pointwise"
    return "dense-strided" if any(s > 1 for s in strides) else "dense"


def _attention_work(inputs: list[dict[str, list[int]]], names: list[str],
                    weights: dict[str, tuple[list[int], int]]) -> float:
    """Fused attention: the Q/K/V projection (input × [H, 3H]) plus scores and context (4·B·S²·H)."""
    batch, seq, hidden = (_shape(inputs, 0) + [1, 1, 1])[:3]
    qkv = next((weights[n][0] for n in names[1:2] if n in weights), [hidden, 3 * hidden])
    return 2.0 * batch * seq * hidden * qkv[-1] + 4.0 * batch * seq * seq * qkv[-1] / 3


def _reduction(op_type: str, inputs: list[dict[str, list[int]]], names: list[str],
               weights: dict[str, tuple[list[int], int]]) -> int:
    """How many products each output element sums (K of a GEMM, Cin/groups·kh·kw of a convolution)."""
    if "Conv" in op_type:
        weight = next((weights[n][0] for n in names[1:] if n in weights and len(weights[n][0]) >= 3), None)
        return math.prod(weight[1:]) if weight else 1
    first = _shape(inputs, 0)
    return first[-1] if first else 1


def _shape(inputs: list[dict[str, list[int]]], index: int) -> list[int]:
    if index >= len(inputs):
        return []
    return next(iter(inputs[index].values()), [])


def _initializer_itemsize(init: onnx.TensorProto) -> int:
    return onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
