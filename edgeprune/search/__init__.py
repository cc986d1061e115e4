"""Budgeted search: the best-quality pruned + quantized model that meets a latency budget on a target.

Kwon et al. (2022) in three steps. Importance is scored once (Fisher by default). A latency
table is measured on the real runtime: per-layer cost of heads and of FFN neurons, piecewise
linear with its flat stretches (``latency_table``). The budget is then allocated two ways:
by importance per millisecond across all layers (``prune.allocate.by_latency``), and uniformly
at the largest fraction the table predicts within it. Which keeps more quality varies (measured
on all-MiniLM-L6-v2 at 30% of dense latency: STS-B 85.2 and 71.6 for cross-layer allocations in
two runs, 82.3 for uniform), and neither the scores nor the unrecovered model tell reliably, so
both candidates are built for real — pruning with recovery, parity-checked export, the never-slower
quantization — and measured. Candidates aim ``TIMING_MARGIN`` under the budget, since the final
check re-measures; while the measured latency misses that aim (or beats it by far), the
better allocation's target is corrected by the miss and rebuilt, ``REFINEMENTS`` builds in all.
On this host latencies are measured; on any other device profile each is predicted from a host
measurement by the cost model (``profile.estimate``) and carries its error band. Every
candidate's quality is cosine fidelity to the dense model on the built-in sentences (and
STS-B when a file is given); the result keeps them all, with the table's models, marks the
Pareto front of latency vs quality, and says why each was not chosen.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeprune import evaluate
from edgeprune.data import sample_sentences
from edgeprune.errors import EdgepruneError
from edgeprune.export import ExportResult, export
from edgeprune.models import adapter_for
from edgeprune.models.loading import LoadedModel
from edgeprune.profile import estimate
from edgeprune.profile.devices import DeviceProfile, load_profile
from edgeprune.profile.measure import compare_latency
from edgeprune.profile.memory import measure_peak_memory
from edgeprune.prune import Accumulation, LayerPlan, PruningPlan, apply_plan, kept_macs_fraction, make_plan, score
from edgeprune.prune.allocate import by_latency, uniform
from edgeprune.prune.calibration import batches_for
from edgeprune.prune.importance import LayerScores
from edgeprune.prune.loaded import DEFAULT_ACCUMULATE, DEFAULT_CRITERION, DEFAULT_RECOVERY, prune_loaded
from edgeprune.quantize import FORMS, QuantizeResult, dynamic_int8, int8_scheme, quantize
from edgeprune.search.latency_table import HEAD_GRID, NEURON_GRID, LatencyTable, grid_counts

REFINEMENTS = 3
"""Real candidates built at most: both allocations of the budget, then the better one corrected by its miss."""
ALLOCATIONS = ("latency", "uniform")
"""Importance per ms across layers (``prune.allocate.by_latency``), and the same fraction in every layer."""
SLACK = 0.1
"""A candidate faster than the budget by more than this fraction is rebuilt with less pruning (if builds remain)."""
TIMING_MARGIN = 0.05
"""Candidates aim this fraction under the budget, because the final check re-measures: the p90 of one pruned
all-MiniLM-L6-v2 int8 model (one thread, 99 runs, beside its dense and fp32 forms) measured 5.67-6.05 ms in four
calls in one process, and 5.85 vs 6.21 ms in the search vs the final check."""


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
    setting: str = ""
    """What was pruned: a table point's per-layer counts, or the latency target a candidate was allocated for."""
    memory_mb: float | None = None
    """Peak MiB over the process baseline (measured in a fresh process here), when a memory budget is set."""


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
    table: dict[str, list[dict[str, float]]]
    """The latency table: model ms (dynamic int8, no recovery) with every layer at each head / neuron count."""
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


def mark_pareto(candidates: list[Candidate]) -> None:
    """A candidate is on the front when no other is both at least as fast and at least as faithful (and better
    in one)."""
    for c in candidates:
        c.pareto = not any(o is not c and o.latency_ms <= c.latency_ms and o.fidelity >= c.fidelity
                           and (o.latency_ms < c.latency_ms or o.fidelity > c.fidelity) for o in candidates)


def search(dense: LoadedModel, budget_ms: float, work: Path | str, *, percentile: str = "p90",
           threads: int = 1, seq_len: int = 128, criterion: str = DEFAULT_CRITERION,
           recover: str = DEFAULT_RECOVERY, calibration: Path | str | None = None, stsb: Path | str | None = None,
           max_quality_drop: float | None = None, dense_onnx: Path | None = None, runs: int = 40,
           device: DeviceProfile | str = "host", memory_mb: float | None = None, seed: int = 0) -> SearchResult:
    """Find the best-quality pruned + quantized ``dense`` meeting ``budget_ms`` at ``percentile`` on ``device``
    (measured when it is this host, predicted with a band otherwise).

    ``work`` (a new directory) receives every candidate (``dense_onnx``: an export of ``dense``
    to reuse); the chosen one — or, when the budget is impossible, the fastest one found — is
    ``result.kept`` with its artifacts in ``result.build``. ``max_quality_drop`` rejects
    candidates losing more than that: STS-B points when ``stsb`` is given, else 1 − cosine
    fidelity to the dense model. With ``memory_mb``, a candidate must also peak below it (measured
    in a fresh process on this host, which is what another device's estimate uses too); one
    that is fast enough but too large is pruned further in proportion.
    """
    if budget_ms <= 0:
        raise EdgepruneError(f"latency budget {budget_ms} ms is not positive", "pass --latency-ms greater than 0")
    started = time.perf_counter()
    device = device if isinstance(device, DeviceProfile) else load_profile(device)
    work = Path(work)
    work.mkdir(parents=True, exist_ok=False)
    texts = sample_sentences()
    reference = evaluate.torch_encoder(dense)(texts)

    def latencies(paths: list[Path]) -> list[tuple[float, float | None, float | None]]:
        """(value, low, high) at ``percentile``: measured side by side here, predicted on another device."""
        if device.is_host:
            stats = compare_latency(paths, threads, rounds=3, runs=max(1, runs // 3), seq_len=seq_len)
            return [(s.percentile(percentile), None, None) for s in stats]
        # predicted at the device's own thread count, as the final verdict is
        return [estimate(p, device, seq_len=seq_len, runs=runs, memory=False).latency(percentile) for p in paths]

    def fidelity(encoder: evaluate.Encoder) -> float:
        return round(evaluate.cosine_fidelity(reference, encoder(texts)), 5)

    def onnx_encoder(onnx_path: Path) -> evaluate.Encoder:
        return evaluate.onnx_encoder(onnx_path, dense.tokenizer, dense.pooling)

    batches = batches_for(criterion, "none", dense.tokenizer, calibration)
    scores = score(dense.model, criterion, batches, Accumulation(DEFAULT_ACCUMULATE), seed)
    dense_onnx = dense_onnx or export(dense, work / "dense").onnx_path
    scheme = int8_scheme(device)
    points = _table_plans(dense.model, scores, criterion)
    paths, macs = [dynamic_int8(dense_onnx, work / "dense-int8.onnx", scheme)], [1.0]
    for (kind, count), plan in list(points.items())[1:]:
        pruned = apply_plan(copy.deepcopy(dense.model), adapter_for(dense.model), plan).eval()
        macs.append(kept_macs_fraction(pruned, plan.dense, seq_len))
        shaped = LoadedModel(pruned, dense.tokenizer, dense.path, dense.task, dense.pooling, plan)
        onnx_path = export(shaped, work / f"table-{kind}-{count}").onnx_path
        paths.append(dynamic_int8(onnx_path, onnx_path.with_name("int8.onnx"), scheme))
    (dense_ms, _, _), *timed = latencies([dense_onnx, *paths])
    by_point = dict(zip(points, timed))
    shape = points[("dense", 0)].dense
    table = LatencyTable(num_layers=shape.num_layers,
                         heads_ms=((shape.num_heads, timed[0][0]),
                                   *((k, v[0]) for (kind, k), v in by_point.items() if kind == "heads")),
                         neurons_ms=((shape.ffn_dim, timed[0][0]),
                                     *((k, v[0]) for (kind, k), v in by_point.items() if kind == "neurons")))
    candidates: list[Candidate] = []
    for (kind, count), (value, low, high), path, fraction in zip(points, timed, paths, macs):
        candidates.append(Candidate(keep_flops=round(fraction, 4), precision="int8",
                                    latency_ms=round(value, 4), fidelity=fidelity(onnx_encoder(path)),
                                    meets_budget=value <= budget_ms, table=True, low_ms=_round(low),
                                    high_ms=_round(high),
                                    setting="dense" if kind == "dense" else f"{kind}: {count} per layer"))

    built: dict[int, Built] = {}
    needs_dense_stsb = stsb is not None and max_quality_drop is not None  # only a quality bound compares to it
    dense_stsb = evaluate.stsb_spearman(evaluate.torch_encoder(dense), Path(stsb)) if needs_dense_stsb else None

    def quality_drop(c: Candidate) -> float:
        return dense_stsb - c.stsb if dense_stsb is not None else 1.0 - c.fidelity

    def build(plan: PruningPlan, target_ms: float) -> Candidate:
        loaded = prune_loaded(dense, criterion=criterion, recover=recover, calibration=calibration, seed=seed,
                              plan=plan)
        name = f"candidate-{len(built)}"
        exported = export(loaded, work / name / "fp32")
        # pruning changes sizes, not which int8 kernels win: later builds try only the first build's form
        first = next(iter(built.values()), None)
        forms = (first.quantized.chosen.split(" ")[0],) if first and first.quantized.chosen != "fp32" else FORMS
        quant = quantize(exported.onnx_path, work / name / "model", device, seq_len=seq_len, forms=forms)
        if device.is_host:  # timed beside the models the final check times it with, as it will be
            (dense_now, _, _), _, (value, low, high) = latencies([dense_onnx, exported.onnx_path, quant.onnx_path])
            value *= dense_ms / dense_now  # drift between calls (2-thread speed flips here) taken out
        else:
            (value, low, high), = latencies([quant.onnx_path])
        encoder = onnx_encoder(quant.onnx_path)
        fraction = kept_macs_fraction(loaded.model, plan.dense, seq_len)
        peak = None if memory_mb is None else measure_peak_memory(
            quant.onnx_path, threads if device.is_host else 1, seq_len=seq_len).peak_over_baseline_mb
        candidate = Candidate(keep_flops=round(fraction, 4), precision=quant.chosen,
                              latency_ms=round(value, 4), low_ms=_round(low), high_ms=_round(high),
                              fidelity=fidelity(encoder), memory_mb=_round(peak),
                              meets_budget=value <= budget_ms and (peak is None or peak <= memory_mb),
                              stsb=None if stsb is None else round(evaluate.stsb_spearman(encoder, Path(stsb)), 2),
                              setting=f"{plan.allocation} allocation for {target_ms:.3f} ms "
                                      f"(table predicts {table.predict(plan.layers):.3f})")
        built[id(candidate)] = Built(loaded, exported, quant)
        candidates.append(candidate)
        return candidate

    def acceptable(c: Candidate) -> bool:
        return c.meets_budget and (max_quality_drop is None or quality_drop(c) <= max_quality_drop)

    base = points[("dense", 0)]
    notes = []
    aim = target = budget_ms * (1 - TIMING_MARGIN)
    tried: list[tuple[LayerPlan, ...]] = []

    def quality(c: Candidate) -> float:
        return c.stsb if c.stsb is not None else c.fidelity

    def allocate(allocation: str, target_ms: float) -> tuple[LayerPlan, ...]:
        if allocation == "latency":
            return by_latency(scores, table.head_cost, table.neuron_cost, target_ms - table.fixed_ms)
        return _uniform_within(scores, table, target_ms)

    preferred: str | None = None  # decided by the first round, which builds both allocations
    while len(built) < REFINEMENTS:
        kinds = ALLOCATIONS if preferred is None else (preferred,)
        plans = {}
        for kind in kinds:
            layers = allocate(kind, target)
            if layers not in tried and layers not in [p.layers for p in plans.values()]:
                plans[kind] = dataclasses.replace(base, layers=layers, allocation=kind,
                                                  target={"latency_ms": round(target, 4)})
        if not plans:
            notes.append(f"the allocation for {target:.3f} ms repeats an earlier candidate; stopping")
            break
        tried.extend(p.layers for p in plans.values())
        if min(table.predict(p.layers) for p in plans.values()) > budget_ms:
            notes.append(f"the latency table predicts no allocation meets {budget_ms:g} ms "
                         f"(smallest: {table.fixed_ms:.3f} ms); building the fastest")
        round_ = {kind: build(plan, target) for kind, plan in list(plans.items())[:REFINEMENTS - len(built)]}
        if preferred is None:
            preferred = max(round_, key=lambda kind: quality(round_[kind]))
            if len(round_) > 1:
                notes.append(f"allocations for {target:.3f} ms: " + ", ".join(
                    f"{kind} quality {quality(c):.4g} at {c.latency_ms:.3f} ms" for kind, c in round_.items())
                    + f"; refining {preferred}")
        candidate = round_.get(preferred) or next(iter(round_.values()))
        miss = candidate.latency_ms - aim
        if candidate.meets_budget and (not acceptable(candidate) or -SLACK * budget_ms <= miss <= 0):
            break  # close enough under the aim, or too lossy already: more pruning cannot help
        if candidate.memory_mb is not None and candidate.memory_mb > memory_mb:
            notes.append(f"allocated for {target:.3f} ms, peaks at {candidate.memory_mb:.1f} MiB: "
                         f"shrinking the target in proportion")
            target = min(target, candidate.latency_ms) * memory_mb / candidate.memory_mb
            continue
        if miss > 0:
            notes.append(f"allocated for {target:.3f} ms, measured {candidate.latency_ms:.3f} ms: "
                         f"correcting the target by the miss")
        target -= miss
    meeting = [c for c in candidates if acceptable(c) and not c.table]
    safe = [c for c in meeting if c.latency_ms <= aim] or meeting  # inside the timing margin only if nothing else
    chosen = max(safe, key=lambda c: (quality(c), c.keep_flops), default=None)
    kept = chosen or min((c for c in candidates if not c.table), key=lambda c: c.latency_ms)
    mark_pareto(candidates)
    for c in candidates:
        c.verdict = ("chosen" if c is chosen else "latency-table point: no recovery, not shipped" if c.table else
                     _miss(c, budget_ms, memory_mb) if not c.meets_budget else
                     f"loses {quality_drop(c):.4g} quality, more than {max_quality_drop:g}" if not acceptable(c) else
                     f"meets the budget by less than the {TIMING_MARGIN:.0%} timing margin" if c not in safe else
                     "meets the budget with lower quality than the chosen one")
    advice = _advice(chosen, kept, candidates, table, budget_ms, dense_ms, memory_mb)
    summary = SearchSummary(budget_ms=budget_ms, percentile=percentile, device=device.name,
                            predicted=not device.is_host, threads=threads, dense_fp32_ms=round(dense_ms, 4),
                            table=table.to_dict(), candidates=candidates,
                            chosen_keep_flops=None if chosen is None else chosen.keep_flops,
                            passed=chosen is not None, advice=advice, seconds=round(time.perf_counter() - started, 1),
                            notes=notes)
    return SearchResult(summary=summary, chosen=chosen, kept=kept, build=built[id(kept)])


def _uniform_within(scores: list[LayerScores], table: LatencyTable, target_ms: float) -> tuple[LayerPlan, ...]:
    """Uniform pruning at the largest kept fraction the table predicts within ``target_ms`` (bisection; the
    fraction's layers are monotone in it)."""
    low, high = 0.0, 1.0
    if table.predict(uniform(scores, 1.0, 1.0)) <= target_ms:
        return uniform(scores, 1.0, 1.0)
    for _ in range(30):
        middle = (low + high) / 2
        if middle > 0 and table.predict(uniform(scores, middle, middle)) <= target_ms:
            low = middle
        else:
            high = middle
    return uniform(scores, max(low, 1e-6), max(low, 1e-6))


def _table_plans(model: Any, scores: list[LayerScores], criterion: str) -> dict[tuple[str, int], PruningPlan]:
    """The latency table's models: ("dense", 0), then every layer at each head count (all neurons), then at each
    neuron count (all heads); the most important units kept."""
    base = make_plan(model, keep_flops=1.0, scores=scores, criterion=criterion)
    heads, neurons = base.dense.num_heads, base.dense.ffn_dim
    plans = {("dense", 0): base}
    for count in grid_counts(heads, HEAD_GRID)[1:]:
        plans[("heads", count)] = dataclasses.replace(base, layers=uniform(scores, count / heads, 1.0))
    for count in grid_counts(neurons, NEURON_GRID)[1:]:
        plans[("neurons", count)] = dataclasses.replace(base, layers=uniform(scores, 1.0, count / neurons))
    return plans


def _miss(c: Candidate, budget_ms: float, memory_mb: float | None) -> str:
    if c.latency_ms > budget_ms:
        return f"misses the budget: {c.latency_ms:.3f} ms > {budget_ms:g} ms"
    return f"misses the memory budget: {c.memory_mb:.1f} MiB > {memory_mb:g} MiB"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _advice(chosen: Candidate | None, best: Candidate, candidates: list[Candidate], table: LatencyTable,
            budget_ms: float, dense_ms: float, memory_mb: float | None) -> str:
    if chosen is not None:
        return (f"keep {chosen.keep_flops:.3f} of the encoder MACs, {chosen.precision}: {chosen.latency_ms:.3f} ms "
                f"<= {budget_ms:g} ms ({dense_ms / chosen.latency_ms:.2f}x faster than dense fp32)")
    built = [c for c in candidates if not c.table]
    if any(c.meets_budget for c in built):
        return ("candidates meet the latency budget but lose more quality than allowed: "
                + "; ".join(f"keep {c.keep_flops:.3f}: {c.verdict}" for c in built if c.meets_budget)
                + ". Needed: a larger budget or a larger allowed quality drop.")
    if best.latency_ms <= budget_ms and best.memory_mb is not None:
        return (f"memory budget {memory_mb:g} MiB is out of reach: the fastest candidate (keep "
                f"{best.keep_flops:.3f}, {best.precision}) meets {budget_ms:g} ms but peaks at {best.memory_mb:.1f} "
                f"MiB, {best.memory_mb / memory_mb:.2f}x the budget. Needed: a memory budget of at least "
                f"{best.memory_mb:.1f} MiB or a smaller model.")
    return (f"budget {budget_ms:g} ms is out of reach: the fastest candidate (keep {best.keep_flops:.3f}, "
            f"{best.precision}) measures {best.latency_ms:.3f} ms, {best.latency_ms / budget_ms:.2f}x the budget "
            f"(the latency table's floor: {table.fixed_ms:.3f} ms). Needed: a budget of at least "
            f"{best.latency_ms:.3f} ms, more threads, or a smaller model than pruning this one can reach.")
