"""The built-in anchor models ``edgeprune calibrate PROFILE --remote URL`` measures on the device.

Calibration needs models timed on the device itself; without an agent the user types those timings in. With one,
these anchors are built here (``onnx.helper``, seeded: no download, no torch) and measured there. Each is a
transformer's MLP block — ``x @ W1 + b1 → Relu → @ W2 + b2``, hidden size 4·d, over a sequence — at three widths,
from one bound by per-operator overheads to one bound by GEMM throughput and memory, so the fitted latency factor
is an average over the regimes real models mix.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgeprune.agent.protocol import MeasureSettings

WIDTHS = (128, 256, 512)
"""Model widths d (MLP hidden 4·d): 0.5, 2 and 8 MB of fp32 weights; 17-270 MFLOP per run at 128 tokens."""
OPSET = 17


def write_anchors(folder: Path) -> list[Path]:
    """The anchor models in ``folder``, one ``anchor-mlp-<d>.onnx`` per width."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    paths = []
    for d in WIDTHS:
        weights = {"w1": (d, 4 * d), "b1": (4 * d,), "w2": (4 * d, d), "b2": (d,)}
        initializers = [numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32),
                                                name) for name, shape in weights.items()]
        nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["hb"]),
                 helper.make_node("Relu", ["hb"], ["a"]), helper.make_node("MatMul", ["a", "w2"], ["o"]),
                 helper.make_node("Add", ["o", "b2"], ["y"])]
        graph = helper.make_graph(nodes, f"anchor-mlp-{d}",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", d])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", d])],
                                  initializers)
        path = Path(folder) / f"anchor-mlp-{d}.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]), str(path))
        paths.append(path)
    return paths


Measure = Callable[[Path, MeasureSettings], float]
"""(model, settings) → median ms on the device (``RemoteDevice.measure(...).latency("p50")[0]``)."""


def measure_anchors(measure: Measure, folder: Path, threads: int, runs: int = 50,
                    tick: Callable[[int, int], None] | None = None) -> dict[Path, float]:
    """The anchors written to ``folder``, each with its median ms on the device at ``threads``, as ``calibrate``
    takes them (memory is not measured: calibration fits latency only)."""
    anchors = write_anchors(folder)
    settings = MeasureSettings(threads=threads, runs=runs, memory=False)
    found = {}
    for done, path in enumerate(anchors, start=1):
        found[path] = measure(path, settings)
        if tick is not None:
            tick(done, len(anchors))
    return found
