"""A cell's folder under ``OUT/cache/<key>/``: its result, its attempts, its run directory.

- ``result.json`` — written atomically when the cell finishes; its presence means "done" (a cell that errored
  writes none, so the next sweep tries it again).
- ``attempts.jsonl`` — one line (pid, node, time) appended before each attempt starts: Ray's retries of a
  worker that died, and reruns after an interrupted sweep, show as more than one line.
- ``run/`` — a prune or optimize cell's run directory (run.json and its report).
- ``onnx/`` — in an export's folder: a model directory's dense ONNX export, shared by its check cells.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

from edgeprune.files import atomic_write_json

CACHE = "cache"
RESULT = "result.json"
ATTEMPTS = "attempts.jsonl"


def cell_dir(out: Path, key: str) -> Path:
    return Path(out) / CACHE / key


def read_result(folder: Path) -> dict[str, Any] | None:
    """The finished cell's result, or None when it has not finished (or its file is unreadable: redo it)."""
    try:
        return json.loads((folder / RESULT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_result(folder: Path, result: dict[str, Any]) -> None:
    atomic_write_json(folder / RESULT, result)


def record_attempt(folder: Path) -> int:
    """Note that an attempt starts now; return its number (1 for the first)."""
    folder.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"pid": os.getpid(), "node": platform.node(), "started": time.time()})
    with open(folder / ATTEMPTS, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return len(attempts(folder))


def attempts(folder: Path) -> list[dict[str, Any]]:
    """Every attempt so far, oldest first."""
    try:
        lines = (folder / ATTEMPTS).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    found = []
    for line in filter(str.strip, lines):
        try:
            found.append(json.loads(line))
        except ValueError:  # a line cut short by a kill mid-write still was an attempt
            found.append({})
    return found


def forget(folder: Path) -> None:
    """Drop a cell's result, attempts and run directory (``--force``)."""
    shutil.rmtree(folder, ignore_errors=True)
