"""Latency of a model on a device profile, predicted from this host's per-operator measurements.

Every node measured here is moved to the target by the ratio of how fast the two run that
kind of work: GEMMs by their peak fp32 or int8 rate (work per cycle × clock × thread
scaling, with this host's rates measured by ``characterize``), large element-wise nodes by
memory bandwidth, small ones by vector rate, bookkeeping nodes and the runtime's own time
by clock. The answer carries an error band that widens with the distance between host and
target (other thread count, same ISA family, other ISA family) and with every figure in
the chain that is assumed or derived rather than measured.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from edgeprune.devices import DeviceProfile, Quantity, detect_host
from edgeprune.profiling.characterize import HostRates, host_rates
from edgeprune.profiling.operators import FUSED_INTO_FLOAT_CONV, ROWWISE, OperatorProfile, OpTiming

DRAM_BOUND_BYTES = 4 * 2**20
"""Element-wise nodes moving more than this stream from DRAM; smaller ones stay in cache."""
DEFAULT_THREAD_SCALING = 0.8
"""Parallel efficiency per added thread when a profile does not give one (assumed)."""
DRAM_EFFICIENCY = 0.35
"""Share of theoretical DRAM bandwidth one process streams, when no measured figure exists (assumed)."""
BAND_SAME_SETUP, BAND_OTHER_THREADS, BAND_SAME_ISA, BAND_CROSS_ISA = 0.05, 0.10, 0.20, 0.35
BAND_PER_SOFT_FIGURE = 0.05
"""Added to the band for each figure in the chain that is assumed or derived, not measured."""
MAX_BAND = 0.8
GEMM_EFFICIENCY = 0.85
"""Share of peak onnxruntime's GEMMs reach on large shapes (assumed, the same on host and target)."""


@dataclass(frozen=True)
class Prediction:
    device: str
    threads: int
    latency_ms: float
    band: float
    """Relative half-width: the true value is expected within latency × (1 ± band)."""
    basis: list[str] = field(default_factory=list)
    """Why the band is this wide."""
    per_class_ms: dict[str, float] = field(default_factory=dict)

    @property
    def low_ms(self) -> float:
        """Never below zero: a calibrated band can reach ±100% and more (``calibrate.ANCHOR_BAND``)."""
        return self.latency_ms * max(1 - self.band, 0.0)

    @property
    def high_ms(self) -> float:
        return self.latency_ms * (1 + self.band)

    def to_dict(self) -> dict[str, object]:
        return {"device": self.device, "threads": self.threads, "latency_ms": round(self.latency_ms, 4),
                "low_ms": round(self.low_ms, 4), "high_ms": round(self.high_ms, 4), "band": round(self.band, 3),
                "basis": self.basis, "per_class_ms": {k: round(v, 4) for k, v in self.per_class_ms.items()}}


Rates = Callable[[int], HostRates]


def predict_latency(ops: OperatorProfile, device: DeviceProfile, *, threads: int | None = None,
                    host: DeviceProfile | None = None, rates: Rates = host_rates,
                    measured_ms: float | None = None) -> Prediction:
    """Predict the median latency of the model profiled in ``ops`` (on this host) on ``device``.

    ``measured_ms`` is the host's own median latency at ``ops.threads`` without the profiler;
    the per-node times are rescaled to it, since profiling adds its own overhead.
    """
    host = host or detect_host()
    threads = threads or device.runtime.threads
    source = rates(ops.threads)
    scale = _ratios(device, threads, host, source, rates)
    per_class: dict[str, float] = defaultdict(float)
    for op in ops.ops:
        per_class[op.op_class] += op.ms * scale.node(op)
    per_class["runtime"] = max(ops.wall_ms - ops.kernel_ms, 0.0) * scale.clock
    factor = 1.0 if measured_ms is None else measured_ms / ops.wall_ms
    calibration = device.calibration
    if not device.is_host and calibration.latency_factor is not None:
        factor *= calibration.latency_factor.value
    per_class = {k: v * factor for k, v in per_class.items()}
    total = sum(per_class.values())
    if not device.is_host and calibration.band is not None:
        band = calibration.band.value
        basis = [f"calibrated on {len(calibration.anchors)} on-device measurement(s): ±{band:.0%}"]
    else:
        band, basis = error_band(device, threads, ops.threads, host, scale.soft_figures)
    if not device.is_host:
        basis += device_assumptions(device, threads, int8=any(op.op_class == "gemm_int8" for op in ops.ops))
    return Prediction(device=device.name, threads=threads, latency_ms=total, band=band, basis=basis,
                      per_class_ms=dict(per_class))


def device_assumptions(device: DeviceProfile, threads: int, int8: bool) -> list[str]:
    """What the prediction assumes of the target's cores that no measurement here can check, named so a user with
    the device knows what to verify: the int8 path, fp16 arithmetic left unused, the cluster the threads run on."""
    cluster = device.cluster
    said = []
    if int8 and device.cpu.arch == "arm64":
        rate = f"{cluster.int8_ops_per_cycle.value:g} ops/cycle ({cluster.int8_ops_per_cycle.kind})"
        said.append(f"int8 GEMMs at the SDOT dot-product rate, {rate}" if device.has("dotprod") else
                    f"no dot product (ARMv8.0): int8 GEMMs by widening multiply-adds, {rate}")
    if device.has("fp16"):
        said.append("fp32 graphs run in fp32: the cores' fp16 arithmetic is assumed unused by onnxruntime's CPU "
                    "provider")
    if len(device.cpu.clusters) > 1:
        others = ", ".join(f"{c.core} x{c.count.value:g}" for i, c in enumerate(device.cpu.clusters)
                           if i != device.runtime.cluster)
        said.append(f"{threads} thread(s) on the {cluster.core} cluster ({cluster.count.value:g} cores) only; "
                    f"{others} idle" + (f"; {threads - int(cluster.count.value)} thread(s) beyond the cluster "
                                        f"assumed as fast" if threads > cluster.count.value else ""))
    return said


@dataclass
class _Scale:
    """Multipliers from a host node's time to the target's."""

    source: HostRates
    gemm: Callable[[str, float, str, bool], float]
    """(op type, work, convolution kind, int8) → target rate in operations/s."""
    memory: Callable[[float, bool], float]
    """(bytes moved, row-wise op) of an element-wise node → host rate over the target's."""
    clock: float
    soft_figures: list[str]

    def node(self, op: OpTiming) -> float:
        if op.op_class in ("gemm_fp32", "gemm_int8"):
            int8 = op.op_class == "gemm_int8"
            return (self.source.rate(op.op_type, op.work, op.conv_kind, int8)
                    / self.gemm(op.op_type, op.work, op.conv_kind, int8))
        if op.op_class == "memory":
            return self.memory(op.traffic, op.op_type in ROWWISE)
        return self.clock


def _ratios(device: DeviceProfile, threads: int, host: DeviceProfile, source: HostRates, rates: Rates) -> _Scale:
    if device.is_host:
        target = rates(threads)

        def measured(traffic: float, rowwise: bool) -> float:  # like the probe of their kind and size
            return source.stream_rate(traffic, rowwise) / target.stream_rate(traffic, rowwise)

        return _Scale(source, target.rate, measured, 1.0, [])
    one = rates(1)
    cluster = device.cluster
    parallel = thread_speedup(device, threads)
    # This host's peaks from what its GEMMs reach (its clock under load is not reliably visible in a VM).
    host_fp32 = max(g.fp32_gflops for g in one.gemm) * 1e9 / GEMM_EFFICIENCY
    host_int8 = max(g.int8_gops for g in one.gemm) * 1e9 / GEMM_EFFICIENCY
    fp32 = cluster.fp32_flops_per_cycle.value * cluster.clock_ghz * 1e9 / host_fp32
    int8 = cluster.int8_ops_per_cycle.value * cluster.clock_ghz * 1e9 / host_int8
    clock = host_fp32 / (host.cluster.fp32_flops_per_cycle.value * 1e9) / cluster.clock_ghz

    def gemm(op_type: str, work: float, conv_kind: str, is_int8: bool) -> float:
        return one.rate(op_type, work, conv_kind, is_int8) * (int8 if is_int8 else fp32) * parallel

    bandwidth = dram_bandwidth(device)
    if bandwidth is None:
        bandwidth = one.bandwidth_gbs * fp32
    # cache-resident element-wise nodes: this host's element-wise rate, scaled by the cores' vector rate
    cache = source.bandwidth_gbs / (one.bandwidth_gbs * fp32 * parallel)
    dram = source.bandwidth_gbs / bandwidth

    def moved(traffic: float, _rowwise: bool) -> float:  # no probes on the device: both kinds scale alike
        return dram if traffic >= DRAM_BOUND_BYTES else cache

    return _Scale(source, gemm, moved, clock, soft_figures(device))


def thread_speedup(device: DeviceProfile, threads: int) -> float:
    """How many one-thread cores' worth of GEMM work ``threads`` threads do on ``device``: each added thread adds
    the profile's calibrated parallel efficiency (``DEFAULT_THREAD_SCALING`` when it has none)."""
    scaling = device.calibration.thread_scaling
    return 1 + (threads - 1) * (scaling.value if scaling is not None else DEFAULT_THREAD_SCALING)


def dram_bandwidth(device: DeviceProfile) -> float | None:
    """GB/s one process streams from ``device``'s DRAM: the profile's measured figure, else ``DRAM_EFFICIENCY`` of
    its theoretical one; None when the profile gives neither."""
    memory = device.memory
    if memory.bandwidth_measured is not None:
        return memory.bandwidth_measured.to("GB/s")
    if memory.bandwidth_theoretical is not None:
        return memory.bandwidth_theoretical.to("GB/s") * DRAM_EFFICIENCY
    return None


def soft_figures(device: DeviceProfile) -> list[str]:
    """What a prediction for ``device`` rests on that is assumed or derived, not measured: its own figures of those
    kinds, the GEMM efficiency, an uncalibrated thread scaling, a bandwidth not measured (each widens the band)."""
    soft = [name for name, q in _figures(device) if q is not None and q.kind in ("assumed", "derived")]
    soft.append("GEMM efficiency")
    if device.calibration.thread_scaling is None:
        soft.append("thread scaling")
    if device.memory.bandwidth_measured is None:
        soft.append("DRAM efficiency" if device.memory.bandwidth_theoretical is not None
                    else "bandwidth (none in the profile)")
    return soft


def _figures(device: DeviceProfile) -> list[tuple[str, Quantity | None]]:
    """The device figures a prediction rests on."""
    cluster = device.cluster
    return [("clock", cluster.sustained_clock or cluster.max_clock), ("fp32 per cycle", cluster.fp32_flops_per_cycle),
            ("int8 per cycle", cluster.int8_ops_per_cycle),
            ("bandwidth", device.memory.bandwidth_measured or device.memory.bandwidth_theoretical)]


def error_band(device: DeviceProfile, threads: int, source_threads: int, host: DeviceProfile,
               soft: list[str]) -> tuple[float, list[str]]:
    """(relative half-width, why): by the distance from this host (same setup, other threads, same or other ISA
    family), plus ``BAND_PER_SOFT_FIGURE`` for each of ``soft``, at most ``MAX_BAND``."""
    if device.is_host:
        if threads == source_threads:
            return BAND_SAME_SETUP, ["measured on this host with the same threads"]
        return BAND_OTHER_THREADS, [f"this host, {source_threads} → {threads} threads via measured GEMM scaling"]
    same_isa = device.cpu.arch == host.cpu.arch
    base = BAND_SAME_ISA if same_isa else BAND_CROSS_ISA
    basis = [f"{'same' if same_isa else 'other'} ISA family ({host.cpu.arch} → {device.cpu.arch}): ±{base:.0%}"]
    if soft:
        basis.append(f"not measured: {', '.join(soft)} (+{BAND_PER_SOFT_FIGURE:.0%} each)")
    return min(base + BAND_PER_SOFT_FIGURE * len(soft), MAX_BAND), basis


def swap_precision(ops: OperatorProfile, to_int8: bool, rates: Rates = host_rates) -> OperatorProfile:
    """The profile the same model would have with its weight GEMMs in int8 (dynamic quantization) or back in fp32.

    Each GEMM that has weights is re-timed by the ratio of this host's measured fp32 and
    int8 rates at its size, convolutions by the conv probes of their kind. The int8 probes
    time whole quantized graphs (quantizing the input, the integer kernel, casting and
    scaling its output back), so going back to fp32 re-times an integer GEMM together with
    its dequantization scaffolding and drops that scaffolding, the activations and Pads a
    float Conv fuses and the graph's standalone DynamicQuantizeLinear nodes. Other
    element-wise nodes are kept as they are. The runtime's own time (the wall time the
    kernels do not account for) is a cost per node executed, 2-4 µs here in fp32 and int8
    graphs alike from MobileBERT's 1,700 nodes to a 9-node CNN, so it shrinks with the
    nodes dropped: EfficientNet-Lite0's int8 graph runs 356 nodes, its fp32 graph 53.
    """
    source = rates(ops.threads)
    scaffolding: dict[str, float] = defaultdict(float)
    for op in ops.ops:
        if op.dequantizes and op.op_type not in FUSED_INTO_FLOAT_CONV:  # fused away in fp32: dropped, not re-timed
            scaffolding[op.dequantizes] += op.ms
    moved = []
    for op in ops.ops:
        if to_int8 and op.op_class == "gemm_fp32" and op.weight_bytes > 0:
            ratio = (source.rate(op.op_type, op.work, op.conv_kind, False)
                     / source.rate(op.op_type, op.work, op.conv_kind, True))
            moved.append(replace(op, op_class="gemm_int8", ms=op.ms * ratio, weight_bytes=op.weight_bytes / 4))
        elif not to_int8 and op.op_class == "gemm_int8":
            ratio = (source.rate(op.op_type, op.work, op.conv_kind, True)
                     / source.rate(op.op_type, op.work, op.conv_kind, False))
            moved.append(replace(op, op_class="gemm_fp32", ms=(op.ms + scaffolding[op.name]) * ratio,
                                 weight_bytes=op.weight_bytes * 4))
        elif not to_int8 and (op.op_type == "DynamicQuantizeLinear" or op.dequantizes):
            continue
        else:
            moved.append(op)
    runtime_ms = max(ops.wall_ms - ops.kernel_ms, 0.0) * len(moved) / max(len(ops.ops), 1)
    return replace(ops, ops=moved, wall_ms=sum(op.ms for op in moved) + runtime_ms)
