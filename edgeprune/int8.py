"""The int8 flavour a CPU runs well, and onnxruntime's dynamic int8 in that flavour.

This sits below profiling (the host characterization times int8 GEMM probes made with it) and
below quantization (which builds every other int8 form on the same scheme).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx

from edgeprune.devices import DeviceProfile
from edgeprune.quiet import quiet


@dataclass(frozen=True)
class Int8Scheme:
    """How weights and activations are quantized for one instruction set."""

    weight_type: str
    activation_type: str
    reduce_range: bool
    per_channel: bool
    reason: str


def int8_scheme(device: DeviceProfile) -> Int8Scheme:
    """Pick the int8 flavour the target's integer dot-product instructions run well.

    x86 without VNNI multiplies u8×s8 with VPMADDUBSW, whose 16-bit sums saturate: weights
    use 7 bits (reduce_range), activations stay u8 (s8 activations measured 2× slower than
    fp32 here). VNNI (AVX-512 or AVX-VNNI) accumulates in 32 bits, so full 8-bit weights are
    safe. ARM64 runs u8/s8 through its own GEMM kernels (dotprod where present).
    """
    if device.cpu.arch == "arm64":
        how = "with SDOT/UDOT" if device.has("dotprod") else "without dotprod (slower int8)"
        return Int8Scheme("int8", "uint8", False, True, f"arm64 {how}: s8 weights per channel, u8 activations")
    if device.has("avx512_vnni", "avx_vnni", "amx_int8"):
        return Int8Scheme("int8", "uint8", False, True, "x86 with VNNI: 8-bit s8 weights, u8 activations")
    return Int8Scheme("int8", "uint8", True, True,
                      "x86 without VNNI: 7-bit weights avoid u8s8 saturation; u8 activations (s8 is 2x slower)")


def dynamic_int8(src: Path, dst: Path, scheme: Int8Scheme, op_types: Sequence[str] | None = None) -> Path:
    """onnxruntime's dynamic int8 of ``src`` (every op type it can, or only ``op_types``), in ``scheme``'s flavour."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    weight_type = QuantType.QInt8 if scheme.weight_type == "int8" else QuantType.QUInt8
    with quiet():
        quantize_dynamic(src, dst, weight_type=weight_type, per_channel=scheme.per_channel,
                         op_types_to_quantize=list(op_types) if op_types is not None else None,
                         reduce_range=scheme.reduce_range,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return dst
