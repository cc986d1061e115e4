"""How far an int8 model's outputs are from its fp32 parent, and which nodes put the error there."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from edgeprune import runtime
from edgeprune.quantization.forms import Feed, FeedReader
from edgeprune.quiet import quiet


def first_outputs(onnx_path: Path, feeds: list[Feed]) -> list[np.ndarray]:
    """The model's first output on each feed, one float64 row per sample."""
    sess = runtime.session(onnx_path)
    return [sess.run(None, feed)[0].reshape(len(next(iter(feed.values()))), -1).astype(np.float64) for feed in feeds]


def mean_cosine(expected: list[np.ndarray], actual: list[np.ndarray]) -> float:
    """Mean cosine similarity, per sample, between two models' outputs (as from ``first_outputs``)."""
    cosines = []
    for e, a in zip(expected, actual):
        cosines.extend((e * a).sum(1) / np.maximum(np.linalg.norm(e, axis=1) * np.linalg.norm(a, axis=1), 1e-30))
    return float(np.mean(cosines))


@dataclass(frozen=True)
class Damage:
    """The quantization error one node adds, and which nodes must stay fp32 to remove it."""

    node: str
    added: float
    """Relative error (noise norm / signal norm) of its output minus that of its worst input."""
    fp32_nodes: tuple[str, ...]
    """The node and the producers of its activation inputs: a QDQ graph quantizes a tensor when its producer or
    its reader is quantized, so both must be left out."""


def node_damage(fp32: Path, qdq: Path, feeds: list[Feed]) -> list[Damage]:
    """Nodes of the ``fp32`` graph ranked by the quantization error they add in its ``qdq`` form, worst first.

    Every node output keeps its name in a QDQ graph, so onnxruntime's QDQ debugger can record
    each one in both models on ``feeds``, as its readers see it (dequantized); its relative error
    against fp32 says how much error has reached it. Error accumulates along the graph, so a node is
    charged only with what it adds: the relative error of its output minus that of its worst
    input — its quantized weights and output. An outlier-heavy activation feeding a MatMul puts
    that MatMul at the top: the activation's error is small in norm, the MatMul's output is not.
    """
    from onnxruntime.quantization.qdq_loss_debug import (
        DEQUANT_OUTPUT_SUFFIX,
        collect_activations,
        modify_model_output_intermediate_tensors,
    )

    activations = {}
    with tempfile.TemporaryDirectory() as tmp, quiet():
        for name, path in (("fp32", fp32), ("qdq", qdq)):
            augmented = Path(tmp) / f"{name}.onnx"
            modify_model_output_intermediate_tensors(path, augmented)
            activations[name] = collect_activations(str(augmented), FeedReader(feeds))
    quantized = activations["qdq"]
    # what readers see: the dequantized value where a tensor was quantized (a fused ReLU lives only there)
    seen = {tensor: quantized.get(tensor + DEQUANT_OUTPUT_SUFFIX, quantized.get(tensor))
            for tensor in activations["fp32"]}
    relative = {tensor: _relative_error(values, seen[tensor])
                for tensor, values in activations["fp32"].items() if seen[tensor] is not None}
    nodes = onnx.load(str(fp32), load_external_data=False).graph.node
    producer = {output: node.name for node in nodes for output in node.output}
    damage = []
    for node in nodes:
        outputs = [relative[o] for o in node.output if o in relative]
        if node.name and outputs:
            inputs = [i for i in node.input if i in relative]
            added = max(outputs) - max((relative[i] for i in inputs), default=0.0)
            fp32_nodes = (node.name, *sorted({producer[i] for i in inputs if producer.get(i)}))
            damage.append(Damage(node.name, added, fp32_nodes))
    return sorted(damage, key=lambda d: (-d.added, d.node))


def _relative_error(expected: list[np.ndarray], actual: list[np.ndarray]) -> float:
    """‖actual − expected‖ / ‖expected‖ over all batches, in float64 and over finite entries only (attention masks
    hold float32's lowest value, whose square overflows float32)."""
    e = np.concatenate([np.ravel(x) for x in expected]).astype(np.float64)
    a = np.concatenate([np.ravel(x) for x in actual]).astype(np.float64)
    if e.shape != a.shape:
        raise ValueError(f"a tensor has {e.size} values in the fp32 model and {a.size} in the quantized one: the two "
                         "graphs cannot be compared node by node")
    finite = np.isfinite(e) & np.isfinite(a)
    return float(np.linalg.norm((a - e)[finite]) / max(np.linalg.norm(e[finite]), 1e-30))
