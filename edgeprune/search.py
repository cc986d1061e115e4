"""Budgeted search: the least-pruned — hence best-quality — model that meets a latency budget on a target.

Latency is piecewise linear in the kept heads and neurons, with flat stretches where pruning
saves nothing (Kwon et al. 2022). So the search first measures a small latency table: the
model pruned uniformly to a grid of kept-MAC fractions (importance scored once, no recovery:
recovery changes weights, not shapes), each in dynamic int8, timed side by side with the dense
fp32 model. Interpolating the table gives the largest fraction predicted to meet the budget;
that candidate is then built for real (pruning with recovery, export, the never-slower
quantization) and measured, stepping down the table until a measured candidate meets the
budget. On this host latencies are measured; on any other device profile each is predicted
from a host measurement by the cost model (``profile.estimate``) and carries its error band.
Every candidate's quality is cosine fidelity to the dense model on the built-in
sentences (or STS-B when a file is given); the result keeps them all, marks the Pareto front
of latency vs quality, and says why each was not chosen.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeprune import evaluate
from edgeprune.data import sample_sentences
from edgeprune.errors import EdgepruneError
from edgeprune.export import ExportResult, export
from edgeprune.models import adapter_for
from edgeprune.models.loading import LoadedModel
from edgeprune.profile import estimate
from edgeprune.profile.devices import DeviceProfile, load_profile
from edgeprune.profile.measure import compare_latency
from edgeprune.prune import Accumulation, apply_plan, make_plan, score
from edgeprune.prune.calibration import batches_for
from edgeprune.prune.loaded import DEFAULT_ACCUMULATE, DEFAULT_CRITERION, DEFAULT_RECOVERY, prune_loaded
from edgeprune.quantize import QuantizeResult, dynamic_int8, int8_scheme, quantize

GRID = (1.0, 0.85, 0.7, 0.55, 0.4)
"""Kept-MAC fractions of the latency table."""
REFINEMENTS = 3
"""Real candidates built at most, stepping down the table while the measured latency misses the budget."""


@dataclass
class Candidate:
    keep_flops: float
    precision: str
    latency_ms: float
    """At the budget's percentile: measured on this host, predicted on another device."""
    fidelity: float
    stsb: float | None = None
    meets_budget: bool = False
    pareto: bool = False
    verdict: str = ""
    """``chosen``, or why this candidate was not."""
    table: bool = False
    """A latency-table point (uniform pruning, no recovery, dynamic int8): measured, never shipped."""
    low_ms: float | None = None
    """Predicted band (other devices only)."""
    high_ms: float | None = None


@dataclass
class Built:
    """A candidate's artifacts: the pruned model, its parity-checked export and its chosen quantized form."""

    pruned: LoadedModel
    exported: ExportResult
    quantized: QuantizeResult


@dataclass
class SearchSummary:
    """What a search found and why, as run.json and report.json record it."""

    budget_ms: float
    percentile: str
    device: str
    predicted: bool
    threads: int
    dense_fp32_ms: float
    table: list[dict[str, float]]
    """Kept-MAC fraction → int8 latency of the latency table (uniform pruning, no recovery)."""
    candidates: list[Candidate]
    chosen_keep_flops: float | None
    passed: bool
    advice: str
    seconds: float
    notes: list[str] = field(default_factory=list)


@dataclass
class SearchResult:
    summary: SearchSummary
    chosen: Candidate | None
    kept: Candidate
    """The chosen candidate, or the fastest one when none meets the budget."""
    build: Built = field(repr=False)
    """The kept candidate's artifacts."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self.summary)


def predicted_keep(table: list[tuple[float, float]], budget_ms: float) -> float | None:
    """Largest kept fraction whose piecewise-linear latency meets ``budget_ms`` (None: not even the smallest)."""
    points = sorted(table)
    keeps, latencies = np.array([k for k, _ in points]), np.array([ms for _, ms in points])
    if latencies[0] > budget_ms:
        return None
    fine = np.linspace(keeps[0], keeps[-1], 241)
    meeting = fine[np.interp(fine, keeps, latencies) <= budget_ms * (1 + 1e-9)]  # grid points hit exactly
    return float(meeting.max())


def mark_pareto(candidates: list[Candidate]) -> None:
    """A candidate is on the front when no other is both at least as fast and at least as faithful (and better
    in one)."""
    for c in candidates:
        c.pareto = not any(o is not c and o.latency_ms <= c.latency_ms and o.fidelity >= c.fidelity
                           and (o.latency_ms < c.latency_ms or o.fidelity > c.fidelity) for o in candidates)


def search(dense: LoadedModel, budget_ms: float, work: Path | str, *, percentile: str = "p90",
           threads: int = 1, seq_len: int = 128, grid: tuple[float, ...] = GRID, criterion: str = DEFAULT_CRITERION,
           recover: str = DEFAULT_RECOVERY, calibration: Path | str | None = None, stsb: Path | str | None = None,
           max_quality_drop: float | None = None, dense_onnx: Path | None = None, runs: int = 40,
           device: DeviceProfile | str = "host", seed: int = 0) -> SearchResult:
    """Find the best-quality pruned + quantized ``dense`` meeting ``budget_ms`` at ``percentile`` on ``device``
    (measured when it is this host, predicted with a band otherwise).

    ``work`` (a new directory) receives every candidate (``dense_onnx``: an export of ``dense``
    to reuse); the chosen one — or, when the budget is impossible, the fastest one found — is
    ``result.kept`` with its artifacts in ``result.build``. ``max_quality_drop`` rejects
    candidates losing more than that: STS-B points when ``stsb`` is given, else 1 − cosine
    fidelity to the dense model.
    """
    if budget_ms <= 0:
        raise EdgepruneError(f"latency budget {budget_ms} ms is not positive", "pass --latency-ms greater than 0")
    if not grid or any(not 0 < k <= 1 for k in grid):
        raise EdgepruneError("the search grid must hold kept fractions in (0, 1]", "e.g. 1.0 0.85 0.7 0.55 0.4")
    started = time.perf_counter()
    device = device if isinstance(device, DeviceProfile) else load_profile(device)
    work = Path(work)
    work.mkdir(parents=True, exist_ok=False)
    scheme = int8_scheme(device)
    texts = sample_sentences()
    reference = evaluate.torch_encoder(dense)(texts)

    batches = batches_for(criterion, "none", dense.tokenizer, calibration)
    scores = score(dense.model, criterion, batches, Accumulation(DEFAULT_ACCUMULATE), seed)
    dense_onnx = dense_onnx or export(dense, work / "dense").onnx_path
    table_paths = {}
    for keep in sorted(set(grid), reverse=True):
        plan = make_plan(dense.model, keep_flops=keep, scores=scores, criterion=criterion)
        pruned = apply_plan(copy.deepcopy(dense.model), adapter_for(dense.model), plan).eval()
        shaped = LoadedModel(pruned, dense.tokenizer, dense.path, dense.task, dense.pooling, plan)
        onnx_path = export(shaped, work / f"table-{keep:.3f}").onnx_path
        table_paths[keep] = dynamic_int8(onnx_path, onnx_path.with_name("int8.onnx"), scheme)

    def latencies(paths: list[Path]) -> list[tuple[float, float | None, float | None]]:
        """(value, low, high) at ``percentile``: measured side by side here, predicted on another device."""
        if device.is_host:
            stats = compare_latency(paths, threads, rounds=3, runs=max(1, runs // 3), seq_len=seq_len)
            return [(s.percentile(percentile), None, None) for s in stats]
        # predicted at the device's own thread count, as the final verdict is
        return [estimate(p, device, seq_len=seq_len, runs=runs, memory=False).latency(percentile) for p in paths]

    timed = latencies([dense_onnx, *table_paths.values()])
    dense_ms = timed[0][0]
    table = [(keep, value) for keep, (value, _, _) in zip(table_paths, timed[1:])]
    candidates: list[Candidate] = []
    for keep, (value, low, high), path in zip(table_paths, timed[1:], table_paths.values()):
        encoder = evaluate.onnx_encoder(path, dense.tokenizer, dense.pooling)
        candidates.append(Candidate(keep_flops=round(keep, 4), precision="int8", latency_ms=round(value, 4),
                                    fidelity=round(evaluate.cosine_fidelity(reference, encoder(texts)), 5),
                                    meets_budget=value <= budget_ms, table=True, low_ms=_round(low),
                                    high_ms=_round(high)))

    built: dict[float, Built] = {}
    needs_dense_stsb = stsb is not None and max_quality_drop is not None  # only a quality bound compares to it
    dense_stsb = evaluate.stsb_spearman(evaluate.torch_encoder(dense), Path(stsb)) if needs_dense_stsb else None

    def quality_drop(c: Candidate) -> float:
        return dense_stsb - c.stsb if dense_stsb is not None else 1.0 - c.fidelity

    def build(keep: float) -> Candidate:
        loaded = prune_loaded(dense, keep_flops=keep, criterion=criterion, recover=recover, calibration=calibration,
                              seed=seed)
        exported = export(loaded, work / f"candidate-{keep:.3f}" / "fp32")
        quant = quantize(exported.onnx_path, work / f"candidate-{keep:.3f}" / "model", device, seq_len=seq_len)
        (value, low, high), = latencies([quant.onnx_path])
        encoder = evaluate.onnx_encoder(quant.onnx_path, dense.tokenizer, dense.pooling)
        built[round(keep, 4)] = Built(loaded, exported, quant)
        candidate = Candidate(keep_flops=round(keep, 4), precision=quant.chosen, latency_ms=round(value, 4),
                              low_ms=_round(low), high_ms=_round(high),
                              fidelity=round(evaluate.cosine_fidelity(reference, encoder(texts)), 5),
                              stsb=None if stsb is None else round(evaluate.stsb_spearman(encoder, Path(stsb)), 2))
        candidate.meets_budget = candidate.latency_ms <= budget_ms
        candidates.append(candidate)
        return candidate

    def acceptable(c: Candidate) -> bool:
        return c.meets_budget and (max_quality_drop is None or quality_drop(c) <= max_quality_drop)

    keep = predicted_keep(table, budget_ms)
    notes = []
    if keep is None:
        notes.append(f"the latency table predicts no grid setting meets {budget_ms:g} ms; building the fastest")
        build(min(grid))
    else:
        below = sorted((k for k in grid if k < keep), reverse=True)
        for attempt in range(REFINEMENTS):
            if acceptable(build(keep)):
                break
            if candidates[-1].meets_budget:  # fast enough but too lossy: more pruning cannot help
                break
            notes.append(f"keep {keep:.3f} was predicted to meet the budget but measured "
                         f"{candidates[-1].latency_ms:.3f} ms")
            if attempt == REFINEMENTS - 1 or not below:
                break
            keep = below.pop(0)
    meeting = [c for c in candidates if acceptable(c) and not c.table]
    chosen = max(meeting, key=lambda c: (c.stsb if c.stsb is not None else c.fidelity, c.keep_flops), default=None)
    kept = chosen or min((c for c in candidates if not c.table), key=lambda c: c.latency_ms)
    mark_pareto(candidates)
    for c in candidates:
        c.verdict = ("chosen" if c is chosen else "latency-table point: no recovery, not shipped" if c.table else
                     f"misses the budget: {c.latency_ms:.3f} ms > {budget_ms:g} ms" if not c.meets_budget else
                     f"loses {quality_drop(c):.4g} quality, more than {max_quality_drop:g}" if not acceptable(c) else
                     "meets the budget with lower quality than the chosen one")
    advice = _advice(chosen, kept, candidates, table, budget_ms, dense_ms)
    summary = SearchSummary(budget_ms=budget_ms, percentile=percentile, device=device.name,
                            predicted=not device.is_host, threads=threads, dense_fp32_ms=round(dense_ms, 4),
                            table=[{"keep_flops": k, "int8_ms": round(ms, 4)} for k, ms in table],
                            candidates=candidates, chosen_keep_flops=None if chosen is None else chosen.keep_flops,
                            passed=chosen is not None, advice=advice, seconds=round(time.perf_counter() - started, 1),
                            notes=notes)
    return SearchResult(summary=summary, chosen=chosen, kept=kept, build=built[kept.keep_flops])


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _advice(chosen: Candidate | None, best: Candidate, candidates: list[Candidate], table: list[tuple[float, float]],
            budget_ms: float, dense_ms: float) -> str:
    if chosen is not None:
        return (f"keep {chosen.keep_flops:.3f} of the encoder MACs, {chosen.precision}: {chosen.latency_ms:.3f} ms "
                f"<= {budget_ms:g} ms ({dense_ms / chosen.latency_ms:.2f}x faster than dense fp32)")
    built = [c for c in candidates if not c.table]
    if any(c.meets_budget for c in built):
        return ("candidates meet the latency budget but lose more quality than allowed: "
                + "; ".join(f"keep {c.keep_flops:.3f}: {c.verdict}" for c in built if c.meets_budget)
                + ". Needed: a larger budget or a larger allowed quality drop.")
    fastest = min(ms for _, ms in table)
    return (f"budget {budget_ms:g} ms is out of reach: the fastest candidate (keep {best.keep_flops:.3f}, "
            f"{best.precision}) measures {best.latency_ms:.3f} ms, {best.latency_ms / budget_ms:.2f}x the budget "
            f"(table minimum {fastest:.3f} ms). Needed: a budget of at least {best.latency_ms:.3f} ms, more threads, "
            "or a smaller model than pruning this one can reach.")
