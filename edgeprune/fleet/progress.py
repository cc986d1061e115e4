"""A sweep's cells as they go: queued, running, done, failed or from the cache, with elapsed time.

The ``Board`` is a rich renderable: ``rich.live.Live(board)`` redraws it a few times a second. A cell counts as
running from the moment its task records an attempt (``cache.record_attempt``), which works alike for a job in
this process and a Ray task on another node: the board reads the attempts files, not the runner's state.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from edgeprune.fleet.cache import attempts, cell_dir
from edgeprune.fleet.cells import Cell
from edgeprune.fleet.work import ERROR

COLOURS = {"PASS": "green", "FAIL": "red", "UNCERTAIN": "yellow", ERROR: "red"}


@dataclass
class _Row:
    folder: Path
    state: str
    """queued, running, done, failed (no verdict: the cell could not run) or cached."""
    seen: int
    """Attempts recorded before this sweep started."""
    status: str = ""
    since: float | None = None
    ended: float | None = None


class Board:
    def __init__(self, cells: list[Cell], out: Path, cached: dict[str, dict[str, Any]], mode: str) -> None:
        self.mode = mode
        """One line: where the cells run (Ray or this process) and how many come from the cache."""
        self.started = time.time()
        self._lock = threading.Lock()
        self.rows: dict[str, _Row] = {}
        for cell in cells:
            folder = cell_dir(out, cell.key)
            row = _Row(folder, "cached" if cell.id in cached else "queued", len(attempts(folder)))
            row.status = cached[cell.id]["status"] if cell.id in cached else ""
            self.rows[cell.id] = row

    def finish(self, result: dict[str, Any]) -> None:
        with self._lock:
            row = self.rows[result["cell"]]
            self._look(row)
            row.state = "failed" if result["status"] == ERROR else "done"
            row.status, row.ended = result["status"], time.time()

    def counts(self) -> dict[str, int]:
        with self._lock:  # Live redraws from its own thread
            for row in self.rows.values():
                self._look(row)
        found = dict.fromkeys(("done", "running", "failed", "queued", "cached"), 0)
        for row in self.rows.values():
            found[row.state] += 1
        return found

    def _look(self, row: _Row) -> None:
        """A queued cell whose task has recorded an attempt since the sweep began is running."""
        if row.state in ("queued", "running"):
            tries = attempts(row.folder)
            if len(tries) > row.seen:
                row.state, row.since = "running", tries[-1].get("started", time.time())

    def __rich__(self) -> Table:
        counts = self.counts()
        summary = ", ".join(f"{n} {state}" for state, n in counts.items() if n)
        table = Table(title=f"sweep: {summary} — {_clock(time.time() - self.started)}", title_justify="left")
        for column in ("cell", "state", "verdict", "elapsed"):
            table.add_column(column, justify="right" if column == "elapsed" else "left")
        now = time.time()
        for name, row in self.rows.items():
            colour = COLOURS.get(row.status, "white")
            elapsed = "" if row.since is None else _clock((row.ended or now) - row.since)
            table.add_row(name, row.state, f"[{colour}]{row.status}[/]" if row.status else "", elapsed)
        return table


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}"
