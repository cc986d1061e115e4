"""What this host's onnxruntime really reaches: GEMM throughput (fp32 and dynamic int8), element-wise throughput
by size, and memory bandwidth.

Measured once per host, onnxruntime version and thread count with small synthetic graphs
(the same kernels models use: MatMul, and MatMulIntegerToFloat after dynamic
quantization), then cached as JSON, because datasheet peaks say little about one VM's
clocks and a profile's figures must be comparable with what the host measured.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeprune import runtime
from edgeprune.files import atomic_write_json
from edgeprune.profiling import health

GEMM_SHAPES = ((128, 384, 384), (128, 384, 1536), (128, 1536, 384), (16, 64, 64), (1024, 768, 768),
               (128, 128, 512), (128, 512, 128))
"""(M, K, N) probes from a small transformer at seq 128 up to a BERT-base-size layer, a tiny one, and MobileBERT's
128-wide bottleneck, between which the int8/fp32 ratio moves most (0.9x at the tiny probe, 3.2x at 128×384×384)."""
CONV_SHAPES = {"pointwise": ((32, 32, 14, 1, 1, 1), (64, 192, 28, 1, 1, 1)),
               "dense": ((16, 16, 14, 1, 3, 1), (32, 32, 56, 1, 3, 1)),
               "dense-strided": ((16, 32, 14, 1, 3, 2), (32, 64, 56, 1, 3, 2)),
               "depthwise": ((64, 64, 14, 64, 3, 1), (96, 96, 56, 96, 3, 1)),
               "depthwise-5x5": ((96, 96, 7, 96, 5, 1), (144, 144, 28, 144, 5, 1))}
"""(Cin, Cout, height = width, groups, kernel, stride) of a small and a large convolution probe per kind
``operators.conv_kind`` tells apart: MobileNet/EfficientNet's 1×1 and 3×3/5×5 depthwise, ResNet's 3×3 at stride 1
and 2. Kinds differ by far more than their sizes explain (a depthwise ConvInteger ran at 0.6 GOPS where a dense one
ran at 14; one depthwise probe priced EfficientNet-Lite0's int8 graph at 2.4× its measured time), and sizes differ
in how they use threads (a 64-channel 14×14 depthwise conv took 11 µs at 1 thread and 23 µs at 2)."""
COPIES = 8
"""Nodes per probe graph. A one-node graph times the thread pool waking up on every run (2-thread element-wise
probes came out slower than 1-thread ones that way), not the steady state a model's run keeps its threads in."""
STREAM_BYTES = 64 * 2**20
"""Per tensor in the bandwidth probe: well beyond any cache here."""
ELEMENTWISE_SIZES = (4096, 65536, 1048576)
"""Elements per tensor of the element-wise probes: a model's activations range over these. Small ones stay in
cache and onnxruntime splits them over fewer threads (or none), so their thread scaling differs from streaming."""


@dataclass(frozen=True)
class GemmRate:
    m: int
    k: int
    n: int
    fp32_gflops: float
    int8_gops: float


@dataclass(frozen=True)
class ConvRate:
    kind: str
    flops: float
    """Per node of the probe: its rate is read at this size."""
    fp32_gflops: float
    int8_gops: float
    """Through ConvInteger, what dynamic quantization makes of a Conv: often far slower than fp32."""


@dataclass(frozen=True)
class StreamRate:
    bytes_moved: float
    """Per run of an element-wise Add: two inputs read, one output written."""
    gbs: float


@dataclass(frozen=True)
class HostRates:
    """Rates at one thread count, keyed like the cache file."""

    threads: int
    gemm: list[GemmRate]
    conv: list[ConvRate]
    bandwidth_gbs: float
    """Sustained bytes moved per second by an element-wise Add (two reads, one write)."""
    call_overhead_us: float
    """Time of one run of a one-node graph on a scalar: onnxruntime's fixed cost per run."""
    elementwise: list[StreamRate] = field(default_factory=list)
    """Element-wise Add throughput by size, the runtime's fixed cost per run taken off."""
    rowwise: list[StreamRate] = field(default_factory=list)
    """Row-wise Softmax throughput by size: normalizations and activations that onnxruntime splits by rows
    across threads (measured 1.5-1.9x faster at 2 threads in MiniLM, where Add, Transpose and Mul were not)."""

    def rate(self, op_type: str, work: float, conv_kind: str, int8: bool) -> float:
        """Operations/s for a GEMM-class node: convolutions from the probe of their kind (``dense`` when the kind is
        unknown), the rest by size."""
        if "Conv" in op_type:
            probes = [c for c in self.conv if c.kind == (conv_kind or "dense")]
            return _log_interpolated(work, [(c.flops, (c.int8_gops if int8 else c.fp32_gflops) * 1e9)
                                            for c in probes])
        return self.gemm_rate(work, int8)

    def stream_rate(self, traffic: float, rowwise: bool = False) -> float:
        """Bytes/s an element-wise (or row-wise) node moving ``traffic`` bytes reaches: log-linear between the
        probes, the streaming bandwidth beyond them."""
        probes = self.rowwise if rowwise else self.elementwise
        return _log_interpolated(traffic, [(r.bytes_moved, r.gbs) for r in probes]
                                 + [(3.0 * STREAM_BYTES, self.bandwidth_gbs)]) * 1e9

    def gemm_rate(self, work: float, int8: bool) -> float:
        """Throughput (operations/s) expected for a GEMM of ``work`` operations: log-linear in size between probes."""
        return _log_interpolated(work, [(2.0 * g.m * g.k * g.n, (g.int8_gops if int8 else g.fp32_gflops) * 1e9)
                                        for g in self.gemm])


def _log_interpolated(work: float, points: list[tuple[float, float]]) -> float:
    """The rate at ``work`` from (work, rate) probes: linear in log(work) between them, flat beyond."""
    points = sorted(points)
    return float(np.interp(np.log(max(work, 1.0)), np.log([p[0] for p in points]), [p[1] for p in points]))


def host_rates(threads: int, cache_dir: Path | None = None, refresh: bool = False) -> HostRates:
    """This host's rates at ``threads``, read from the cache or measured now, together with the 1-thread rates.

    A prediction across thread counts is the ratio of two characterizations, and this VM's speed drifts by tens of
    percent over hours: a 1-thread cache from one day beside a 2-thread one from the next put GEMM scaling at 2.3×.
    So the thread counts are measured side by side, interleaved, and cached together."""
    path = _cache_path(threads, cache_dir)
    if path.is_file() and not refresh:
        data = json.loads(path.read_text(encoding="utf-8"))
        return HostRates(threads=data["threads"], gemm=[GemmRate(**g) for g in data["gemm"]],
                         conv=[ConvRate(**c) for c in data["conv"]], bandwidth_gbs=data["bandwidth_gbs"],
                         call_overhead_us=data["call_overhead_us"],
                         elementwise=[StreamRate(**e) for e in data["elementwise"]],
                         rowwise=[StreamRate(**e) for e in data["rowwise"]])
    measured = measure_rates(sorted({1, threads}))
    for count, rates in measured.items():
        atomic_write_json(_cache_path(count, cache_dir), asdict(rates))
    return measured[threads]


def measure_rates(thread_counts: list[int], rounds: int = 3) -> dict[int, HostRates]:
    """Time every probe graph at every thread count in ``rounds`` interleaved rounds; keep each one's best median.

    2-thread timings on this VM flip between two speeds for seconds at a time; rounds spread
    over the whole characterization let every probe see the fast state, instead of a probe's
    sessions all landing in one slow stretch (a 2-thread int8 GEMM probe measured 968 vs 1422
    GOPS in two back-to-back characterizations that way)."""
    from edgeprune.devices import detect_host
    from edgeprune.int8 import dynamic_int8, int8_scheme

    scheme = int8_scheme(detect_host())
    with tempfile.TemporaryDirectory(prefix="edgeprune-rates-") as tmp:
        work = Path(tmp)
        graphs: dict[str, Path] = {}
        for m, k, n in GEMM_SHAPES:
            graphs[f"mm{m}x{k}x{n}"] = _matmul_graph(work / f"mm{m}x{k}x{n}.onnx", m, k, n)
            graphs[f"q{m}x{k}x{n}"] = dynamic_int8(graphs[f"mm{m}x{k}x{n}"], work / f"q{m}x{k}x{n}.onnx", scheme)
        for kind, shapes in CONV_SHAPES.items():
            for i, shape in enumerate(shapes):
                name = f"{kind}-{i}"
                graphs[f"conv-{name}"] = _conv_graph(work / f"conv-{name}.onnx", *shape)
                graphs[f"qconv-{name}"] = dynamic_int8(graphs[f"conv-{name}"], work / f"qconv-{name}.onnx", scheme)
        for n in ELEMENTWISE_SIZES:
            graphs[f"add{n}"] = _add_graph(work / f"add{n}.onnx", n)
            graphs[f"softmax{n}"] = _softmax_graph(work / f"softmax{n}.onnx", n)
        best = {(name, t): math.inf for name in graphs for t in thread_counts}
        for _ in range(rounds):
            for name, graph in graphs.items():
                repeats = 400 if name.startswith(("add", "softmax")) else 25
                for t in thread_counts:
                    best[name, t] = min(best[name, t], _seconds(graph, t, repeats=repeats, warmup=5))
        add = _add_graph(work / "add.onnx", STREAM_BYTES // 4, chain=1)  # DRAM-bound: waking up is negligible
        scalar = _add_graph(work / "scalar.onnx", 1, chain=1)
        streamed = {t: min(_seconds(add, t, repeats=10) for _ in range(3)) for t in thread_counts}
        overheads = {t: _seconds(scalar, t, repeats=2000) * 1e6 for t in thread_counts}
    return {t: _rates(t, {name: best[name, t] for name in graphs}, 3 * STREAM_BYTES / streamed[t] / 1e9,
                      overheads[t]) for t in thread_counts}


def _rates(threads: int, best: dict[str, float], bandwidth: float, overhead: float) -> HostRates:
    """The rates the probes' best seconds per run imply."""
    gemm = [GemmRate(m, k, n, fp32_gflops=2.0 * m * k * n * COPIES / best[f"mm{m}x{k}x{n}"] / 1e9,
                     int8_gops=2.0 * m * k * n * COPIES / best[f"q{m}x{k}x{n}"] / 1e9) for m, k, n in GEMM_SHAPES]
    conv = []
    for kind, shapes in CONV_SHAPES.items():
        for i, (c_in, c_out, size, groups, kernel, stride) in enumerate(shapes):
            flops = 2.0 * c_out * (size // stride) ** 2 * (c_in // groups) * kernel * kernel
            conv.append(ConvRate(kind, flops, fp32_gflops=flops * COPIES / best[f"conv-{kind}-{i}"] / 1e9,
                                 int8_gops=flops * COPIES / best[f"qconv-{kind}-{i}"] / 1e9))

    def per_node(name: str, moved: float) -> StreamRate:
        kernel_s = max(best[name] - overhead / 1e6, best[name] / 10) / COPIES
        return StreamRate(bytes_moved=moved, gbs=moved / kernel_s / 1e9)

    return HostRates(threads=threads, gemm=gemm, conv=conv, bandwidth_gbs=bandwidth, call_overhead_us=overhead,
                     elementwise=[per_node(f"add{n}", 12.0 * n) for n in ELEMENTWISE_SIZES],
                     rowwise=[per_node(f"softmax{n}", 8.0 * n) for n in ELEMENTWISE_SIZES])


def _seconds(path: Path, threads: int, repeats: int = 100, warmup: int = 20) -> float:
    """Median seconds per run after warm-up."""
    sess = runtime.session(path, threads=threads)
    feed = {i.name: np.random.default_rng(0).standard_normal([d if isinstance(d, int) else 1 for d in i.shape])
            .astype(np.float32) for i in sess.get_inputs()}
    for _ in range(warmup):
        sess.run(None, feed)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        sess.run(None, feed)
        samples.append(time.perf_counter() - start)
    return float(np.median(samples))


def _matmul_graph(path: Path, m: int, k: int, n: int) -> Path:
    """``COPIES`` MatMuls of one input by different weights (different, so no pass merges them)."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32) * 0.05, f"W{i}")
               for i in range(COPIES)]
    nodes = [helper.make_node("MatMul", ["x", f"W{i}"], [f"y{i}"]) for i in range(COPIES)]
    outputs = [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [m, n]) for i in range(COPIES)]
    graph = helper.make_graph(nodes, "gemm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                              outputs, weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _conv_graph(path: Path, c_in: int, c_out: int, size: int, groups: int, kernel: int, stride: int) -> Path:
    """``COPIES`` same-padded convolutions of one input by different weights."""
    rng = np.random.default_rng(0)
    initializers, nodes, outputs = [], [], []
    pad = kernel // 2
    for i in range(COPIES):
        initializers += [numpy_helper.from_array(
            rng.standard_normal((c_out, c_in // groups, kernel, kernel)).astype(np.float32) * 0.05, f"W{i}"),
            numpy_helper.from_array(np.full(c_out, i, dtype=np.float32), f"B{i}")]
        nodes.append(helper.make_node("Conv", ["x", f"W{i}", f"B{i}"], [f"y{i}"], pads=[pad] * 4, group=groups,
                                      strides=[stride, stride]))
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT,
                                                     [1, c_out, size // stride, size // stride]))
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                            [1, c_in, size, size])],
                              outputs, initializers)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _add_graph(path: Path, elements: int, chain: int = COPIES) -> Path:
    """A chain of ``chain`` element-wise Adds (two inputs read, one output written each)."""
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [elements]) for name in ("a", "b")]
    nodes = [helper.make_node("Add", ["a" if i == 0 else f"t{i - 1}", "b"], [f"t{i}" if i < chain - 1 else "y"])
             for i in range(chain)]
    graph = helper.make_graph(nodes, "stream", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [elements])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _softmax_graph(path: Path, elements: int, row: int = 128) -> Path:
    """A chain of ``COPIES`` Softmax nodes over rows of ``row`` values (one read, one write each)."""
    shape = [elements // row, row]
    nodes = [helper.make_node("Softmax", ["x" if i == 0 else f"t{i - 1}"], [f"t{i}" if i < COPIES - 1 else "y"],
                              axis=-1) for i in range(COPIES)]
    graph = helper.make_graph(nodes, "rows", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def cached_rates(cache_dir: Path | None = None) -> dict[int, Path]:
    """This host's cached characterizations (for this onnxruntime), by thread count."""
    prefix = _cache_path(0, cache_dir).name.removesuffix("0t.json")
    return {int(p.name[len(prefix):-len("t.json")]): p
            for p in sorted((cache_dir or health.cache_dir()).glob(f"{prefix}*t.json"))}


def _cache_path(threads: int, cache_dir: Path | None) -> Path:
    return (cache_dir or health.cache_dir()) / f"host-rates-v8-{health.host_digest()}-{threads}t.json"
