"""File-system rules every stage follows: outputs appear atomically, inputs are never touched."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgeprune.errors import OutputError

MARKER = ".edgeprune"
"""Empty file placed in every directory edgeprune writes, so a re-run may replace it."""


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` so that readers see the old file or the new one, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def guard_output(out: Path, inputs: list[Path]) -> None:
    """Refuse an output location that is, contains or lies inside an input, or that holds foreign files."""
    out = Path(out).resolve()
    for item in inputs:
        item = Path(item).resolve()
        if out == item or item.is_relative_to(out) or out.is_relative_to(item):
            raise OutputError(
                f"output '{out}' overlaps the input '{item}'",
                "choose an output directory outside the input",
            )
    if out.exists() and not out.is_dir():
        raise OutputError(f"output '{out}' exists and is a file", "choose a directory path for the output")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists():
        raise OutputError(
            f"output directory '{out}' is not empty and was not written by edgeprune",
            "choose a new or empty directory",
        )


@contextlib.contextmanager
def staged_dir(out: Path, inputs: list[Path] = ()) -> Iterator[Path]:
    """Yield a scratch directory that replaces ``out`` only when the block succeeds.

    On failure the scratch directory is deleted and ``out`` is left as it was, so a failed
    run writes nothing.
    """
    out = Path(out)
    guard_output(out, list(inputs))
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial"))
    try:
        yield scratch
        (scratch / MARKER).touch()
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(scratch, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(scratch, out)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def size_mb(path: Path) -> float:
    """Size of a file, or of an ONNX model plus its external-data files, in MB (10^6 bytes)."""
    path = Path(path)
    total = path.stat().st_size
    if path.suffix == ".onnx":
        total += sum(p.stat().st_size for p in path.parent.glob(f"{path.name}*.data"))
    return total / 1e6
