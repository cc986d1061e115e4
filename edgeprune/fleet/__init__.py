"""Many models × many devices: ``sweep(SWEEP.yaml, out)`` checks, prunes or optimizes every model for every device
profile, on Ray when it is installed, and writes one fleet report.

The sequence: read and check the sweep (``spec``) → name every cell by a content hash (``cells``) → read back the
cells already in ``OUT/cache`` (``cache``) → group the rest into jobs (``jobs``) → run them in this process or as
Ray tasks (``on_ray``), each job's work being ``work``'s → the report (``report``, ``html``).

An interrupted sweep keeps every finished cell; the next one runs only the rest (``force`` runs all again).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeprune.errors import BadArgumentError
from edgeprune.files import MARKER, guard_output, writing
from edgeprune.fleet.cache import cell_dir, forget, read_result
from edgeprune.fleet.cells import plan_cells
from edgeprune.fleet.jobs import Results, export_folders, plan_jobs, run_here
from edgeprune.fleet.on_ray import cluster, ray_installed, run_on_ray
from edgeprune.fleet.progress import Board
from edgeprune.fleet.report import build_report, write_report
from edgeprune.fleet.spec import Sweep, load_sweep

DEFAULT_OUT = Path("fleet")
Show = Callable[[Board], contextlib.AbstractContextManager[Any]]
"""Shows the board while the cells run (the CLI: a line saying where they run, then a live table)."""


@dataclass(frozen=True)
class SweepOptions:
    """How a sweep runs (what it runs is the sweep file's)."""

    address: str | None = None
    """A Ray cluster (HEAD:6379); None = a local Ray cluster, or the one this process is already connected to."""
    workers: int | None = None
    """CPUs of the local Ray cluster, i.e. builds at once (default: this machine's cores)."""
    force: bool = False
    """Run every cell again, ignoring (and replacing) the cache."""
    ray: bool | None = None
    """None: on Ray when it is installed; False: one cell after another in this process; True: Ray or an error."""
    crash_first_attempt: tuple[str, ...] = ()
    """Test hook, set only by tests: the first attempt at each named cell (``MODEL@PROFILE``) kills its own Ray
    worker process, so that Ray's retry of a dead worker can be tested."""

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise BadArgumentError(f"--workers {self.workers} is not positive", "pass a worker count such as 2")
        if self.ray is False and (self.address or self.workers):
            raise BadArgumentError("--address and --workers are Ray settings, and this sweep runs without Ray",
                                   "drop them, or run on Ray")


@dataclass
class FleetResult:
    out_dir: Path
    report: dict[str, Any]
    """report.json's content."""

    @property
    def passed(self) -> bool:
        return self.report["passed"]

    @property
    def errors(self) -> list[dict[str, str]]:
        return self.report["errors"]


def sweep(spec: Sweep | Path | str, out_dir: Path | str = DEFAULT_OUT, options: SweepOptions | None = None,
          show: Show | None = None) -> FleetResult:
    """Run every cell of ``spec`` (a SWEEP.yaml path or a parsed ``Sweep``) not yet in ``out_dir``'s cache, and
    write the fleet report there. Bad input fails (``EdgepruneError``) before anything is written."""
    options = options or SweepOptions()
    plan = spec if isinstance(spec, Sweep) else load_sweep(spec)
    out = Path(out_dir).resolve()
    guard_output(out, plan.inputs())
    on_ray = _on_ray(options)
    cells = plan_cells(plan)
    with contextlib.ExitStack() as stack:
        stack.enter_context(writing(out))  # a second sweep into ``out`` fails here, before Ray starts
        where = stack.enter_context(cluster(options.address, options.workers)) if on_ray else (
            "in this process, one cell after another" if ray_installed() else
            "in this process, one cell after another (Ray is not installed: pip install 'edgeprune[fleet]' to run "
            "the cells on Ray)")
        out.mkdir(parents=True, exist_ok=True)
        (out / MARKER).touch()
        if options.force:
            for folder in [*(cell_dir(out, c.key) for c in cells), *export_folders(plan, cells, out)]:
                forget(folder)
        cached = {c.id: result for c in cells if (result := read_result(cell_dir(out, c.key))) is not None}
        todo = [c for c in cells if c.id not in cached]
        board = Board(cells, out, cached, f"{len(cells)} cells ({len(cached)} from the cache) — {where}")
        started = time.time()
        results: dict[str, dict[str, Any]] = dict(cached)

        def done(finished: Results) -> None:
            for result in finished:
                results[result["cell"]] = result
                board.finish(result)

        with show(board) if show else contextlib.nullcontext():
            jobs = plan_jobs(plan, todo, out)
            if on_ray:
                run_on_ray(jobs, out, done, options.crash_first_attempt)
            else:
                run_here(jobs, out, done)
        execution = {"where": where, "ray": on_ray, "seconds": round(time.time() - started, 1),
                     "ran": len(todo), "from_cache": len(cached)}
        report = build_report(plan, cells, results, set(cached), out, execution)
        write_report(out, report)
    return FleetResult(out, report)


def _on_ray(options: SweepOptions) -> bool:
    if options.ray is False:
        if options.crash_first_attempt:
            raise BadArgumentError("crash_first_attempt kills a Ray worker, and this sweep runs without Ray",
                                   "run it on Ray")
        return False
    if not ray_installed():
        if options.ray or options.address or options.crash_first_attempt:
            raise BadArgumentError("this sweep asks for Ray, which is not installed",
                                   "pip install 'edgeprune[fleet]'")
        return False
    return True


__all__ = ["DEFAULT_OUT", "Board", "FleetResult", "Sweep", "SweepOptions", "load_sweep", "sweep"]
