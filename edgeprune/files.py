"""File-system rules every stage follows: outputs appear atomically, inputs are never touched."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from edgeprune.errors import OutputError

MARKER = ".edgeprune"
"""Empty file placed in every directory edgeprune writes, so a re-run may replace it."""


def _umask() -> int:
    """The process umask now (setting it is the only way to read it; it is put back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _as_user_would_create(path: Path, directory: bool) -> None:
    """Give a file or folder made by ``tempfile`` (0600 / 0700) the mode ``open``/``mkdir`` would: 0666/0777
    less the umask, so outputs are as readable as the user's other files."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def _cannot_write(path: Path, exc: OSError) -> OutputError:
    return OutputError(f"cannot write '{path}' ({exc.strerror})", "choose an output location you can write to")


def guard_file(path: Path, inputs: Sequence[Path] = ()) -> None:
    """Refuse a file output that is an input (also through a link), lies inside an input folder, or is a folder."""
    target = Path(path).resolve()
    for item in inputs:
        item = Path(item).resolve()
        if target == item or target.is_relative_to(item):
            raise OutputError(f"output '{path}' would overwrite the input '{item}'",
                              "write it somewhere else; edgeprune never changes its inputs")
    if target.is_dir():
        raise OutputError(f"output '{path}' is a directory", "give a file name for this output")


def atomic_write_text(path: Path, text: str, inputs: Sequence[Path] = ()) -> None:
    """Write ``text`` so that readers see the old file or the new one, never half of it; refused (before anything
    is written) when ``path`` is one of ``inputs`` or lies inside one."""
    path = Path(path)
    guard_file(path, inputs)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except (PermissionError, FileExistsError, NotADirectoryError) as exc:
        raise _cannot_write(path, exc) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        _as_user_would_create(Path(tmp), directory=False)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, data: Any, inputs: Sequence[Path] = ()) -> None:
    """Strict JSON (no NaN or Infinity, which JSON parsers reject), written atomically."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n", inputs)


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
def staged_dir(out: Path, inputs: Sequence[Path] = ()) -> Iterator[Path]:
    """Yield a scratch directory that replaces ``out`` only when the block succeeds.

    On failure or interruption (any exception, SIGINT, or SIGTERM turned into one by the CLI) the
    scratch directory is deleted and ``out`` is left as it was, so a failed run writes nothing. A
    lock (``lock_path``) lets only one run write ``out`` at a time (the other fails at once, never a
    mixed directory); scratch directories a killed run (SIGKILL) left there are removed.
    """
    out = Path(out)
    guard_output(out, list(inputs))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except (PermissionError, NotADirectoryError, FileExistsError) as exc:
        raise _cannot_write(out, exc) from None
    with writing(out):
        for stale in stale_scratch(out):  # holding the lock: no live run owns these
            shutil.rmtree(stale, ignore_errors=True)
        try:
            scratch = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial"))
        except PermissionError as exc:
            raise _cannot_write(out, exc) from None
        _as_user_would_create(scratch, directory=True)
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


@contextlib.contextmanager
def writing(out: Path) -> Iterator[None]:
    """Hold the lock (``lock_path``) that lets one edgeprune run at a time write ``out``; a second run fails at
    once (never two runs mixing files in one folder). The lock goes with the process, even on SIGKILL."""
    path = lock_path(out)
    path.parent.mkdir(exist_ok=True)
    with open(path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(f"another edgeprune run is writing '{out}' now",
                              "wait for it to finish, or choose another --out") from None
        yield


def lock_path(out: Path) -> Path:
    """The lock a run holds while it writes ``out``: in the temp folder, named by ``out``'s resolved path, so the
    user's folders get no lock files."""
    name = hashlib.sha256(str(Path(out).resolve()).encode()).hexdigest()[:24]
    return Path(tempfile.gettempdir()) / "edgeprune-locks" / f"{name}.lock"


def stale_scratch(out: Path) -> list[Path]:
    """Scratch directories of earlier runs writing ``out`` that never finished (a SIGKILL, a power cut)."""
    out = Path(out)
    if not out.parent.is_dir():
        return []
    return sorted(p for p in out.parent.glob(f".{out.name}.*.partial") if p.is_dir()) + \
        [p for p in (out.with_name(f".{out.name}.old"),) if p.is_dir()]


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


def model_files(onnx_path: Path) -> list[Path]:
    """An ONNX model and its external-data files: what an output must never replace."""
    onnx_path = Path(onnx_path)
    return [onnx_path, *sorted(onnx_path.parent.glob(f"{onnx_path.name}*.data"))]
