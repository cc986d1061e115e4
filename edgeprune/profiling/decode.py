"""Decode ms/token of a decoder LLM on a device profile, predicted from this host's measured decode.

One decode step runs the whole network on one token: it reads every weight once (an embedding
table only its token's row) and the key/value cache of every earlier token, and does about two
FLOPs per weight. A CPU streams those bytes far slower than it can multiply them, so the step is
bound by memory bandwidth: a device with half the bandwidth decodes at about half the speed,
whatever its cores, and int4/int8 weights decode faster because there are fewer bytes to read.

The host's measured decode step is split in two, and each part moves to the device by the
figure that bounds it there:

- its memory-bound share, the bytes a step reads over this host's one-thread streaming
  bandwidth (at most the whole step), by bandwidth: host GB/s / device GB/s. Like predict.py's
  DRAM-bound nodes this does not scale with threads: the profile's figure is what one process
  streams;
- the rest (compute the memory traffic did not hide, dequantization, the runtime's per-node
  time) as this model's forward pass moved: the forward prediction over the host's forward
  measurement, which already scales with the device's threads as predict.py does.

Their sum is floored by the compute bound (two FLOPs per parameter at the device's peak,
``GEMM_EFFICIENCY`` of it, times its thread speedup). The band is predict.py's ``error_band`` on
the same figures the forward prediction rests on, plus one: the split itself.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import onnx

from edgeprune.devices import DeviceProfile, detect_host
from edgeprune.profiling.characterize import host_rates
from edgeprune.profiling.operators import GEMM_INT8
from edgeprune.profiling.predict import (
    GEMM_EFFICIENCY,
    Prediction,
    Rates,
    dram_bandwidth,
    error_band,
    soft_figures,
    thread_speedup,
)
from edgeprune.runtime import CACHE_PREFIX

EMBEDDING_LOOKUPS = frozenset({"Gather", "GatherBlockQuantized"})
"""A weight only these read is an embedding table: a decode step reads one row of it, not the table."""
LOW_BIT_GEMMS = GEMM_INT8 | {"MatMulNBits"}
"""GEMMs on 8- or 4-bit weights: onnxruntime runs them on the int8 path (int4 at accuracy level 4)."""
SPLIT = "the memory-bound share of decode (bytes over this host's bandwidth)"
"""The figure the decode prediction adds to the forward prediction's: derived, so it widens the band."""


@dataclass(frozen=True)
class DecodeTraffic:
    """What one decode step reads and computes, from the model file."""

    weight_bytes: float
    """Weights read per token: every initializer but the embedding tables (int4/int8 ones as stored)."""
    cache_bytes_per_position: float
    """Key/value cache bytes per token of context, summed over layers (read once per step)."""
    parameters: float
    """Weights per token as numbers (an int4 matrix counts K×N, not its packed bytes): two FLOPs each."""
    low_bit: bool
    """Weights in 8 bits or fewer, so the device's int8 peak bounds the compute, not its fp32 one."""

    def bytes_per_token(self, context: float) -> float:
        """Bytes one step reads with ``context`` tokens already in the cache."""
        return self.weight_bytes + self.cache_bytes_per_position * context


def decode_traffic(onnx_path: Path | str) -> DecodeTraffic:
    """Count a decoder's per-step bytes and parameters from its graph (weights' shapes only, no data loaded)."""
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    readers: dict[str, set[str]] = defaultdict(set)
    nbits: dict[str, float] = {}
    for node in graph.node:
        for name in node.input:
            readers[name].add(node.op_type)
        if node.op_type == "MatMulNBits":
            shape = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            nbits[node.input[1]] = float(shape["K"] * shape["N"])
    weight_bytes = parameters = 0.0
    low_bit = False
    for init in graph.initializer:
        read_by = readers[init.name]
        if read_by and read_by <= EMBEDDING_LOOKUPS:
            continue
        elements = math.prod(init.dims)
        weight_bytes += elements * onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
        parameters += nbits.get(init.name, elements)
        low_bit = low_bit or bool(read_by & LOW_BIT_GEMMS)
    cache = 0.0
    for spec in graph.input:
        if spec.name.startswith(CACHE_PREFIX):  # (batch, kv heads, past positions, head size): the fixed axes
            tensor = spec.type.tensor_type
            fixed = [d.dim_value for d in tensor.shape.dim[1:] if d.HasField("dim_value")]
            cache += math.prod(fixed) * onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).itemsize
    return DecodeTraffic(weight_bytes, cache, parameters, low_bit)


@dataclass(frozen=True)
class DecodeFigures:
    """The numbers a decode prediction is computed from: given, so it can be computed (and tested) without timing."""

    host_ms: float
    """This host's measured decode ms/token (median step)."""
    bytes_per_token: float
    flops_per_token: float
    host_bandwidth_gbs: float
    """What this host streams at the thread count ``host_ms`` was measured at."""
    device_bandwidth_gbs: float
    device_flops: float
    """FLOP/s the device's GEMMs reach at its thread count."""
    forward_ratio: float
    """The model's predicted forward pass on the device over its measured one here."""

    @property
    def memory_share(self) -> float:
        """The part of ``host_ms`` spent streaming: the bytes over this host's bandwidth, at most all of it."""
        return min(self.bytes_per_token / (self.host_bandwidth_gbs * 1e9) * 1e3 / self.host_ms, 1.0)


def decode_ms(figures: DecodeFigures) -> dict[str, float]:
    """Device decode ms/token by part: ``bandwidth`` (the memory-bound share, moved by the bandwidth ratio) and
    ``rest`` (moved like the forward pass), or ``compute`` alone when the compute floor is above their sum."""
    f = figures
    bandwidth_ms = f.host_ms * f.memory_share * f.host_bandwidth_gbs / f.device_bandwidth_gbs
    rest_ms = f.host_ms * (1 - f.memory_share) * f.forward_ratio
    compute_ms = f.flops_per_token / f.device_flops * 1e3
    if compute_ms > bandwidth_ms + rest_ms:
        return {"compute": compute_ms}
    return {"bandwidth": bandwidth_ms, "rest": rest_ms}


def predict_decode(traffic: DecodeTraffic, host_ms: float, context: float, device: DeviceProfile, *, threads: int,
                   forward_ratio: float, host: DeviceProfile | None = None, rates: Rates = host_rates) -> Prediction:
    """Predict decode ms/token on ``device`` at ``threads`` from ``host_ms``, this host's decode ms/token at one
    thread with ``context`` tokens in the cache on average; ``forward_ratio`` is the model's forward pass predicted
    on ``device`` over measured here (``Prediction.latency_ms`` / the host's median)."""
    host = host or detect_host()
    host_gbs = rates(1).bandwidth_gbs
    device_gbs = dram_bandwidth(device)
    memory = device.memory
    if device_gbs is None:
        device_gbs = host_gbs / forward_ratio
        bandwidth_basis = f"no bandwidth in {device.name}'s profile: the memory-bound share moved like the forward pass"
    elif memory.bandwidth_measured is not None:
        bandwidth_basis = (f"{device.name} streams {device_gbs:.1f} GB/s ({memory.bandwidth_measured.kind}: "
                           f"{memory.bandwidth_measured.source})")
    else:
        bandwidth_basis = (f"no measured bandwidth for {device.name}: {device_gbs:.1f} GB/s assumed, a share of its "
                           f"theoretical {memory.bandwidth_theoretical.to('GB/s'):.1f} GB/s (DRAM efficiency)")
    cluster = device.cluster
    per_cycle = cluster.int8_ops_per_cycle if traffic.low_bit else cluster.fp32_flops_per_cycle
    speedup = thread_speedup(device, threads)
    peak = per_cycle.value * cluster.clock_ghz * 1e9 * GEMM_EFFICIENCY * speedup
    figures = DecodeFigures(host_ms=host_ms, bytes_per_token=traffic.bytes_per_token(context),
                            flops_per_token=2.0 * traffic.parameters, host_bandwidth_gbs=host_gbs,
                            device_bandwidth_gbs=device_gbs, device_flops=peak, forward_ratio=forward_ratio)
    parts = decode_ms(figures)
    band, band_basis = error_band(device, threads, 1, host, [*soft_figures(device), SPLIT])
    if device.calibration.band is not None:
        band_basis.append("its calibration anchors time forward passes: not applied to decode")
    share, streamed_mb = figures.memory_share, figures.bytes_per_token / 1e6
    basis = [f"decode: {share:.0%} of this host's {host_ms:.3g} ms/token streams {streamed_mb:.3g} MB "
             f"(weights {traffic.weight_bytes / 1e6:.3g} MB + KV cache at {context:.0f} tokens) at its one-thread "
             f"{host_gbs:.1f} GB/s, moved by bandwidth: {bandwidth_basis}; the other {1 - share:.0%} moved like "
             f"the forward pass (x{forward_ratio:.2f})",
             f"decode: compute floor 2 FLOP x {traffic.parameters / 1e6:.3g} M parameters at {peak / 1e9:.3g} G/s "
             f"({'int8' if traffic.low_bit else 'fp32'} peak x {GEMM_EFFICIENCY} GEMM efficiency x {speedup:.2g} "
             f"threads' speedup): {'binding' if 'compute' in parts else 'not binding'}",
             *(f"decode: {line}" for line in band_basis)]
    return Prediction(device=device.name, threads=threads, latency_ms=sum(parts.values()), band=band, basis=basis,
                      per_class_ms=parts)
