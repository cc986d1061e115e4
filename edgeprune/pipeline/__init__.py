"""optimize(): prune → export → quantize → profile → check, into one run directory.

The run directory holds every stage's output and a ``run.json`` manifest (inputs with
hashes, settings, versions, figures, verdicts), so a run can be compared and reproduced.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeprune import evaluate, runtime
from edgeprune.agent import connect
from edgeprune.agent.protocol import MeasureSettings
from edgeprune.budgets import Budget, Verdict, passed, verdicts
from edgeprune.data.inputs import input_batches
from edgeprune.errors import BadArgumentError
from edgeprune.exporting import ExportResult, export
from edgeprune.files import atomic_write_json, sha256_file, size_mb, staged_dir
from edgeprune.models.base import TEXT
from edgeprune.models.loading import LoadedModel, load_model, save_pruned
from edgeprune.options import PruneOptions, check_measurement, check_percentile, check_positive, check_target
from edgeprune.packaging import PackageOptions, package
from edgeprune.profiling import (
    DEFAULT_NEW_TOKENS,
    GenerationStats,
    HostHealth,
    Measurement,
    check_health,
    compare_latency,
    estimate,
    load_profile,
)
from edgeprune.profiling.generation import compare_decode
from edgeprune.profiling.measure import speedup_interval
from edgeprune.profiling.memory import measure_peak_memory
from edgeprune.profiling.operators import profile_operators
from edgeprune.provenance import host_fingerprint, versions
from edgeprune.pruning import kept_macs_fraction
from edgeprune.pruning.calibration import calibration_items
from edgeprune.pruning.loaded import prune_loaded
from edgeprune.quantization import QuantizeResult, quantize
from edgeprune.quantization.forms import weight_only_int4
from edgeprune.report import write_reports
from edgeprune.report.build import report_from
from edgeprune.report.schema import speedup_text
from edgeprune.search import SearchResult, search
from edgeprune.search.build import RemoteMeasure
from edgeprune.search.decode import search_decode

if TYPE_CHECKING:
    from edgeprune.agent.client import RemoteDevice

DEFAULT_OUT = Path("edgeprune-out")
DEFAULT_KEEP_FLOPS = 2 / 3
"""8 of 12 heads and 1024 of 1536 FFN neurons on MiniLM: 2.9x faster with int8 at one thread, -4 STS-B."""
DEFAULT_MIN_SPEEDUP = 2.0

Tick = Callable[[int, int], None]
Stage = Callable[[str], contextlib.AbstractContextManager[Tick]]
"""Reports a pipeline stage: a context per stage, yielding a (done, total) progress callback."""


def _silent(_description: str) -> contextlib.AbstractContextManager[Tick]:
    return contextlib.nullcontext(lambda _done, _total: None)


@dataclass
class OptimizeSettings:
    """Everything that decides the result of a run; recorded verbatim in run.json."""

    model: str | None = None
    profile: str = "host"
    keep_flops: float | None = None
    heads_ratio: float | None = None
    ffn_ratio: float | None = None
    prune: PruneOptions = field(default_factory=PruneOptions)
    """How units are scored, allocated and recovered (the same object the CLI's ``prune`` builds)."""
    latency_ms: float | None = None
    memory_mb: float | None = None
    tokens_per_s: float | None = None
    """Decoders: the least decode throughput. Without a pruning target, search for the least pruning that meets
    it (``search.decode``)."""
    new_tokens: int = DEFAULT_NEW_TOKENS
    """Decoders: tokens generated after the ``seq_len``-token prompt when measuring decode."""
    min_speedup: float = DEFAULT_MIN_SPEEDUP
    """With no --latency-ms, the budget is the dense fp32 latency divided by this."""
    percentile: str = "p90"
    threads: int | None = None
    batch: int = 1
    seq_len: int = 128
    runs: int = 100
    stsb: str | None = None
    max_quality_drop: float | None = None
    """With a searched budget: the most quality a candidate may lose (STS-B points with --stsb, else 1 − cosine)."""
    package: bool = False
    """End with the shipped model packaged for the profile (``packaging``) in ``bundle/`` of the run directory."""
    remote: str | None = None
    """URL of an edgeprune agent on the device ``profile`` describes: candidates and the final models are measured
    there, not predicted (its token is not a setting: it is never written to run.json)."""

    def __post_init__(self) -> None:
        """Refuse every bad value before any work starts (not after minutes of pruning)."""
        check_target(self.keep_flops, self.heads_ratio, self.ffn_ratio)
        check_percentile(self.percentile)
        check_positive(latency_ms=self.latency_ms, memory_mb=self.memory_mb, tokens_per_s=self.tokens_per_s,
                       min_speedup=self.min_speedup, max_quality_drop=self.max_quality_drop,
                       new_tokens=self.new_tokens)
        check_measurement(self.threads, self.batch, self.seq_len, self.runs)
        if self.remote is not None and self.searches_decode():
            raise BadArgumentError("the tokens/s search times its int4 candidates on this host, not through an agent",
                                   "with --remote, pass a pruning target (--keep-flops) beside --tokens-per-s")

    def searches(self) -> bool:
        """A latency budget without a fixed pruning target: search for the setting that meets it."""
        return self.latency_ms is not None and not self._targeted()

    def searches_decode(self) -> bool:
        """A decoder's tokens/s budget without a fixed pruning target (and no latency search)."""
        return self.tokens_per_s is not None and self.latency_ms is None and not self._targeted()

    def _targeted(self) -> bool:
        return self.keep_flops is not None or self.heads_ratio is not None or self.ffn_ratio is not None

    def pruning_target(self) -> dict[str, float | None]:
        if not self._targeted():
            return {"keep_flops": DEFAULT_KEEP_FLOPS, "heads_ratio": None, "ffn_ratio": None}
        return {"keep_flops": self.keep_flops, "heads_ratio": self.heads_ratio, "ffn_ratio": self.ffn_ratio}


@dataclass
class ModelRow:
    """One line of the result table."""

    name: str
    measurement: Measurement
    speedup: float
    fidelity: float | None
    stsb_spearman: float | None
    top1_agreement: float | None = None
    """Image classifiers: share of held-out images given the dense model's top class."""
    speedup_interval: tuple[float, float] | None = None
    """95% bootstrap interval of the speedup over the interleaved rounds."""
    speedup_reliable: bool = True
    """False when either measurement behind the speedup is unstable: then only the interval means anything."""

    def speedup_text(self) -> str:
        return speedup_text(self.speedup, self.speedup_interval, self.speedup_reliable)

    def to_dict(self) -> dict[str, Any]:
        interval = None if self.speedup_interval is None else [round(v, 3) for v in self.speedup_interval]
        return {"name": self.name, "speedup": round(self.speedup, 3), "speedup_interval": interval,
                "speedup_reliable": self.speedup_reliable,
                "cosine_fidelity": None if self.fidelity is None else round(self.fidelity, 5),
                "stsb_spearman": None if self.stsb_spearman is None else round(self.stsb_spearman, 2),
                "top1_agreement": None if self.top1_agreement is None else round(self.top1_agreement, 4),
                **self.measurement.to_dict()}


@dataclass
class RunResult:
    out_dir: Path
    rows: list[ModelRow]
    verdicts: list[Verdict]
    manifest: dict[str, Any] = field(repr=False)

    @property
    def passed(self) -> bool:
        return passed(self.verdicts)


def optimize(settings: OptimizeSettings | None = None, out_dir: Path | str = DEFAULT_OUT,
             stage: Stage | None = None, agent: RemoteDevice | None = None) -> RunResult:
    """Run the whole pipeline on ``settings.model`` (the packaged MiniLM when None) into ``out_dir``.

    With ``settings.remote``, ``agent`` is its client (``agent.connect``; made here from ``EDGEPRUNE_AGENT_TOKEN``
    when not given): the search's candidates and the final rows are measured on the device.
    """
    settings = settings or OptimizeSettings()
    stage = stage or _silent
    started = time.perf_counter()
    device = load_profile(settings.profile)
    if settings.remote is not None and agent is None:
        agent = connect(settings.remote)
    # Another device is predicted from one-thread measurements here; its own thread count is the prediction's.
    threads = settings.threads or (device.runtime.threads if device.is_host or agent else 1)
    remote = None if agent is None else _remote_timer(agent, threads, settings)
    with stage("Loading model"):
        dense = load_model(settings.model)
        if settings.searches() and dense.modality != TEXT:
            raise BadArgumentError("the budgeted search (--latency-ms without a pruning target) supports text models",
                                   "pass --keep-flops (or --heads-ratio/--ffn-ratio) with --latency-ms")
        if settings.tokens_per_s is not None and not dense.task.startswith("text-generation"):
            raise BadArgumentError("--tokens-per-s is a decoder budget and this model does not generate text",
                                   "use --latency-ms for an encoder")
        items = calibration_items(dense, settings.prune.calibration)
    parity_inputs = None if dense.modality == TEXT else items[1]
    out_dir = Path(out_dir)
    figures: dict[str, Any] = {}
    with staged_dir(out_dir, inputs=[dense.path]) as tmp:
        with stage("Exporting the dense baseline to ONNX"):
            dense_export = export(dense, tmp / "dense-onnx", inputs=parity_inputs)
            decoder = runtime.takes_cache(dense_export.onnx_path)
            # before minutes of pruning: the prompt and what is generated after it must fit the context
            runtime.check_seq_len(dense_export.onnx_path, settings.seq_len + (settings.new_tokens if decoder else 0))
        t0 = time.perf_counter()
        if settings.searches():
            with stage(f"Searching for the best model within {settings.latency_ms:g} ms {settings.percentile}"):
                found = search(dense, settings.latency_ms, tmp / "search", dense_onnx=dense_export.onnx_path,
                               percentile=settings.percentile, threads=threads, seq_len=settings.seq_len,
                               options=settings.prune, stsb=settings.stsb,
                               max_quality_drop=settings.max_quality_drop, runs=settings.runs, device=device,
                               memory_mb=settings.memory_mb, remote=remote)
                pruned, pruned_export, quant = _adopt(found, tmp)
                figures["search"] = found.to_dict()
        elif settings.searches_decode():
            with stage(f"Searching for the least pruning that decodes {settings.tokens_per_s:g} tokens/s (int4)"):
                dense_int4 = weight_only_int4(dense_export.onnx_path, tmp / "dense.int4.onnx")
                found_decode = search_decode(dense, settings.tokens_per_s, dense_int4, tmp / "search",
                                             options=settings.prune, threads=threads, prompt_tokens=settings.seq_len,
                                             new_tokens=settings.new_tokens)
                pruned = found_decode.kept
                shutil.move(found_decode.exported.onnx_path.parent, tmp / "onnx")
                pruned_export = dataclasses.replace(found_decode.exported,
                                                    onnx_path=tmp / "onnx" / found_decode.exported.onnx_path.name)
                shutil.rmtree(tmp / "search")
                dense_int4.unlink()
                figures["decode_search"] = found_decode.to_dict()
            with stage("Quantizing (timing candidates)"):
                quant = quantize(pruned_export.onnx_path, tmp / "int8", device, seq_len=settings.seq_len)
        else:
            recover = settings.prune.recover
            recovering = "" if recover == "none" else f" and recovering ({recover})"
            with stage(f"Pruning heads and FFN neurons{recovering}") as tick:
                pruned = prune_loaded(dense, **settings.pruning_target(), options=settings.prune, tick=tick)
            with stage("Exporting the pruned model to ONNX (parity-checked)"):
                pruned_export = export(pruned, tmp / "onnx", inputs=parity_inputs)
            with stage("Quantizing to int8 (timing candidates)"):
                quant = quantize(pruned_export.onnx_path, tmp / "int8", device, seq_len=settings.seq_len,
                                 **_feeds(dense, items))
        save_pruned(pruned, tmp / "pruned")
        plan = pruned.plan
        figures["prune"] = {"seconds": round(time.perf_counter() - t0, 2), "kept_heads": plan.kept_heads,
                            "kept_neurons": plan.kept_neurons, "recovery": plan.recovery,
                            "kept_macs_fraction": round(kept_macs_fraction(pruned.model, plan.dense,
                                                                           settings.seq_len), 4)}
        figures["export"] = {"max_abs_diff_dense": dense_export.max_abs_diff,
                             "max_abs_diff_pruned": pruned_export.max_abs_diff,
                             "parity_texts": pruned_export.parity_texts}
        figures["quantize"] = {**quant.to_dict(), "onnx_path": str(quant.onnx_path.relative_to(tmp))}
        models = {"dense fp32": dense_export.onnx_path, "pruned fp32": pruned_export.onnx_path,
                  f"pruned {quant.chosen}": quant.onnx_path}
        where = f"on {settings.remote}" if agent else "side by side"
        with stage(f"Profiling {len(models)} models {where} ({threads} thread(s))"):
            state = check_health()
            measurements = (_measure(models, tmp, device.name, threads, settings, state) if agent is None else
                            _measure_remote(models, tmp, device.name, threads, settings, agent))
        with stage("Measuring quality"):
            rows = _rows(dense, models, measurements, settings, items[1])
        if device.is_host or agent:  # judged on the measurements just made (here side by side, or on the device)
            shipped, baseline = rows[-1].measurement, measurements["dense fp32"]
        else:
            with stage(f"Predicting the shipped model on {device.name}"):
                baseline = None if settings.latency_ms is not None else estimate(
                    dense_export.onnx_path, device, seq_len=settings.seq_len, memory=False)
                shipped = estimate(quant.onnx_path, device, seq_len=settings.seq_len,
                                   memory=settings.memory_mb is not None, new_tokens=settings.new_tokens)
                figures["prediction"] = shipped.to_dict()
        budget = _budget(settings, None if baseline is None else baseline.latency(settings.percentile)[0])
        derived = settings.latency_ms is None and settings.memory_mb is None and settings.tokens_per_s is None
        budget_doubts = [f"the budget is derived from the dense fp32 {settings.percentile}, which cannot be trusted"
                         ] if derived and baseline is not None and baseline.timing_doubts else []
        lines = verdicts(shipped, budget, budget_doubts)
        if settings.package:
            with stage(f"Packaging the shipped model for {device.name}"):
                bundle = package(quant.onnx_path, device, tmp / "bundle",
                                 PackageOptions(batch=settings.batch, seq_len=settings.seq_len),
                                 budget_verdicts=[line.to_dict() for line in lines])
                figures["package"] = {key: bundle.manifest[key] for key in
                                      ("bundle_size_mb", "models", "execution_providers", "fixed_shape_variant")}
        with stage("Profiling operators and writing the report"):
            figures["op_time_ms"] = _op_times(dense_export.onnx_path, quant.onnx_path, settings.seq_len)
            manifest = _manifest(settings, dense, out_dir, tmp, figures, rows, budget, lines,
                                 time.perf_counter() - started, items[1], state)
            atomic_write_json(tmp / "run.json", manifest)
            write_reports(tmp, report_from(manifest, plan))
    return RunResult(out_dir=out_dir, rows=rows, verdicts=lines, manifest=manifest)


def _adopt(found: SearchResult, run_dir: Path) -> tuple[LoadedModel, ExportResult, QuantizeResult]:
    """Move the kept search candidate's export and int8 model to the run directory's usual places."""
    built = found.build
    shutil.move(built.exported.onnx_path.parent, run_dir / "onnx")
    shutil.move(built.quantized.onnx_path.parent, run_dir / "int8")
    shutil.rmtree(run_dir / "search")
    exported = dataclasses.replace(built.exported, onnx_path=run_dir / "onnx" / built.exported.onnx_path.name)
    quantized = dataclasses.replace(built.quantized, onnx_path=run_dir / "int8" / built.quantized.onnx_path.name)
    return built.pruned, exported, quantized


def _op_times(before: Path, after: Path, seq_len: int) -> dict[str, dict[str, float]]:
    """Summed kernel time per operator type (ms, one thread) of the dense fp32 and the shipped model."""
    times: dict[str, dict[str, float]] = {}
    for label, path in (("before", before), ("after", after)):
        for op in profile_operators(path, threads=1, seq_len=seq_len, runs=10).ops:
            slot = times.setdefault(op.op_type, {"before": 0.0, "after": 0.0})
            slot[label] = round(slot[label] + op.ms, 4)
    return times


def _measure(models: dict[str, Path], run_dir: Path, profile_name: str, threads: int,
             settings: OptimizeSettings, state: HostHealth) -> dict[str, Measurement]:
    """Latency side by side (interleaved rounds), then peak memory of each in a fresh process."""
    rounds = 4
    paths = list(models.values())
    stats = compare_latency(paths, threads, rounds=rounds, runs=max(1, settings.runs // rounds),
                            batch=settings.batch, seq_len=settings.seq_len)
    # a decoder's forward at seq_len is its prefill; its decode steps are timed side by side too
    new_tokens = settings.new_tokens if runtime.takes_cache(paths[0]) else 0
    decode = compare_decode(paths, threads, prompt_tokens=settings.seq_len, new_tokens=new_tokens) \
        if new_tokens else [None] * len(paths)
    host, lib_versions = host_fingerprint(), versions()
    return {
        name: Measurement(model=str(path.relative_to(run_dir)), profile=profile_name, size_mb=size_mb(path),
                          threads=threads, batch=settings.batch, seq_len=settings.seq_len, latency_stats=latency,
                          memory_stats=measure_peak_memory(path, threads, settings.batch, settings.seq_len,
                                                           new_tokens=new_tokens),
                          host=host, versions=lib_versions, health=state,
                          generation=None if steps is None else GenerationStats(settings.seq_len, new_tokens, latency,
                                                                                steps))
        for (name, path), latency, steps in zip(models.items(), stats, decode)
    }


def _remote_timer(agent: RemoteDevice, threads: int, settings: OptimizeSettings) -> RemoteMeasure:
    """The search's timer on the device: each candidate measured by the agent (latency only: a candidate's peak
    memory is measured here, as for a predicted device)."""
    wanted = MeasureSettings(threads=threads, batch=settings.batch, seq_len=settings.seq_len,
                             runs=settings.runs, new_tokens=settings.new_tokens, memory=False)
    return lambda path: agent.measure(path, wanted)


def _measure_remote(models: dict[str, Path], run_dir: Path, profile_name: str, threads: int,
                    settings: OptimizeSettings, agent: RemoteDevice) -> dict[str, Measurement]:
    """Each model measured on the device by its agent, one after another (the agent measures one at a time), with
    peak memory; named as a measurement here is (path in the run, the profile)."""
    wanted = MeasureSettings(threads=threads, batch=settings.batch, seq_len=settings.seq_len, runs=settings.runs,
                             new_tokens=settings.new_tokens)
    return {name: dataclasses.replace(agent.measure(path, wanted), model=str(path.relative_to(run_dir)),
                                      profile=profile_name) for name, path in models.items()}


def _rows(dense: LoadedModel, models: dict[str, Path], measurements: dict[str, Measurement],
          settings: OptimizeSettings, held_out: list[object]) -> list[ModelRow]:
    """Quality of each model on inputs never calibrated on: cosine fidelity to the dense PyTorch model (and
    top-1 agreement for classifiers of images; STS-B Spearman with --stsb)."""
    reference_embeddings = evaluate.torch_encoder(dense)(held_out)
    classifier = dense.task == "image-classification"
    base = measurements["dense fp32"]
    rows = []
    for name, path in models.items():
        encoder = evaluate.onnx_encoder(path, dense.processor, dense.pooling)
        embeddings = encoder(held_out)
        fidelity = evaluate.cosine_fidelity(reference_embeddings, embeddings)
        agreement = evaluate.top1_agreement(reference_embeddings, embeddings) if classifier else None
        stsb = evaluate.stsb_spearman(encoder, Path(settings.stsb)) if settings.stsb else None
        measured = measurements[name]
        interval = None if measured is base else speedup_interval(base.latency_stats, measured.latency_stats)
        rows.append(ModelRow(name, measured, base.latency_stats.p50 / measured.latency_stats.p50, fidelity, stsb,
                             agreement, interval, not (base.latency_stats.doubts or measured.latency_stats.doubts)))
    return rows


def _feeds(dense: LoadedModel, items: tuple[list[object], list[object]]) -> dict[str, list[dict[str, Any]]]:
    """Quantization's calibration and check inputs for an image model (from the calibration folder: fitted on
    one part, checked on the held-out part); a text model's come from the tokenizer saved beside it."""
    if dense.modality == TEXT:
        return {}
    fit, held = items
    return {"calibration": input_batches(dense.processor, fit, 8), "check": input_batches(dense.processor, held, 8)}


def _budget(settings: OptimizeSettings, dense_ms: float | None) -> Budget:
    """The user's budget, or the dense fp32 latency (on the target, at the percentile) / --min-speedup."""
    latency = settings.latency_ms
    if latency is None and settings.memory_mb is None and settings.tokens_per_s is None:
        latency = dense_ms / settings.min_speedup
    return Budget(latency_ms=latency, memory_mb=settings.memory_mb, percentile=settings.percentile,
                  tokens_per_s=settings.tokens_per_s)


def _manifest(settings: OptimizeSettings, dense: LoadedModel, out_dir: Path, tmp: Path, figures: dict[str, Any],
              rows: list[ModelRow], budget: Budget, lines: list[Verdict], seconds: float,
              held_out: list[object], state: HostHealth) -> dict[str, Any]:
    weights = sorted(p for p in dense.path.iterdir() if p.suffix in (".safetensors", ".bin"))
    outputs = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*.onnx"))
    budget_source = ("user" if not (settings.latency_ms is None and settings.memory_mb is None
                                    and settings.tokens_per_s is None)
                     else f"dense fp32 {settings.percentile} / {settings.min_speedup:g}")
    return {
        "edgeprune_run": 1,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "out_dir": str(out_dir),
        "inputs": {"model": str(dense.path), "task": dense.task,
                   "weights_sha256": {p.name: sha256_file(p) for p in weights}},
        "settings": asdict(settings),
        "versions": versions(),
        "host": host_fingerprint(),
        "host_health": state.to_dict(),
        "stages": figures,
        "outputs": outputs,
        "models": [row.to_dict() for row in rows],
        "budget": {**asdict(budget), "source": budget_source},
        "verdicts": [line.to_dict() for line in lines],
        "passed": passed(lines),
        "wall_seconds": round(seconds, 1),
        "fidelity_inputs": len(held_out),
    }
