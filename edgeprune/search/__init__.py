"""Budgeted search: the best-quality pruned + quantized model that meets a latency budget on a target.

Kwon et al. (2022) in three steps. Importance is scored once (Fisher by default). A latency
table is measured on the real runtime: per-layer cost of heads and of FFN neurons, piecewise
linear with its flat stretches (``latency_table``). The budget is then allocated two ways:
by importance per millisecond across all layers (``pruning.allocate.by_latency``), and uniformly
at the largest fraction the table predicts within it. Which keeps more quality varies (measured
on all-MiniLM-L6-v2 at 30% of dense latency: STS-B 85.2 and 71.6 for cross-layer allocations in
two runs, 82.3 for uniform), and neither the scores nor the unrecovered model tell reliably, so
both candidates are built for real — pruning with the given ``PruneOptions`` (scoring,
accumulation, calibration data, recovery), parity-checked export, the never-slower quantization —
and measured. Candidates aim ``TIMING_MARGIN`` under the budget, since the final check
re-measures; while the measured latency misses that aim (or beats it by far), the better
allocation's target is corrected by the miss and rebuilt, ``REFINEMENTS`` builds in all
(``search.refine``).
On this host latencies are measured; on any other device profile each is predicted from a host
measurement by the cost model (``profiling.estimate``) and carries its error band. Every
candidate's quality is cosine fidelity to the dense model on the built-in sentences (and
STS-B when a file is given); the result keeps them all, with the table's models, marks the
Pareto front of latency vs quality, and says why each was not chosen (``search.choice``).
"""

from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeprune import evaluate
from edgeprune.data import sample_sentences
from edgeprune.devices import DeviceProfile, load_profile
from edgeprune.errors import EdgepruneError
from edgeprune.exporting import export
from edgeprune.models.loading import LoadedModel
from edgeprune.options import PruneOptions
from edgeprune.pruning import DEFAULTS, Accumulation, make_plan, score
from edgeprune.pruning.calibration import calibration_batches_for
from edgeprune.search.build import (
    Built,
    CandidateBuilder,
    QualityProbe,
    RemoteMeasure,
    Setup,
    Timing,
    measure_table,
)
from edgeprune.search.choice import TIMING_MARGIN, Bounds, Candidate, Choice, advice, choose, mark_pareto
from edgeprune.search.refine import REFINEMENTS, allocate, refine


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


def search(dense: LoadedModel, budget_ms: float, work: Path | str, *, options: PruneOptions = DEFAULTS,
           percentile: str = "p90", threads: int = 1, seq_len: int = 128, stsb: Path | str | None = None,
           max_quality_drop: float | None = None, dense_onnx: Path | None = None, runs: int = 40,
           device: DeviceProfile | str = "host", memory_mb: float | None = None,
           remote: RemoteMeasure | None = None) -> SearchResult:
    """Find the best-quality pruned + quantized ``dense`` meeting ``budget_ms`` at ``percentile`` on ``device``
    (measured when it is this host, or on the device itself through ``remote``, its agent's measurement; predicted
    with a band otherwise).

    ``options`` say how units are scored (criterion, accumulation, calibration data, batch size,
    seed) and how every candidate is recovered; the search allocates by latency itself, so
    ``options.allocation`` plays no part. ``work`` (a new directory) receives every candidate
    (``dense_onnx``: an export of ``dense`` to reuse); the chosen one — or, when the budget is
    impossible, the fastest one found — is ``result.kept`` with its artifacts in ``result.build``.
    ``max_quality_drop`` rejects candidates losing more than that: STS-B points when ``stsb`` is
    given, else 1 − cosine fidelity to the dense model. With ``memory_mb``, a candidate must also
    peak below it (measured in a fresh process on this host, which is what another device's
    estimate uses too); one that is fast enough but too large is pruned further in proportion.
    """
    if budget_ms <= 0:
        raise EdgepruneError(f"latency budget {budget_ms} ms is not positive", "pass --latency-ms greater than 0")
    started = time.perf_counter()
    device = device if isinstance(device, DeviceProfile) else load_profile(device)
    work = Path(work)
    work.mkdir(parents=True, exist_ok=False)
    texts = sample_sentences()
    stsb = None if stsb is None else Path(stsb)
    probe = QualityProbe(dense, texts, evaluate.torch_encoder(dense)(texts), stsb)
    batches = calibration_batches_for(dense, options)
    accumulation = Accumulation(options.accumulate, options.ema_decay)
    scores = score(dense.model, options.criterion, batches, accumulation, options.seed)
    base = make_plan(dense.model, keep_flops=1.0, scores=scores, criterion=options.criterion, batches=batches,
                     accumulation=accumulation, seed=options.seed)
    dense_stsb = (evaluate.stsb_spearman(evaluate.torch_encoder(dense), stsb)
                  if stsb is not None and max_quality_drop is not None else None)  # only a quality bound needs it
    bounds = Bounds(budget_ms, memory_mb, max_quality_drop, dense_stsb)
    setup = Setup(dense=dense, dense_onnx=dense_onnx or export(dense, work / "dense").onnx_path, work=work,
                  options=options, timing=Timing(device, percentile, threads, seq_len, runs, remote), probe=probe,
                  bounds=bounds)
    points = measure_table(setup, base, scores)
    builder = CandidateBuilder(setup, points.table, points.dense_ms)
    notes = refine(builder.build, functools.partial(allocate, scores, points.table), base, points.table, bounds)
    candidates = [*points.candidates, *(c for c, _ in builder.built)]
    choice = choose(candidates, bounds)
    mark_pareto(candidates)
    for c, verdict in zip(candidates, choice.verdicts):
        c.verdict = verdict
    summary = SearchSummary(budget_ms=budget_ms, percentile=percentile, device=device.name,
                            predicted=not setup.timing.measured, threads=threads,
                            dense_fp32_ms=round(points.dense_ms, 4),
                            table=points.table.to_dict(), candidates=candidates,
                            chosen_keep_flops=None if choice.chosen is None else choice.chosen.keep_flops,
                            passed=choice.chosen is not None,
                            advice=advice(choice, candidates, bounds, points.table.fixed_ms, points.dense_ms),
                            seconds=round(time.perf_counter() - started, 1), notes=notes)
    return SearchResult(summary=summary, chosen=choice.chosen, kept=choice.kept, build=builder.artifacts(choice.kept))


__all__ = ["REFINEMENTS", "TIMING_MARGIN", "Bounds", "Built", "Candidate", "Choice", "SearchResult", "SearchSummary",
           "choose", "mark_pareto", "search"]
