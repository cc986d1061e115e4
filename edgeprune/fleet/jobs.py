"""Cells grouped into jobs, and the jobs run one after another in this process (without Ray).

A model's check cells are one job (one export when the model is a directory, then one measuring job for all its
profiles: see ``work``); each prune or optimize cell is a job of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeprune.fleet.cache import cell_dir
from edgeprune.fleet.cells import Cell, export_key
from edgeprune.fleet.spec import Sweep
from edgeprune.fleet.work import Built, export_model, measure_cells, run_pipeline

Results = list[dict[str, Any]]
OnDone = Callable[[Results], None]


@dataclass
class Job:
    cells: list[Cell]
    pipeline: bool
    """A prune or optimize cell (one per job); else one model's check cells."""
    export: tuple[str | None, str] | None = None
    """A check job's build: (model directory or None for the default model, its export folder)."""
    onnx: str | None = None
    """A check job's model as given (an .onnx file), when there is nothing to build."""


def plan_jobs(sweep: Sweep, cells: list[Cell], out: Path) -> list[Job]:
    """The jobs that run ``cells`` (the unfinished ones), in the sweep's model order."""
    models = {m.name: m for m in sweep.models}
    jobs = []
    for name, model in models.items():
        mine = [c for c in cells if c.model == name]
        if not mine:
            continue
        if model.run != "check":
            jobs += [Job([cell], pipeline=True) for cell in mine]
        elif model.is_onnx:
            jobs.append(Job(mine, pipeline=False, onnx=str(model.source)))
        else:
            folder = cell_dir(out, export_key(mine[0]))
            jobs.append(Job(mine, pipeline=False,
                            export=(None if model.path is None else str(model.path), str(folder))))
    return jobs


def export_folders(sweep: Sweep, cells: list[Cell], out: Path) -> list[Path]:
    """Where the directory models' exports are cached (``--force`` drops them too)."""
    return [Path(job.export[1]) for job in plan_jobs(sweep, cells, out) if job.export is not None]


def run_here(jobs: list[Job], out: Path, on_done: OnDone) -> None:
    """Every job in turn, in this process: nothing runs beside a measurement."""
    for job in jobs:
        if job.pipeline:
            on_done(run_pipeline(job.cells[0], str(out)))
        else:
            built = export_model(*job.export) if job.export is not None else Built(job.onnx)
            on_done(measure_cells(job.cells, built, str(out)))
