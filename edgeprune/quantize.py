"""ONNX → int8 with onnxruntime, in the form that is fastest on the target and never slower than fp32.

Candidates are dynamic int8 of the exported graph, dynamic int8 of the graph fused by
onnxruntime's transformer optimizer (Attention, SkipLayerNorm, BiasGelu), and static QDQ int8
calibrated on real inputs (the form convolutions need: dynamic int8 makes them ConvInteger,
slower than fp32 here). Candidates that lose quality are dropped; which of the rest wins
depends on the model and the CPU, so they are timed side by side at one thread (one-thread
timings are stable on this class of machine, two-thread ones are not) against the fp32
parent, and the fastest is kept — fp32 itself when no int8 form beats it.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgeprune import runtime
from edgeprune.data import calibration_sentences, sample_sentences
from edgeprune.errors import ModelLoadError
from edgeprune.evaluate import tokenize
from edgeprune.files import size_mb, staged_dir
from edgeprune.profile.devices import DeviceProfile, load_profile
from edgeprune.profile.measure import compare_latency
from edgeprune.quiet import quiet

Feed = dict[str, np.ndarray]
"""One model input batch: input name → array."""

MIN_FIDELITY = 0.9
"""An int8 candidate whose outputs fall below this mean cosine to its fp32 parent is rejected however fast it is:
badly calibrated static ranges wreck a model silently. Measured on all-MiniLM-L6-v2 (token states): dynamic int8
0.973, static QDQ (minmax) 0.50; on EfficientNet-Lite0 (logits): dynamic 0.985, static QDQ 0.997."""

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
    """One-thread p50 of every candidate that kept quality, measured side by side."""
    fidelity: dict[str, float] = field(default_factory=dict)
    """Mean output cosine of every candidate to the fp32 model on the check inputs."""
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"onnx_path": str(self.onnx_path), "chosen": self.chosen, "scheme": asdict(self.scheme),
                "size_before_mb": round(self.size_before_mb, 3), "size_after_mb": round(self.size_after_mb, 3),
                "p50_ms_1_thread": {k: round(v, 3) for k, v in self.p50_ms.items()},
                "output_cosine_to_fp32": {k: round(v, 5) for k, v in self.fidelity.items()}, "notes": self.notes}


def quantize(onnx_path: Path | str, out_dir: Path | str, device: DeviceProfile | str = "host", *,
             seq_len: int = 128, rounds: int = 3, runs: int = 30, calibration: list[Feed] | None = None,
             check: list[Feed] | None = None, static_method: str = "minmax",
             min_fidelity: float = MIN_FIDELITY) -> QuantizeResult:
    """Write the fastest int8 form that keeps quality to ``out_dir/model.onnx`` — fp32 when none is faster.

    Candidates: dynamic int8 of the graph and of its transformer-fused form, and static QDQ
    int8 with activation ranges from ``calibration`` (input feeds; by default the built-in
    calibration sentences, tokenized by the tokenizer stored beside the model). A candidate
    whose outputs fall below ``min_fidelity`` mean cosine to fp32 on ``check`` feeds (default:
    the parity sentences for text models, else the calibration feeds) is rejected; the rest are
    timed side by side with fp32 and the fastest is written. Every decision is in ``notes``.
    """
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
        text = _text_feeds(onnx_path)
        calibration = calibration if calibration is not None else text["calibration"]
        if calibration:
            candidates["int8-static"] = static_int8(onnx_path, work / "int8-static.onnx", scheme, calibration,
                                                    static_method)
        else:
            notes.append("static int8 skipped: no calibration inputs (pass calibration feeds, or keep the "
                         "tokenizer beside the model)")
        checks = (check or text["check"] or calibration[:4]
                  or [runtime.synthetic_feed(runtime.session(onnx_path), 2, 32)])
        reference = first_outputs(onnx_path, checks)  # fp32 runs once, every candidate is compared to it
        fidelity = {name: 1.0 if name == "fp32" else mean_cosine(reference, first_outputs(path, checks))
                    for name, path in candidates.items()}
        for name, value in fidelity.items():
            if value < min_fidelity:
                notes.append(f"{name} rejected: output cosine to fp32 {value:.4f} < {min_fidelity}")
        timed = {name: path for name, path in candidates.items() if name == "fp32" or fidelity[name] >= min_fidelity}
        stats = compare_latency(list(timed.values()), threads=1, rounds=rounds, runs=runs, seq_len=seq_len)
        p50 = {name: s.p50 for name, s in zip(timed, stats)}
        chosen = min(p50, key=p50.get)
        notes += [f"{name} not used: {ms:.3f} ms, not faster than fp32 ({p50['fp32']:.3f} ms)"
                  for name, ms in p50.items() if name != "fp32" and ms >= p50["fp32"]]
        if chosen == "fp32":
            notes.append("no int8 form was faster than fp32 on this host; kept fp32")
        shutil.copy2(candidates[chosen], tmp / "model.onnx")
        shutil.rmtree(work)
        _copy_sidecars(onnx_path.parent, tmp)
    return QuantizeResult(onnx_path=out_dir / "model.onnx", chosen=chosen, scheme=scheme,
                          size_before_mb=size_mb(onnx_path), size_after_mb=size_mb(out_dir / "model.onnx"),
                          p50_ms=p50, fidelity=fidelity, notes=notes)


def _text_feeds(onnx_path: Path) -> dict[str, list[Feed]]:
    """Calibration feeds (built-in calibration sentences) and check feeds (the parity sentences, disjoint from
    them), tokenized by the tokenizer saved beside the model; empty when there is none."""
    try:
        from transformers import AutoTokenizer

        with quiet():
            tokenizer = AutoTokenizer.from_pretrained(onnx_path.parent)
    except Exception:  # no tokenizer files (an image model): the caller supplies feeds
        return {"calibration": [], "check": []}
    sess = runtime.session(onnx_path)

    def feeds(texts: list[str]) -> list[Feed]:
        return [runtime.feed(sess, tokenize(tokenizer, texts[i:i + 8])) for i in range(0, len(texts), 8)]

    return {"calibration": feeds(calibration_sentences()), "check": feeds(sample_sentences()[:16])}


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


def static_int8(src: Path, dst: Path, scheme: Int8Scheme, calibration: list[Feed], method: str = "minmax") -> Path:
    """onnxruntime's static QDQ int8 of ``src``: activation ranges from the ``calibration`` feeds, weights per
    channel, in ``scheme``'s flavour.

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

    class Reader:
        def __init__(self) -> None:
            self.items = iter(calibration)

        def get_next(self) -> Feed | None:
            return next(self.items, None)

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
