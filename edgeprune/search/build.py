"""Building what the search compares: the latency table's models and real candidates, each timed and scored.

A table point is the dense model with every layer cut to one head (or neuron) count, uniform by
importance, unrecovered, in dynamic int8: measured for the table, never shipped. A candidate is
the real thing — pruning with the given options' recovery, parity-checked export, the never-slower
quantization — timed the way the final check will time it, and scored against the dense model.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeprune import evaluate
from edgeprune.devices import DeviceProfile
from edgeprune.exporting import ExportResult, export
from edgeprune.models import adapter_for
from edgeprune.models.loading import LoadedModel
from edgeprune.models.plan import DenseShape, PruningPlan
from edgeprune.options import PruneOptions
from edgeprune.profiling import Measurement, estimate
from edgeprune.profiling.measure import LatencyStats, compare_latency
from edgeprune.profiling.memory import measure_peak_memory
from edgeprune.pruning import apply_plan, kept_macs_fraction
from edgeprune.pruning.allocate import uniform
from edgeprune.pruning.importance import LayerScores
from edgeprune.pruning.loaded import prune_loaded
from edgeprune.quantization import FORMS, QuantizeResult, dynamic_int8, int8_scheme, quantize
from edgeprune.search.choice import Bounds, Candidate
from edgeprune.search.latency_table import HEAD_GRID, NEURON_GRID, LatencyTable, grid_counts

RemoteMeasure = Callable[[Path], Measurement]
"""Measures a model on the device itself (through its edgeprune agent) and returns the device's own measurement."""
Timed = tuple[float, float | None, float | None]
"""(value, low, high) ms at the budget's percentile. Measured here, low and high are None, or — when the timing
stayed unstable after re-measuring — the lowest and highest per-round percentile, so the noise shows."""


@dataclass(frozen=True)
class Timing:
    """How the search times models for ``device``: side by side on this host, one after another on the device
    itself when its agent is given (``remote``), or predicted from this host elsewhere."""

    device: DeviceProfile
    percentile: str
    threads: int
    seq_len: int
    runs: int
    remote: RemoteMeasure | None = None

    @property
    def measured(self) -> bool:
        """Whether candidates are measured (here or on the device), not predicted."""
        return self.device.is_host or self.remote is not None

    def latencies(self, paths: list[Path]) -> list[Timed]:
        if self.remote is not None:
            return [_measured(self.remote(path).latency_stats, self.percentile) for path in paths]
        if self.device.is_host:
            stats = compare_latency(paths, self.threads, rounds=3, runs=max(1, self.runs // 3),
                                    seq_len=self.seq_len)
            return [_measured(s, self.percentile) for s in stats]
        # predicted at the device's own thread count, as the final verdict is
        return [estimate(p, self.device, seq_len=self.seq_len, runs=self.runs, memory=False).latency(self.percentile)
                for p in paths]

    def candidate(self, quantized: Path, fp32: Path, dense_onnx: Path, dense_ms: float) -> Timed:
        """A built candidate: here timed beside the dense and its own fp32 model, as the final check times it, with
        the dense model's drift since ``dense_ms`` was measured taken out (2-thread speed flips here); elsewhere
        predicted alone."""
        if not self.measured:
            return self.latencies([quantized])[0]
        (dense_now, _, _), _, (value, low, high) = self.latencies([dense_onnx, fp32, quantized])
        return value * (dense_ms / dense_now), low, high

    @property
    def memory_threads(self) -> int:
        """Threads of the peak-memory probe (run here): the run's own when measured; one for a prediction, as the
        device's estimate uses."""
        return self.threads if self.measured else 1


def _measured(stats: LatencyStats, percentile: str) -> Timed:
    value = stats.percentile(percentile)
    if not stats.doubts:
        return value, None, None
    per_round = [LatencyStats(r).percentile(percentile) for r in stats.rounds]
    return value, min(per_round), max(per_round)


@dataclass(frozen=True)
class QualityProbe:
    """Quality against the dense model: cosine fidelity on the built-in sentences, and STS-B when a file is given."""

    dense: LoadedModel
    texts: list[str]
    reference: np.ndarray
    """The dense model's embeddings of ``texts``."""
    stsb: Path | None = None

    def encoder(self, onnx_path: Path) -> evaluate.Encoder:
        return evaluate.onnx_encoder(onnx_path, self.dense.processor, self.dense.pooling)

    def fidelity(self, encoder: evaluate.Encoder) -> float:
        return round(evaluate.cosine_fidelity(self.reference, encoder(self.texts)), 5)

    def stsb_of(self, encoder: evaluate.Encoder) -> float | None:
        return None if self.stsb is None else round(evaluate.stsb_spearman(encoder, self.stsb), 2)


@dataclass(frozen=True)
class Setup:
    """What every model a search builds shares."""

    dense: LoadedModel
    dense_onnx: Path
    work: Path
    """The search's directory: every table model and candidate is written below it."""
    options: PruneOptions
    timing: Timing
    probe: QualityProbe
    bounds: Bounds


@dataclass
class Built:
    """A candidate's artifacts: the pruned model, its parity-checked export and its chosen quantized form."""

    pruned: LoadedModel
    exported: ExportResult
    quantized: QuantizeResult


@dataclass(frozen=True)
class TablePoints:
    table: LatencyTable
    candidates: list[Candidate]
    """Every table model as a candidate (``table=True``), the dense int8 first."""
    dense_ms: float
    """The dense fp32 model, timed with them."""


def table_plans(base: PruningPlan, scores: list[LayerScores]) -> dict[tuple[str, int], PruningPlan]:
    """The latency table's models: ("dense", 0) — ``base``, all units kept —, then every layer at each head count
    (all neurons), then at each neuron count (all heads); the most important units kept."""
    heads, neurons = base.dense.num_heads, base.dense.ffn_dim
    plans = {("dense", 0): base}
    for count in grid_counts(heads, HEAD_GRID)[1:]:
        plans[("heads", count)] = dataclasses.replace(base, layers=uniform(scores, count / heads, 1.0))
    for count in grid_counts(neurons, NEURON_GRID)[1:]:
        plans[("neurons", count)] = dataclasses.replace(base, layers=uniform(scores, 1.0, count / neurons))
    return plans


def latency_table(shape: DenseShape, timed: dict[tuple[str, int], float]) -> LatencyTable:
    """The table from each point's model ms (keys as ``table_plans``); both curves start at the dense point."""
    dense = timed[("dense", 0)]
    return LatencyTable(num_layers=shape.num_layers,
                        heads_ms=((shape.num_heads, dense), *((k, ms) for (kind, k), ms in timed.items()
                                                               if kind == "heads")),
                        neurons_ms=((shape.ffn_dim, dense), *((k, ms) for (kind, k), ms in timed.items()
                                                              if kind == "neurons")))


def measure_table(setup: Setup, base: PruningPlan, scores: list[LayerScores]) -> TablePoints:
    """Build, time (beside the dense fp32 model) and score every table model."""
    dense, seq_len = setup.dense, setup.timing.seq_len
    points = table_plans(base, scores)
    scheme = int8_scheme(setup.timing.device)
    paths, macs = [dynamic_int8(setup.dense_onnx, setup.work / "dense-int8.onnx", scheme)], [1.0]
    for (kind, count), plan in list(points.items())[1:]:
        pruned = apply_plan(copy.deepcopy(dense.model), adapter_for(dense.model), plan).eval()
        macs.append(kept_macs_fraction(pruned, plan.dense, seq_len))
        shaped = dataclasses.replace(dense, model=pruned, plan=plan)
        onnx_path = export(shaped, setup.work / f"table-{kind}-{count}").onnx_path
        paths.append(dynamic_int8(onnx_path, onnx_path.with_name("int8.onnx"), scheme))
    (dense_ms, _, _), *timed = setup.timing.latencies([setup.dense_onnx, *paths])
    candidates = [Candidate(keep_flops=round(fraction, 4), precision="int8", latency_ms=round(value, 4),
                            fidelity=setup.probe.fidelity(setup.probe.encoder(path)),
                            meets_budget=setup.bounds.meets(value), table=True, low_ms=_round(low),
                            high_ms=_round(high), setting="dense" if kind == "dense" else f"{kind}: {count} per layer")
                  for (kind, count), (value, low, high), path, fraction in zip(points, timed, paths, macs)]
    table = latency_table(base.dense, {point: value for point, (value, _, _) in zip(points, timed)})
    return TablePoints(table=table, candidates=candidates, dense_ms=dense_ms)


@dataclass
class CandidateBuilder:
    """Builds real candidates one after another, keeping each one's artifacts.

    Pruning changes sizes, not which int8 kernels win: after the first build, later ones try only
    the form it chose (all forms again when it kept fp32).
    """

    setup: Setup
    table: LatencyTable
    dense_ms: float
    """The dense fp32 latency the table was measured with: candidates are scaled to its drift."""
    built: list[tuple[Candidate, Built]] = field(default_factory=list)

    @property
    def forms(self) -> tuple[str, ...]:
        first = self.built[0][1].quantized.form if self.built else "fp32"
        return FORMS if first == "fp32" else (first,)

    def build(self, plan: PruningPlan, target_ms: float) -> Candidate:
        """Prune ``dense`` to ``plan`` (allocated for ``target_ms``), export, quantize, time and score it."""
        s = self.setup
        loaded = prune_loaded(s.dense, options=s.options, plan=plan)
        name = f"candidate-{len(self.built)}"
        exported = export(loaded, s.work / name / "fp32")
        quant = quantize(exported.onnx_path, s.work / name / "model", s.timing.device, seq_len=s.timing.seq_len,
                         forms=self.forms)
        value, low, high = s.timing.candidate(quant.onnx_path, exported.onnx_path, s.dense_onnx, self.dense_ms)
        encoder = s.probe.encoder(quant.onnx_path)
        peak = None if s.bounds.memory_mb is None else measure_peak_memory(
            quant.onnx_path, s.timing.memory_threads, seq_len=s.timing.seq_len).peak_over_baseline_mb
        candidate = Candidate(keep_flops=round(kept_macs_fraction(loaded.model, plan.dense, s.timing.seq_len), 4),
                              precision=quant.chosen, latency_ms=round(value, 4), low_ms=_round(low),
                              high_ms=_round(high), fidelity=s.probe.fidelity(encoder), memory_mb=_round(peak),
                              meets_budget=s.bounds.meets(value, peak), stsb=s.probe.stsb_of(encoder),
                              setting=f"{plan.allocation} allocation for {target_ms:.3f} ms "
                                      f"(table predicts {self.table.predict(plan.layers):.3f})")
        self.built.append((candidate, Built(loaded, exported, quant)))
        return candidate

    def artifacts(self, candidate: Candidate) -> Built:
        return next(built for c, built in self.built if c is candidate)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
