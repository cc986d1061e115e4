"""Cells: one model on one device profile, named by a content hash so a finished cell is never redone.

A cell's key hashes everything its result depends on: the model's bytes (every file of a directory, or the ONNX
file with its external data), the cell's settings and budget, the device profile's content (for ``host``, this
machine's fingerprint), the calibration and STS-B files it reads, and the versions of edgeprune and its stack
(onnxruntime, torch, ...) — and the model's name in the sweep, so two entries of one model never share a folder.
Change any of them and the cell runs again; change nothing and it is read back.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgeprune.budgets import Budget
from edgeprune.files import model_files, sha256_file
from edgeprune.fleet.spec import ProfileEntry, Sweep, cell_settings
from edgeprune.pipeline import OptimizeSettings
from edgeprune.provenance import host_fingerprint, versions


@dataclass(frozen=True)
class Cell:
    model: str
    profile: str
    run: str
    """check, prune or optimize."""
    settings: OptimizeSettings
    """The complete pipeline settings: model path, profile, budget, how it is timed (and pruned)."""
    key: str
    """Content hash: the cell's folder under ``cache/``."""
    model_hash: str
    """The model's own content hash (its files' bytes)."""
    is_host: bool
    """Measured here (the ``host`` profile) rather than predicted."""

    @property
    def id(self) -> str:
        return f"{self.model}@{self.profile}"

    @property
    def budget(self) -> Budget:
        s = self.settings
        return Budget(latency_ms=s.latency_ms, memory_mb=s.memory_mb, percentile=s.percentile,
                      tokens_per_s=s.tokens_per_s)


def plan_cells(sweep: Sweep) -> list[Cell]:
    """Every model × every profile, model by model, in the sweep file's order."""
    stack = versions()
    hashes = {m.name: content_hash(m.source) for m in sweep.models}
    profiles = {p.name: _profile_content(p) for p in sweep.profiles}
    cells = []
    for model in sweep.models:
        for profile in sweep.profiles:
            settings = cell_settings(model, profile)
            key = digest({"name": model.name, "model": hashes[model.name], "run": model.run,
                          "settings": _settings(settings), "profile": profiles[profile.name], "versions": stack})
            cells.append(Cell(model.name, profile.name, model.run, settings, key, hashes[model.name],
                              profile.is_host))
    return cells


def export_key(cell: Cell) -> str:
    """The cache folder of a directory model's dense ONNX export, shared by all its check cells."""
    return digest({"model": cell.model_hash, "export": "dense onnx", "versions": versions()})


def digest(data: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:32]


def content_hash(path: Path) -> str:
    """sha256 of a model: an ONNX file with its external data, or every file of a folder (names and bytes;
    hidden files, such as edgeprune's marker, skipped)."""
    path = Path(path)
    if path.is_file():
        files = model_files(path) if path.suffix == ".onnx" else [path]
        root = path.parent
    else:
        files = sorted(p for p in path.rglob("*") if p.is_file() and not any(
            part.startswith(".") for part in p.relative_to(path).parts))
        root = path
    return digest({str(p.relative_to(root)): sha256_file(p) for p in files})


def _settings(settings: OptimizeSettings) -> dict[str, Any]:
    """What of the settings decides a result: not where the model and profile are (their content is hashed), but
    what the calibration and STS-B files hold."""
    data = asdict(settings)
    del data["model"], data["profile"]
    for name, value in (("calibration", settings.prune.calibration), ("stsb", settings.stsb)):
        if value is not None:
            data[f"{name}_sha256"] = content_hash(Path(value))
    return data


def _profile_content(profile: ProfileEntry) -> str:
    """A bundled or YAML profile's figures; for ``host``, this machine (its detected clock left out: a VM's
    current MHz moves between runs without the machine changing)."""
    if profile.is_host:
        return json.dumps(host_fingerprint(), sort_keys=True)
    return profile.device.to_yaml()
