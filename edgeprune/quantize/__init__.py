"""ONNX → int8 with onnxruntime, in the form that is fastest on the target and never slower than fp32.

Candidates are dynamic int8 of the exported graph, dynamic int8 of the graph fused by
onnxruntime's transformer optimizer (Attention, SkipLayerNorm, BiasGelu), and static int8
calibrated on real inputs, as QDQ and as QOperator nodes (the forms convolutions need: dynamic
int8 makes them ConvInteger, slower than fp32 here). A static candidate that loses quality
first leaves the nodes that add the most error in fp32 (``fidelity.node_damage``); any
candidate still below the fidelity floor is dropped. Which of the rest wins depends on the model
and the CPU, so they are timed side by side at one thread (one-thread timings are stable on
this class of machine, two-thread ones are not) against the fp32 parent. When the graph has
several compute op types (Conv and Gemm, say), the winner is retried with each of them left in
fp32, since int8 can lose speed on one and win on the other. The fastest is kept — fp32 itself
when no int8 form beats it — and every decision is a note.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeprune import runtime
from edgeprune.data import calibration_sentences, sample_sentences
from edgeprune.errors import ModelLoadError
from edgeprune.evaluate import tokenize
from edgeprune.files import size_mb, staged_dir
from edgeprune.profile.devices import DeviceProfile, load_profile
from edgeprune.profile.measure import compare_latency
from edgeprune.quantize.fidelity import first_outputs, mean_cosine, node_damage
from edgeprune.quantize.forms import (
    STATIC_METHODS,
    Feed,
    Int8Scheme,
    compute_op_types,
    dynamic_int8,
    fuse_transformer,
    int8_scheme,
    max_abs_diff,
    static_int8,
)
from edgeprune.quiet import quiet

FORMS = ("int8", "int8-fused", "int8-static", "int8-static-qop")
"""The int8 candidates: dynamic, dynamic after transformer fusion, static QDQ, static QOperator."""

MIN_FIDELITY = 0.9
"""An int8 candidate whose outputs fall below this mean cosine to its fp32 parent is rejected however fast it is:
badly calibrated static ranges wreck a model silently. Measured on all-MiniLM-L6-v2 (token states): dynamic int8
0.973, static QDQ (minmax) 0.50; on EfficientNet-Lite0 (logits): dynamic 0.985, static QDQ 0.997."""

MAX_EXCLUDED_SHARE = 0.25
"""A static candidate may leave at most this share of its ranked nodes (with the producers of their inputs) in fp32
to regain fidelity; past that it is more fp32 than int8 and is rejected instead."""

FUSION_ATOL = 1e-3
"""Max abs difference a fused fp32 graph may show against the unfused one before fusion is rejected."""


@dataclass
class QuantizeResult:
    onnx_path: Path
    chosen: str
    """``int8``, ``int8-fused``, ``int8-static``, ``int8-static-qop`` (possibly with an op type left in fp32), or
    ``fp32`` when no int8 form was faster."""
    scheme: Int8Scheme
    size_before_mb: float
    size_after_mb: float
    p50_ms: dict[str, float]
    """One-thread p50 of every candidate that kept quality, measured side by side."""
    fidelity: dict[str, float] = field(default_factory=dict)
    """Mean output cosine of every candidate to the fp32 model on the check inputs."""
    excluded_nodes: list[str] = field(default_factory=list)
    """Nodes the static candidates left in fp32 to keep fidelity."""
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"onnx_path": str(self.onnx_path), "chosen": self.chosen, "scheme": asdict(self.scheme),
                "size_before_mb": round(self.size_before_mb, 3), "size_after_mb": round(self.size_after_mb, 3),
                "p50_ms_1_thread": {k: round(v, 3) for k, v in self.p50_ms.items()},
                "output_cosine_to_fp32": {k: round(v, 5) for k, v in self.fidelity.items()},
                "static_nodes_in_fp32": self.excluded_nodes, "notes": self.notes}


def quantize(onnx_path: Path | str, out_dir: Path | str, device: DeviceProfile | str = "host", *,
             seq_len: int = 128, rounds: int = 3, runs: int = 30, calibration: list[Feed] | None = None,
             check: list[Feed] | None = None, static_method: str = "minmax",
             min_fidelity: float = MIN_FIDELITY, forms: Sequence[str] = FORMS) -> QuantizeResult:
    """Write the fastest int8 form that keeps quality to ``out_dir/model.onnx`` — fp32 when none is faster.

    Static candidates take activation ranges from ``calibration`` (input feeds; by default the
    built-in calibration sentences, tokenized by the tokenizer stored beside the model). A
    candidate whose outputs fall below ``min_fidelity`` mean cosine to fp32 on ``check`` feeds
    (default: the parity sentences for text models, else the calibration feeds) is rejected,
    after static ones have tried leaving their most damaging nodes in fp32; the rest are timed
    side by side with fp32 and the fastest is written. Every decision is in ``notes``. ``forms`` limits the
    int8 candidates (a search quantizing many prunings of one model tries only the form that won the first).
    """
    unknown = sorted(set(forms) - set(FORMS))
    if unknown:
        raise ModelLoadError(f"unknown int8 form(s) {unknown}", f"use some of: {', '.join(FORMS)}")
    onnx_path = Path(onnx_path)
    device = device if isinstance(device, DeviceProfile) else load_profile(device)
    runtime.session(onnx_path)  # fail early, with a clear error, on a missing or corrupt model
    scheme = int8_scheme(device)
    out_dir = Path(out_dir)
    with staged_dir(out_dir, inputs=[onnx_path.parent]) as tmp:
        work = tmp / "candidates"
        work.mkdir()
        candidates = {"fp32": onnx_path}
        if "int8" in forms:
            candidates["int8"] = dynamic_int8(onnx_path, work / "int8.onnx", scheme)
        notes: list[str] = []
        fused = fuse_transformer(onnx_path, work / "fused.onnx") if "int8-fused" in forms else None
        if fused is None and "int8-fused" in forms:
            notes.append("transformer fusion found nothing to fuse")
        elif fused is not None and (diff := max_abs_diff(onnx_path, fused)) > FUSION_ATOL:
            notes.append(f"fused graph rejected: differs from the export by {diff:.2g}")
        elif fused is not None:
            candidates["int8-fused"] = dynamic_int8(fused, work / "int8-fused.onnx", scheme)
        text = _text_feeds(onnx_path)
        calibration = calibration if calibration is not None else text["calibration"]
        checks = (check or text["check"] or calibration[:4]
                  or [runtime.synthetic_feed(runtime.session(onnx_path), 2, 32)])
        reference = first_outputs(onnx_path, checks)  # fp32 runs once, every candidate is compared to it

        def fidelity_of(path: Path) -> float:
            return mean_cosine(reference, first_outputs(path, checks))

        fidelity = {"fp32": 1.0, **{name: fidelity_of(path) for name, path in candidates.items() if name != "fp32"}}
        excluded: list[str] = []
        ranges = work / "calibration-ranges.json"

        def static_form(dst: Path, **options: Any) -> Path:
            """A static int8 form of the graph; every form after the first reuses the calibrated ranges."""
            return static_int8(onnx_path, dst, scheme, calibration, static_method, cache=ranges, **options)

        if calibration and {"int8-static", "int8-static-qop"} & set(forms):
            static = static_form(work / "int8-static.onnx")
            fidelity["int8-static"] = fidelity_of(static)
            if fidelity["int8-static"] < min_fidelity:
                static, fidelity["int8-static"], excluded = _exclude_damaging_nodes(
                    onnx_path, static, fidelity["int8-static"], min_fidelity, fidelity_of,
                    lambda exclude, dst: static_form(dst, exclude=exclude), checks, notes)
            if "int8-static" in forms:
                candidates["int8-static"] = static
            if "int8-static-qop" in forms:
                candidates["int8-static-qop"] = static_form(work / "int8-static-qop.onnx", fmt="qoperator",
                                                            exclude=excluded)
                fidelity["int8-static-qop"] = fidelity_of(candidates["int8-static-qop"])
        elif not calibration:
            notes.append("static int8 skipped: no calibration inputs (pass calibration feeds, or keep the "
                         "tokenizer beside the model)")
        fidelity = {name: value for name, value in fidelity.items() if name in candidates}
        for name, value in fidelity.items():
            if value < min_fidelity:
                notes.append(f"{name} rejected: output cosine to fp32 {value:.4f} < {min_fidelity}")
        timed = {name: path for name, path in candidates.items() if fidelity[name] >= min_fidelity}
        stats = compare_latency(list(timed.values()), threads=1, rounds=rounds, runs=runs, seq_len=seq_len)
        p50 = {name: s.p50 for name, s in zip(timed, stats)}
        winner = min(p50, key=p50.get)
        ops = compute_op_types(onnx_path)
        if winner != "fp32" and len(ops) > 1:
            def variant(keep_fp32: str, dst: Path) -> Path:
                int8_ops = [op for op in ops if op != keep_fp32]
                if winner.startswith("int8-static"):
                    return static_form(dst, op_types=int8_ops, exclude=excluded,
                                       fmt="qoperator" if winner.endswith("qop") else "qdq")
                return dynamic_int8(fused if winner == "int8-fused" else onnx_path, dst, scheme, op_types=int8_ops)

            variants = {f"{winner} ({op} in fp32)": variant(op, work / f"{winner}-no-{op}.onnx") for op in ops}
            for name, path in variants.items():
                candidates[name], fidelity[name] = path, fidelity_of(path)
            timed.update({name: path for name, path in variants.items() if fidelity[name] >= min_fidelity})
            stats = compare_latency(list(timed.values()), threads=1, rounds=rounds, runs=runs, seq_len=seq_len)
            p50 = {name: s.p50 for name, s in zip(timed, stats)}  # one side-by-side round decides
            notes.append(f"fallback by op type: {winner} retried with each of {', '.join(ops)} in fp32")
            winner = min(p50, key=p50.get)
        chosen = winner
        notes += [f"{name} not used: {ms:.3f} ms, not faster than fp32 ({p50['fp32']:.3f} ms)"
                  for name, ms in p50.items() if name != "fp32" and ms >= p50["fp32"]]
        if chosen == "fp32":
            notes.append("no int8 form was faster than fp32 on this host; kept fp32")
        shutil.copy2(candidates[chosen], tmp / "model.onnx")
        shutil.rmtree(work)
        _copy_sidecars(onnx_path.parent, tmp)
    return QuantizeResult(onnx_path=out_dir / "model.onnx", chosen=chosen, scheme=scheme,
                          size_before_mb=size_mb(onnx_path), size_after_mb=size_mb(out_dir / "model.onnx"),
                          p50_ms=p50, fidelity=fidelity, excluded_nodes=excluded, notes=notes)


def _exclude_damaging_nodes(fp32: Path, static: Path, value: float, min_fidelity: float,
                            fidelity_of: Callable[[Path], float], requantize: Callable[[list[str], Path], Path],
                            checks: list[Feed], notes: list[str]) -> tuple[Path, float, list[str]]:
    """Leave the 1, 2, 4, ... nodes that add the most quantization error (with the producers of their inputs) in
    fp32 until the static candidate's fidelity reaches ``min_fidelity``, trying at most ``MAX_EXCLUDED_SHARE`` of
    the ranked nodes; return the candidate, its fidelity and the excluded nodes (none when nothing was enough)."""
    ranked = node_damage(fp32, static, checks)
    limit = max(1, int(len(ranked) * MAX_EXCLUDED_SHARE))
    count, cosine, exclude, path = 1, value, [], static
    while count <= limit and cosine < min_fidelity:
        exclude = sorted({name for damage in ranked[:count] for name in damage.fp32_nodes})
        path = requantize(exclude, static.with_name(f"int8-static-excl{count}.onnx"))
        cosine = fidelity_of(path)
        count *= 2
    if cosine < min_fidelity:
        return static, value, []
    if exclude:
        worst = ", ".join(d.node for d in ranked[:min(count // 2, 3)])
        notes.append(f"int8-static: {len(exclude)} of {len(ranked)} nodes left in fp32 (the most damaging: {worst}; "
                     f"with the producers of their inputs); output cosine {value:.4f} -> {cosine:.4f}")
    return path, cosine, exclude


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


def _copy_sidecars(src_dir: Path, dst_dir: Path) -> None:
    """Config, tokenizer and pooling files travel with the model so it stays loadable by optimum."""
    for item in src_dir.iterdir():
        if item.suffix in (".onnx", ".data") or item.name.startswith("."):
            continue
        if item.is_dir():
            shutil.copytree(item, dst_dir / item.name)
        else:
            shutil.copy2(item, dst_dir / item.name)


__all__ = ["FORMS", "MIN_FIDELITY", "STATIC_METHODS", "Feed", "Int8Scheme", "QuantizeResult", "dynamic_int8",
           "first_outputs", "int8_scheme", "mean_cosine", "quantize", "static_int8"]
