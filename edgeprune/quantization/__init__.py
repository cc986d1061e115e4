"""ONNX → int8 / int4 with onnxruntime, in the form that is fastest on the target and never slower than fp32.

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

int4 weight-only (``MatMulNBits`` + ``GatherBlockQuantized`` embeddings) is a candidate too.
A decoder LLM exported with its key/value cache is judged on what its user waits for per
token — decode ms/token, side by side — among fp32, dynamic int8 and int4 (fusion and static
int8 are encoder forms).
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeprune import runtime
from edgeprune.data import calibration_sentences, sample_sentences
from edgeprune.data.inputs import input_batches
from edgeprune.devices import DeviceProfile, load_profile
from edgeprune.errors import BadArgumentError, ModelLoadError
from edgeprune.files import atomic_write_json, model_files, size_mb, staged_dir
from edgeprune.int8 import Int8Scheme, dynamic_int8, int8_scheme
from edgeprune.models.loading import TOKENIZER_FILES, copy_model_files
from edgeprune.profiling.generation import compare_decode
from edgeprune.profiling.measure import LatencyStats, compare_latency, speedup_interval
from edgeprune.quantization.fidelity import first_outputs, mean_cosine, node_damage
from edgeprune.quantization.forms import (
    INT4_DEFAULTS,
    STATIC_METHODS,
    Feed,
    Int4Options,
    compute_op_types,
    fuse_transformer,
    max_abs_diff,
    static_int8,
    weight_only_int4,
)
from edgeprune.quiet import quiet

MANIFEST = "manifest.json"
"""Written beside the quantized model: its source, the chosen form, and every file copied from the source folder."""

FORMS = ("int8", "int8-fused", "int8-static", "int8-static-qop", "int4")
"""The candidates: dynamic int8, dynamic int8 after transformer fusion, static int8 QDQ and QOperator, int4
weight-only."""
DECODER_FORMS = ("int8", "int4")
"""The candidates for a decoder LLM with its key/value cache."""

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
    """``int8``, ``int8-fused``, ``int8-static``, ``int8-static-qop`` (possibly with an op type left in fp32),
    ``int4``, or ``fp32`` when no quantized form was faster."""
    form: str
    """The form ``chosen`` is made in: one of ``FORMS``, or ``fp32`` (``chosen`` names the op type fallback too)."""
    scheme: Int8Scheme
    size_before_mb: float
    size_after_mb: float
    p50_ms: dict[str, float]
    """One-thread p50 of every candidate that kept quality, measured side by side (a decoder's: ms/token)."""
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


@dataclass(frozen=True)
class FormChoice:
    """The candidate to ship, and why the others were not."""

    chosen: str
    notes: list[str]


def keeping_quality(fidelity: dict[str, float], min_fidelity: float) -> list[str]:
    """The candidates whose outputs stay within ``min_fidelity`` mean cosine of fp32: the only ones worth timing."""
    return [name for name, value in fidelity.items() if value >= min_fidelity]


def choose_form(p50: dict[str, float], fidelity: dict[str, float], min_fidelity: float = MIN_FIDELITY) -> FormChoice:
    """The fastest candidate by one-thread ``p50`` (ms) among those keeping quality by ``fidelity`` — fp32 (timed
    with them, fidelity 1) when no int8 form beats it — and a note for every candidate not chosen."""
    notes = [f"{name} rejected: output cosine to fp32 {value:.4f} < {min_fidelity}"
             for name, value in fidelity.items() if value < min_fidelity]
    kept = {name: p50[name] for name in keeping_quality(fidelity, min_fidelity) if name in p50}
    chosen = min(kept, key=kept.__getitem__)
    notes += [f"{name} not used: {ms:.3f} ms, not faster than fp32 ({p50['fp32']:.3f} ms)"
              for name, ms in kept.items() if name != "fp32" and ms >= p50["fp32"]]
    if chosen == "fp32":
        notes.append("no int8 form was faster than fp32 on this host; kept fp32")
    return FormChoice(chosen, notes)


@dataclass
class Candidates:
    """The forms built of one fp32 graph (``fp32`` itself included), with their fidelity to it."""

    paths: dict[str, Path]
    fidelity: dict[str, float]
    fused: Path | None = None
    """The transformer-fused fp32 graph ``int8-fused`` was made from."""
    excluded: list[str] = field(default_factory=list)
    """Nodes the static forms leave in fp32."""
    notes: list[str] = field(default_factory=list)


StaticForm = Callable[..., Path]
"""``static_int8`` of the graph with its calibration bound: (dst, **options) → dst."""
Fidelity = Callable[[Path], float]
"""A candidate's mean output cosine to the fp32 graph on the check feeds."""


def quantize(onnx_path: Path | str, out_dir: Path | str, device: DeviceProfile | str = "host", *,
             seq_len: int = 128, rounds: int = 3, runs: int = 30, calibration: list[Feed] | None = None,
             check: list[Feed] | None = None, static_method: str = "minmax",
             min_fidelity: float = MIN_FIDELITY, forms: Sequence[str] = FORMS,
             int4: Int4Options = INT4_DEFAULTS) -> QuantizeResult:
    """Write the fastest int8 form that keeps quality to ``out_dir/model.onnx`` — fp32 when none is faster.

    Static candidates take activation ranges from ``calibration`` (input feeds; by default the
    built-in calibration sentences, tokenized by the tokenizer stored beside the model). A
    candidate whose outputs fall below ``min_fidelity`` mean cosine to fp32 on ``check`` feeds
    (default: the parity sentences for text models, else the calibration feeds) is rejected,
    after static ones have tried leaving their most damaging nodes in fp32; the rest are timed
    side by side with fp32 and the fastest is written. Every decision is in ``notes``. ``forms`` limits the
    int8 candidates (a search quantizing many prunings of one model tries only the form that won the first);
    ``int4`` sizes the int4 candidate's blocks.
    """
    unknown = sorted(set(forms) - set(FORMS))
    if unknown:
        raise BadArgumentError(f"unknown quantized form(s) {unknown}", f"use some of: {', '.join(FORMS)}")
    onnx_path = Path(onnx_path)
    device = device if isinstance(device, DeviceProfile) else load_profile(device)
    sess = runtime.session(onnx_path)  # fails early, with a clear error, on a missing or corrupt model
    scheme = int8_scheme(device)
    decoder = runtime.takes_cache(onnx_path)
    if decoder:
        forms = [form for form in forms if form in DECODER_FORMS]
    out_dir = Path(out_dir)
    with staged_dir(out_dir, inputs=model_files(onnx_path)) as tmp:
        work = tmp / "candidates"
        work.mkdir()
        text = _text_feeds(onnx_path, sess)
        calibration = calibration if calibration is not None else text["calibration"]
        checks = check or text["check"] or calibration[:4]
        synthetic_checks = not checks
        if synthetic_checks:
            checks = [runtime.synthetic_feed(sess, runtime.fixed_batch(sess) or 2, 32)]
        reference = first_outputs(onnx_path, checks)  # fp32 runs once, every candidate is compared to it

        def fidelity_of(path: Path) -> float:
            return mean_cosine(reference, first_outputs(path, checks))

        static = functools.partial(static_int8, onnx_path, scheme=scheme, calibration=calibration,
                                   method=static_method, cache=work / "calibration-ranges.json")
        found = build_candidates(onnx_path, work, forms, scheme, calibration, static, fidelity_of, min_fidelity,
                                 checks, int4=int4)

        def timed() -> dict[str, LatencyStats]:
            """One side-by-side comparison of every candidate that keeps quality decides."""
            names = keeping_quality(found.fidelity, min_fidelity)
            paths = [found.paths[name] for name in names]
            stats = compare_decode(paths, threads=1, rounds=rounds) if decoder else compare_latency(
                paths, threads=1, rounds=rounds, runs=runs, seq_len=seq_len)
            return dict(zip(names, stats))

        stats = timed()
        winner = choose_form(_p50(stats), found.fidelity, min_fidelity).chosen
        ops = compute_op_types(onnx_path)
        if winner not in ("fp32", "int4") and len(ops) > 1:  # int4 is weight-only MatMul: no op types to trade
            variants = op_type_variants(winner, ops, onnx_path, found, work, scheme, static)
            found.paths.update(variants)
            found.fidelity.update({name: fidelity_of(path) for name, path in variants.items()})
            stats = timed()
            found.notes.append(f"fallback by op type: {winner} retried with each of {', '.join(ops)} in fp32")
        p50 = _p50(stats)
        choice = choose_form(p50, found.fidelity, min_fidelity)
        found.notes += timing_notes(stats, choice.chosen)
        if synthetic_checks:
            found.notes.append("fidelity was checked on synthetic inputs (random values, no tokenizer or calibration "
                               "data beside the model): pass real calibration/check feeds for a meaningful check")
        shutil.copy2(found.paths[choice.chosen], tmp / "model.onnx")
        copied = [*copy_model_files(onnx_path.parent, tmp), *_copy_external_data(found.paths[choice.chosen], tmp)]
        shutil.rmtree(work)
        atomic_write_json(tmp / MANIFEST, {"model": "model.onnx", "source": str(onnx_path), "form": choice.chosen,
                                           "copied_from_source": copied})
    form = choice.chosen if choice.chosen in ("fp32", *FORMS) else winner  # else a variant of the winner
    return QuantizeResult(onnx_path=out_dir / "model.onnx", chosen=choice.chosen, form=form, scheme=scheme,
                          size_before_mb=size_mb(onnx_path), size_after_mb=size_mb(out_dir / "model.onnx"),
                          p50_ms=p50, fidelity=found.fidelity, excluded_nodes=found.excluded,
                          notes=found.notes + choice.notes)


def _p50(stats: dict[str, LatencyStats]) -> dict[str, float]:
    return {name: s.p50 for name, s in stats.items()}


def timing_notes(stats: dict[str, LatencyStats], chosen: str) -> list[str]:
    """What the timing behind the choice was worth: unstable candidates (after re-measuring), and a choice of an
    int8 form whose speedup over fp32 is not clear of 1 (a tie within noise, kept because it keeps quality and is
    not shown slower)."""
    notes = [f"{name} timing unstable after re-measuring: {'; '.join(s.doubts)}"
             for name, s in stats.items() if s.doubts]
    if chosen != "fp32":
        low, high = speedup_interval(stats["fp32"], stats[chosen])
        if low <= 1.0:
            notes.append(f"{chosen} vs fp32 is a tie within timing noise (speedup 95% interval {low:.2f}-{high:.2f}x)")
    return notes


def build_candidates(onnx_path: Path, work: Path, forms: Sequence[str], scheme: Int8Scheme,
                     calibration: list[Feed], static: StaticForm, fidelity_of: Fidelity, min_fidelity: float,
                     checks: list[Feed], *, int4: Int4Options = INT4_DEFAULTS) -> Candidates:
    """The int8 and int4 ``forms`` of ``onnx_path`` (written in ``work``; int4 in ``int4``'s blocks) with their
    fidelity; static ones leave their most damaging nodes in fp32 first when below ``min_fidelity``."""
    found = Candidates(paths={"fp32": onnx_path}, fidelity={"fp32": 1.0})
    if "int8" in forms:
        found.paths["int8"] = dynamic_int8(onnx_path, work / "int8.onnx", scheme)
    if "int4" in forms:
        found.paths["int4"] = weight_only_int4(onnx_path, work / "int4.onnx", int4)
    if "int8-fused" in forms:
        found.fused = _fused(onnx_path, work / "fused.onnx", found.notes)
        if found.fused is not None:
            found.paths["int8-fused"] = dynamic_int8(found.fused, work / "int8-fused.onnx", scheme)
    found.fidelity.update({name: fidelity_of(path) for name, path in found.paths.items() if name != "fp32"})
    if calibration and {"int8-static", "int8-static-qop"} & set(forms):
        _add_static(found, forms, work, static, fidelity_of, min_fidelity, onnx_path, checks)
    elif not calibration:
        found.notes.append("static int8 skipped: no calibration inputs (pass calibration feeds, or keep the "
                           "tokenizer beside the model)")
    return found


def _fused(onnx_path: Path, dst: Path, notes: list[str]) -> Path | None:
    """onnxruntime's transformer fusion of the graph, when it fuses anything and keeps the outputs."""
    fused = fuse_transformer(onnx_path, dst)
    if fused is None:
        notes.append("transformer fusion found nothing to fuse")
    elif (diff := max_abs_diff(onnx_path, fused)) > FUSION_ATOL:
        notes.append(f"fused graph rejected: differs from the export by {diff:.2g}")
        return None
    return fused


def _add_static(found: Candidates, forms: Sequence[str], work: Path, static: StaticForm, fidelity_of: Fidelity,
                min_fidelity: float, onnx_path: Path, checks: list[Feed]) -> None:
    """The static QDQ form (built for its excluded nodes even when only QOperator is wanted), then QOperator with
    the same nodes in fp32."""
    path = static(work / "int8-static.onnx")
    value = fidelity_of(path)
    if value < min_fidelity:
        path, value, found.excluded = _exclude_damaging_nodes(
            onnx_path, path, value, min_fidelity, fidelity_of,
            lambda exclude, dst: static(dst, exclude=exclude), checks, found.notes)
    if "int8-static" in forms:
        found.paths["int8-static"], found.fidelity["int8-static"] = path, value
    if "int8-static-qop" in forms:
        qop = static(work / "int8-static-qop.onnx", fmt="qoperator", exclude=found.excluded)
        found.paths["int8-static-qop"], found.fidelity["int8-static-qop"] = qop, fidelity_of(qop)


def op_type_variants(winner: str, ops: list[str], onnx_path: Path, found: Candidates, work: Path,
                     scheme: Int8Scheme, static: StaticForm) -> dict[str, Path]:
    """``winner`` rebuilt with each compute op type in ``ops`` left in fp32, since int8 can lose speed on one op
    type and win on another."""

    def variant(keep_fp32: str, dst: Path) -> Path:
        int8_ops = [op for op in ops if op != keep_fp32]
        if winner.startswith("int8-static"):
            return static(dst, op_types=int8_ops, exclude=found.excluded,
                          fmt="qoperator" if winner.endswith("qop") else "qdq")
        source = found.fused if winner == "int8-fused" else onnx_path
        return dynamic_int8(source, dst, scheme, op_types=int8_ops)

    return {f"{winner} ({op} in fp32)": variant(op, work / f"{winner}-no-{op}.onnx") for op in ops}


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


def _text_feeds(onnx_path: Path, sess: runtime.ort.InferenceSession) -> dict[str, list[Feed]]:
    """Calibration feeds (built-in calibration sentences) and check feeds (the parity sentences, disjoint from
    them), tokenized by the tokenizer saved beside the model; empty when there is none (an image model)."""
    if not any((onnx_path.parent / name).is_file() for name in TOKENIZER_FILES):
        return {"calibration": [], "check": []}
    from transformers import AutoTokenizer

    try:
        with quiet():
            tokenizer = AutoTokenizer.from_pretrained(onnx_path.parent)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"the tokenizer beside '{onnx_path}' cannot be loaded ({str(exc)[:200]})",
                             "re-export the model with edgeprune export, or remove the broken tokenizer files") \
            from None

    def feeds(texts: list[str]) -> list[Feed]:
        return [runtime.feed(sess, arrays) for arrays in input_batches(tokenizer, texts, 8)]

    return {"calibration": feeds(calibration_sentences()), "check": feeds(sample_sentences()[:16])}


def _copy_external_data(model_path: Path, dst_dir: Path) -> list[str]:
    """Copy the external-data files ``model_path``'s graph references (an fp32 model kept as it was may have them)."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    names = {entry.value for tensor in graph.initializer if tensor.data_location == onnx.TensorProto.EXTERNAL
             for entry in tensor.external_data if entry.key == "location"}
    for name in sorted(names):
        shutil.copy2(model_path.parent / name, dst_dir / name)
    return sorted(names)


__all__ = ["FORMS", "MIN_FIDELITY", "STATIC_METHODS", "Candidates", "Feed", "FormChoice", "Int4Options", "Int8Scheme",
           "QuantizeResult", "build_candidates", "choose_form", "dynamic_int8", "first_outputs", "int8_scheme",
           "keeping_quality", "mean_cosine", "op_type_variants", "quantize", "static_int8"]
