"""What a cell's work is, the same in this process and in a Ray task: build, measure, run the pipeline.

Three kinds of job, each a plain function of picklable arguments:

- ``export_model`` (a *build*): a model directory's dense ONNX export, shared by its check cells. Builds may run
  side by side.
- ``measure_cells`` (a *measurement*): one model's check cells — the ``host`` cell measured at the profile's
  threads, and one measurement here at one thread (whole and per operator) that every other profile's prediction
  is scaled from (``profiling.measure_basis``): measure once, predict for each device.
- ``run_pipeline`` (a measurement too): one prune or optimize cell through ``pipeline.optimize``, which times
  quantization candidates and the models it builds, into the cell's ``run/`` directory.

Each writes a finished cell's ``result.json`` as soon as it has it (an interrupted sweep keeps every cell already
done) and returns the results. A failure a user can fix is the cell's error (``ERROR``); so is any other failure,
with its traceback in the cell's ``error.log``. Each result records the wall-clock span of the measuring section
behind it, so a sweep can show that no two measurements on one node overlapped.
"""

from __future__ import annotations

import os
import platform
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgeprune.budgets import FAIL, PASS, UNCERTAIN, Verdict, verdicts
from edgeprune.errors import EdgepruneError, ProfileError
from edgeprune.exporting import ONNX_FILE, export
from edgeprune.files import MARKER
from edgeprune.fleet.cache import CACHE, cell_dir, record_attempt, write_result
from edgeprune.fleet.cells import Cell
from edgeprune.pipeline import RunResult, optimize
from edgeprune.profiling import ProfileResult, measure_basis, predict_from, profile

ERROR = "ERROR"
"""A cell that could not run (its model fails to load or export, a worker died too often): no verdict."""
SEVERITY = {PASS: 0, UNCERTAIN: 1, FAIL: 2, ERROR: 3}


@dataclass(frozen=True)
class Built:
    """The ONNX file check cells measure: a model as given, or a directory's export (or why there is none)."""

    onnx: str | None
    error: dict[str, str] | None = None


def export_model(source: str | None, folder: str) -> Built:
    """``source`` (a model directory; None = the packaged default) exported to ``folder/onnx`` once: a later sweep
    reuses it."""
    onnx_dir = Path(folder) / "onnx"
    if (onnx_dir / MARKER).exists() and (onnx_dir / ONNX_FILE).is_file():
        return Built(str(onnx_dir / ONNX_FILE))
    try:
        return Built(str(export(source, onnx_dir).onnx_path))
    except Exception as exc:
        return Built(None, failure(exc, Path(folder)))


def measure_cells(cells: list[Cell], built: Built, out: str, crash: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """One model's check cells: the host cell measured, every other profile predicted from one basis."""
    folders = {cell.id: cell_dir(Path(out), cell.key) for cell in cells}
    numbers = {cell.id: record_attempt(folders[cell.id]) for cell in cells}
    crash_if_asked(numbers, crash)
    if built.error is not None:
        return [errored(cell, built.error) for cell in cells]
    onnx = Path(built.onnx)
    timing = cells[0].settings  # how a model is timed is the model's setting, the same in all its cells
    results = []
    for cell in (c for c in cells if c.is_host):
        started = time.time()
        try:
            measured = profile(onnx, cell.settings.profile, threads=timing.threads, batch=timing.batch,
                               seq_len=timing.seq_len, runs=timing.runs, new_tokens=timing.new_tokens,
                               memory=cell.budget.memory_mb is not None)
            results.append(_finish(_judged(cell, measured, _section(started)), folders[cell.id]))
        except Exception as exc:
            results.append(errored(cell, failure(exc, folders[cell.id])))
    predicted = [c for c in cells if not c.is_host]
    if predicted:
        started = time.time()
        try:
            basis = measure_basis(onnx, batch=timing.batch, seq_len=timing.seq_len, runs=timing.runs,
                                  new_tokens=timing.new_tokens,
                                  memory=any(c.budget.memory_mb is not None for c in predicted))
        except Exception as exc:
            return [*results, *(errored(c, failure(exc, folders[c.id])) for c in predicted)]
        judged = []
        for cell in predicted:
            try:  # the first prediction may characterize this host's GEMM rates: timing, within the section
                judged.append((cell, predict_from(basis, cell.settings.profile, threads=timing.threads)))
            except Exception as exc:
                results.append(errored(cell, failure(exc, folders[cell.id])))
        section = _section(started)
        for cell, estimate in judged:
            try:
                results.append(_finish(_judged(cell, estimate, section), folders[cell.id]))
            except Exception as exc:  # a budget this model cannot answer (tokens/s of an encoder)
                results.append(errored(cell, failure(exc, folders[cell.id])))
    return results


def run_pipeline(cell: Cell, out: str, crash: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """A prune or optimize cell: ``pipeline.optimize`` into the cell's ``run/`` directory."""
    folder = cell_dir(Path(out), cell.key)
    crash_if_asked({cell.id: record_attempt(folder)}, crash)
    started = time.time()
    try:
        run = optimize(cell.settings, folder / "run")
        return [_finish(_from_run(cell, run, started), folder)]
    except Exception as exc:
        return [errored(cell, failure(exc, folder))]


def crash_if_asked(numbers: dict[str, int], crash: tuple[str, ...]) -> None:
    """Test hook (``SweepOptions.crash_first_attempt``, set only by tests): the first attempt at a named cell kills
    its own worker process, as an out-of-memory kill or a lost node would, so Ray's retry can be tested."""
    if any(numbers.get(name) == 1 for name in crash):
        os._exit(1)


def status_of(lines: list[Verdict]) -> str:
    """The worst line decides the cell."""
    return max((line.status for line in lines), key=SEVERITY.__getitem__, default=PASS)


def failure(exc: BaseException, folder: Path) -> dict[str, str]:
    """A cell's error: a user-fixable one as its line; anything else as a bug, its traceback in ``error.log``."""
    if isinstance(exc, EdgepruneError):
        return {"error": str(exc), "error_kind": "input"}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "error.log").write_text(traceback.format_exc(), encoding="utf-8")
    return {"error": f"{type(exc).__name__}: {str(exc)[:300]} (traceback: {CACHE}/{folder.name}/error.log)",
            "error_kind": "internal"}


def errored(cell: Cell, error: dict[str, str]) -> dict[str, Any]:
    """An unfinished cell's result: never written to the cache, so the next sweep tries it again."""
    return {**_base(cell), "status": ERROR, "verdicts": [], **error}


def _base(cell: Cell) -> dict[str, Any]:
    return {"cell": cell.id, "model": cell.model, "profile": cell.profile, "run": cell.run, "key": cell.key,
            "predicted": not cell.is_host}


def _finish(result: dict[str, Any], folder: Path) -> dict[str, Any]:
    write_result(folder, result)
    return result


def _section(started: float) -> dict[str, Any]:
    """The measuring section behind a result: which node, from when to when (Unix seconds)."""
    return {"node": platform.node(), "pid": os.getpid(), "start": started, "end": time.time()}


def _judged(cell: Cell, result: ProfileResult, section: dict[str, Any]) -> dict[str, Any]:
    lines = verdicts(result, cell.budget)
    percentile = cell.budget.percentile
    value, low, high = result.latency(percentile)
    try:
        memory = result.memory()[0]
    except ProfileError:  # measured without memory: no memory budget asked for it
        memory = None
    return {**_base(cell), "status": status_of(lines), "verdicts": [line.to_dict() for line in lines],
            "latency_ms": {"percentile": percentile, "value": value, "low": low, "high": high},
            "memory_mb": memory, "size_mb": result.size_mb, "quality": None, "run_dir": None,
            "basis": result.basis, "measured": section, "created": _now(),
            "measurement": result.to_dict()}


def _from_run(cell: Cell, run: RunResult, started: float) -> dict[str, Any]:
    """A pipeline run's shipped model: its verdicts, its latency on the target, its cosine to the dense model."""
    shipped = run.rows[-1]
    percentile = cell.budget.percentile
    timed = [line for line in run.verdicts if line.metric.startswith("latency_")]
    if timed:
        latency = {"percentile": percentile, "value": timed[0].value, "low": timed[0].low, "high": timed[0].high}
    elif cell.is_host:
        value = shipped.measurement.latency(percentile)[0]
        latency = {"percentile": percentile, "value": value, "low": value, "high": value}
    else:  # predicted, without a latency budget: the predicted median
        p = run.manifest["stages"]["prediction"]["latency_ms"]
        latency = {"percentile": "p50", "value": p["latency_ms"], "low": p["low_ms"], "high": p["high_ms"]}
    memory = [line.value for line in run.verdicts if line.metric == "peak_memory"]
    return {**_base(cell), "status": status_of(run.verdicts), "verdicts": [line.to_dict() for line in run.verdicts],
            "latency_ms": latency,
            "memory_mb": memory[0] if memory else (shipped.measurement.memory()[0] if cell.is_host else None),
            "size_mb": shipped.measurement.size_mb, "quality": shipped.fidelity, "shipped": shipped.name,
            "run_dir": f"{CACHE}/{cell.key}/run", "basis": [], "measured": _section(started), "created": _now()}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
