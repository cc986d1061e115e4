"""ONNX → int8 with onnxruntime, in the form that is fastest on the target and never slower than fp32.

Candidates are dynamic int8 of the exported graph and dynamic int8 of the graph fused by
onnxruntime's transformer optimizer (Attention, SkipLayerNorm, BiasGelu). Which wins depends
on the model and the CPU, so they are timed side by side at one thread (one-thread timings
are stable on this class of machine, two-thread ones are not) against the fp32 parent, and
the fastest is kept — fp32 itself when no int8 form beats it.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgeprune import runtime
from edgeprune.errors import ModelLoadError
from edgeprune.files import size_mb, staged_dir
from edgeprune.profile.devices import DeviceProfile, load_profile
from edgeprune.profile.measure import compare_latency
from edgeprune.quiet import quiet

FUSION_ATOL = 1e-3
"""Max abs difference a fused fp32 graph may show against the unfused one before fusion is rejected."""


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


@dataclass
class QuantizeResult:
    onnx_path: Path
    chosen: str
    """``int8``, ``int8-fused`` or ``fp32`` (when no int8 form was faster)."""
    scheme: Int8Scheme
    size_before_mb: float
    size_after_mb: float
    p50_ms: dict[str, float]
    """One-thread p50 of every candidate, measured side by side."""
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"onnx_path": str(self.onnx_path), "chosen": self.chosen, "scheme": asdict(self.scheme),
                "size_before_mb": round(self.size_before_mb, 3), "size_after_mb": round(self.size_after_mb, 3),
                "p50_ms_1_thread": {k: round(v, 3) for k, v in self.p50_ms.items()}, "notes": self.notes}


def quantize(onnx_path: Path | str, out_dir: Path | str, device: DeviceProfile | str = "host", *,
             seq_len: int = 128, rounds: int = 3, runs: int = 30) -> QuantizeResult:
    """Write the fastest of {int8, fused int8, fp32} to ``out_dir/model.onnx`` with the input's sidecar files."""
    onnx_path = Path(onnx_path)
    device = device if isinstance(device, DeviceProfile) else load_profile(device)
    runtime.session(onnx_path)  # fail early, with a clear error, on a missing or corrupt model
    scheme = int8_scheme(device)
    out_dir = Path(out_dir)
    with staged_dir(out_dir, inputs=[onnx_path.parent]) as tmp:
        work = tmp / "candidates"
        work.mkdir()
        candidates = {"fp32": onnx_path, "int8": dynamic_int8(onnx_path, work / "int8.onnx", scheme)}
        notes = []
        fused = _fuse_transformer(onnx_path, work / "fused.onnx")
        if fused is None:
            notes.append("transformer fusion found nothing to fuse")
        elif (diff := _max_abs_diff(onnx_path, fused)) > FUSION_ATOL:
            notes.append(f"fused graph rejected: differs from the export by {diff:.2g}")
        else:
            candidates["int8-fused"] = dynamic_int8(fused, work / "int8-fused.onnx", scheme)
        stats = compare_latency(list(candidates.values()), threads=1, rounds=rounds, runs=runs, seq_len=seq_len)
        p50 = {name: s.p50 for name, s in zip(candidates, stats)}
        chosen = min(p50, key=p50.get)
        if chosen == "fp32":
            notes.append("no int8 form was faster than fp32 on this host; kept fp32")
        shutil.copy2(candidates[chosen], tmp / "model.onnx")
        shutil.rmtree(work)
        _copy_sidecars(onnx_path.parent, tmp)
    return QuantizeResult(onnx_path=out_dir / "model.onnx", chosen=chosen, scheme=scheme,
                          size_before_mb=size_mb(onnx_path), size_after_mb=size_mb(out_dir / "model.onnx"),
                          p50_ms=p50, notes=notes)


def dynamic_int8(src: Path, dst: Path, scheme: Int8Scheme) -> Path:
    """onnxruntime's dynamic int8 of every MatMul/Gemm weight in ``src``, in ``scheme``'s flavour."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    weight_type = QuantType.QInt8 if scheme.weight_type == "int8" else QuantType.QUInt8
    with quiet():
        quantize_dynamic(src, dst, weight_type=weight_type, per_channel=scheme.per_channel,
                         reduce_range=scheme.reduce_range,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return dst


STATIC_METHODS = ("minmax", "entropy", "percentile")


def static_int8(src: Path, dst: Path, scheme: Int8Scheme, calibration: list[np.ndarray],
                method: str = "minmax") -> Path:
    """onnxruntime's static QDQ int8 of ``src``: activation ranges from ``calibration`` inputs (arrays for the
    graph's first input), weights per channel, in ``scheme``'s flavour.

    Convolutions need this form: dynamic int8 turns them into ConvInteger, which is slower
    than fp32 Conv on x86; QDQ Conv runs as a fused QLinearConv.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise ModelLoadError(f"unknown calibration method '{method}'", f"use one of: {', '.join(methods)}")
    if not calibration:
        raise ModelLoadError("static int8 needs calibration inputs and got none", "pass a few real input batches")
    name = runtime.session(src).get_inputs()[0].name

    class Reader:
        def __init__(self) -> None:
            self.items = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            item = next(self.items, None)
            return None if item is None else {name: item}

    with quiet():
        quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=scheme.per_channel,
                        reduce_range=scheme.reduce_range, calibrate_method=methods[method],
                        weight_type=QuantType.QInt8 if scheme.weight_type == "int8" else QuantType.QUInt8,
                        activation_type=QuantType.QUInt8 if scheme.activation_type == "uint8" else QuantType.QInt8)
    return dst


def _fuse_transformer(src: Path, dst: Path) -> Path | None:
    """onnxruntime's BERT fusions; head count and hidden size are read from the graph (0 = detect)."""
    from onnxruntime.transformers.optimizer import optimize_model

    with quiet():
        optimized = optimize_model(str(src), model_type="bert", num_heads=0, hidden_size=0)
        if not any(optimized.get_fused_operator_statistics().values()):
            return None
        optimized.save_model_to_file(str(dst))
    return dst


def _max_abs_diff(reference: Path, candidate: Path) -> float:
    ref, cand = runtime.session(reference), runtime.session(candidate)
    inputs = runtime.synthetic_feed(ref, batch=2, seq_len=32)
    if "attention_mask" in inputs:
        inputs["attention_mask"][1, 20:] = 0  # real padding in the second row
    expected, actual = ref.run(None, inputs)[0], cand.run(None, runtime.feed(cand, inputs))[0]
    if expected.shape != actual.shape:
        raise ModelLoadError("fused graph changed the output shape", "report this model")
    return float(np.abs(expected - actual).max())


def _copy_sidecars(src_dir: Path, dst_dir: Path) -> None:
    """Config, tokenizer and pooling files travel with the model so it stays loadable by optimum."""
    for item in src_dir.iterdir():
        if item.suffix in (".onnx", ".data") or item.name.startswith("."):
            continue
        if item.is_dir():
            shutil.copytree(item, dst_dir / item.name)
        else:
            shutil.copy2(item, dst_dir / item.name)
