"""SWEEP.yaml: which models go through which run on which device profiles, against which budgets.

```yaml
models:                      # every model × every profile is one cell
  - name: minilm             # letters, digits, '.', '_', '-'; unique
    path: default            # a Hugging Face model directory, an .onnx file, or `default` (the packaged MiniLM)
    run: check               # check (default): measure here / predict elsewhere the model as given
                             #   (a directory: its dense ONNX export) against each profile's budget;
                             # prune: the optimize pipeline at a fixed keep_flops (default 2/3);
                             # optimize: the budgeted search (every profile needs latency_ms or tokens_per_s)
  - name: minilm-60
    path: default
    run: prune
    keep_flops: 0.6
    settings: {recover: none}  # this model's overrides of the shared settings below
profiles:                    # each device profile with its budget (at least one figure)
  - profile: host            # a profile name (`edgeprune profiles list`) or a profile YAML file
    latency_ms: 10
    percentile: p90          # p50, p90 (default), p95, p99
    memory_mb: 200
  - profile: rpi5
    latency_ms: 40
settings:                    # shared by every model (all optional; the CLI's defaults)
  seq_len: 128
  runs: 100
```

Shared settings: ``threads``, ``batch``, ``seq_len``, ``runs``, ``new_tokens`` (how a model is timed) and, for
prune/optimize runs, ``criterion``, ``allocation``, ``accumulate``, ``ema_decay``, ``calibration``, ``recover``,
``distill_steps``, ``seed``, ``stsb``, ``max_quality_drop`` — the meanings of ``edgeprune optimize``'s options.
Relative paths are read from the sweep file's folder. Unknown fields are refused; every error names its field
(``models[1].path: ...``), in one line, before any work starts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgeprune.budgets import Budget
from edgeprune.devices import HOST, DeviceProfile, load_profile, read_yaml_mapping
from edgeprune.errors import EdgepruneError, SweepError
from edgeprune.options import ACCUMULATIONS, ALLOCATIONS, CRITERIA, PERCENTILES, RECOVERY_METHODS, PruneOptions
from edgeprune.pipeline import DEFAULT_KEEP_FLOPS, OptimizeSettings

DEFAULT_MODEL = "default"
RUNS = ("check", "prune", "optimize")
MAX_SWEEP_BYTES = 1024 * 1024
"""A sweep names models and profiles; a file far larger than this is not one."""
FORMAT_HINT = "see the SWEEP.yaml format in the README ('Many models, many devices')"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SettingsFile(_Strict):
    """How models are timed and pruned: ``edgeprune optimize``'s options of the same names."""

    threads: int | None = Field(default=None, gt=0)
    batch: int = Field(default=1, gt=0)
    seq_len: int = Field(default=128, gt=0)
    runs: int = Field(default=100, gt=0)
    new_tokens: int = Field(default=128, gt=0)
    criterion: Literal[CRITERIA] = "fisher"
    allocation: Literal[ALLOCATIONS] = "uniform"
    accumulate: Literal[ACCUMULATIONS] = "sum"
    ema_decay: float = Field(default=0.9, ge=0, lt=1)
    calibration: str | None = None
    recover: Literal[RECOVERY_METHODS] = "lstsq"
    distill_steps: int = Field(default=400, gt=0)
    seed: int = 0
    stsb: str | None = None
    max_quality_drop: float | None = Field(default=None, gt=0, allow_inf_nan=False)


class ModelFile(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    path: str = Field(min_length=1)
    run: Literal[RUNS] = "check"
    keep_flops: float | None = Field(default=None, gt=0, le=1)
    settings: SettingsFile | None = None


class ProfileFile(_Strict):
    profile: str = Field(min_length=1)
    latency_ms: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    percentile: Literal[PERCENTILES] = "p90"
    memory_mb: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    tokens_per_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _has_a_budget(self) -> ProfileFile:
        if self.latency_ms is None and self.memory_mb is None and self.tokens_per_s is None:
            raise ValueError("no budget: give latency_ms, memory_mb and/or tokens_per_s")
        return self


class SweepFile(_Strict):
    models: list[ModelFile] = Field(min_length=1)
    profiles: list[ProfileFile] = Field(min_length=1)
    settings: SettingsFile = SettingsFile()


@dataclass(frozen=True)
class ModelEntry:
    """One model of the sweep, resolved: ``path`` is None for the packaged default model."""

    name: str
    path: Path | None
    source: Path
    """What is hashed for the cache: the model directory or the ONNX file (the default model's directory)."""
    run: str
    settings: OptimizeSettings
    """The pipeline settings every cell of this model starts from (profile and budget filled in per cell)."""

    @property
    def is_onnx(self) -> bool:
        return self.source.suffix == ".onnx"


@dataclass(frozen=True)
class ProfileEntry:
    name: str
    """The device profile's own name (``host``, ``rpi5``, the ``name`` of a YAML file)."""
    ref: str
    """How the pipeline loads it: a bundled name or an absolute YAML path."""
    budget: Budget
    device: DeviceProfile

    @property
    def is_host(self) -> bool:
        return self.device.is_host


@dataclass(frozen=True)
class Sweep:
    models: list[ModelEntry]
    profiles: list[ProfileEntry]
    path: Path | None = None
    """The SWEEP.yaml it was read from (None when built in Python)."""

    def inputs(self) -> list[Path]:
        """Every file or folder the sweep reads: an output must never overlap one."""
        return [*(m.source for m in self.models), *([self.path] if self.path else [])]


def load_sweep(path: Path | str) -> Sweep:
    """Read and check ``path``; ``SweepError`` naming the field on anything wrong."""
    path = Path(path)
    data = read_yaml_mapping(path, "sweep file", MAX_SWEEP_BYTES, SweepError, FORMAT_HINT)
    return parse_sweep(data, path.resolve().parent, path)


def parse_sweep(data: dict[str, Any], base: Path, path: Path | None = None) -> Sweep:
    """The sweep in ``data`` (a parsed SWEEP.yaml); relative paths are read from ``base``."""
    try:
        spec = SweepFile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise SweepError(f"{_field(first['loc'])}: {first['msg'].removeprefix('Value error, ')}{more}",
                         FORMAT_HINT) from None
    profiles = [_profile(i, entry, base) for i, entry in enumerate(spec.profiles)]
    _unique("profiles", [p.name for p in profiles], "profile")
    models = [_model(i, entry, spec.settings, base, profiles) for i, entry in enumerate(spec.models)]
    _unique("models", [m.name for m in models], "name")
    return Sweep(models, profiles, path)


def _field(loc: tuple[str | int, ...]) -> str:
    """pydantic's location as a path: ``("models", 1, "path")`` → ``models[1].path``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _unique(where: str, names: list[str], key: str) -> None:
    for i, name in enumerate(names):
        if name in names[:i]:
            raise SweepError(f"{where}[{i}].{key}: '{name}' appears twice", f"give each of the {where} once")


def _resolve(value: str, base: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _profile(i: int, entry: ProfileFile, base: Path) -> ProfileEntry:
    ref = entry.profile
    if Path(ref).suffix in (".yaml", ".yml"):
        ref = str(_resolve(ref, base))
    try:
        device = load_profile(ref)
        budget = Budget(latency_ms=entry.latency_ms, memory_mb=entry.memory_mb, percentile=entry.percentile,
                        tokens_per_s=entry.tokens_per_s)
    except EdgepruneError as exc:
        raise SweepError(f"profiles[{i}].profile: {exc.cause}", exc.fix) from None
    return ProfileEntry(HOST if device.is_host else device.name, ref, budget, device)


def _model(i: int, entry: ModelFile, shared: SettingsFile, base: Path, profiles: list[ProfileEntry]) -> ModelEntry:
    where = f"models[{i}]"
    path, source = _model_path(f"{where}.path", entry.path, base)
    if entry.run != "check" and source.suffix == ".onnx":
        raise SweepError(f"{where}.run: {entry.run} needs a Hugging Face model directory or 'default'; an .onnx "
                         "file can only be checked", "use run: check for this model, or give its directory")
    if entry.keep_flops is not None and entry.run != "prune":
        raise SweepError(f"{where}.keep_flops: only a prune run takes keep_flops (this model's run is "
                         f"{entry.run})", "set run: prune, or drop keep_flops")
    if entry.run == "optimize":
        for j, p in enumerate(profiles):
            if p.budget.latency_ms is None and p.budget.tokens_per_s is None:
                raise SweepError(f"{where}.run: optimize searches for each profile's latency or tokens/s budget, and "
                                 f"profiles[{j}] ({p.name}) has neither", "give that profile latency_ms or "
                                 "tokens_per_s, or use run: prune with a keep_flops")
    own = entry.settings or SettingsFile()
    merged = shared.model_copy(update={name: getattr(own, name) for name in own.model_fields_set})
    try:
        settings = _settings(merged, base, path, entry)
    except EdgepruneError as exc:
        origin = f"{where}.settings" if entry.settings else "settings"
        raise SweepError(f"{origin}: {exc.cause}", exc.fix) from None
    return ModelEntry(entry.name, path, source, entry.run, settings)


def _model_path(where: str, value: str, base: Path) -> tuple[Path | None, Path]:
    """(the path the pipeline loads — None for the default model, what the cache hashes)."""
    if value == DEFAULT_MODEL:
        from edgeprune.models.loading import default_model_path

        try:
            return None, default_model_path()
        except EdgepruneError as exc:
            raise SweepError(f"{where}: {exc.cause}", exc.fix) from None
    path = _resolve(value, base).resolve()
    if path.is_file() and path.suffix == ".onnx":
        return path, path
    if path.is_dir() and (path / "config.json").is_file():
        return path, path
    why = "does not exist" if not path.exists() else "is neither a Hugging Face model directory (with config.json) " \
                                                      "nor an .onnx file"
    raise SweepError(f"{where}: '{value}' {why}", "give a model directory, an .onnx file, or 'default'")


def _settings(s: SettingsFile, base: Path, path: Path | None, entry: ModelFile) -> OptimizeSettings:
    options = PruneOptions(criterion=s.criterion, allocation=s.allocation, accumulate=s.accumulate,
                           ema_decay=s.ema_decay, calibration=_file(s.calibration, base), recover=s.recover,
                           distill_steps=s.distill_steps, seed=s.seed)
    keep = (entry.keep_flops or DEFAULT_KEEP_FLOPS) if entry.run == "prune" else None
    return OptimizeSettings(model=None if path is None else str(path), keep_flops=keep, prune=options,
                            threads=s.threads, batch=s.batch, seq_len=s.seq_len, runs=s.runs,
                            new_tokens=s.new_tokens, stsb=_file(s.stsb, base), max_quality_drop=s.max_quality_drop)


def _file(value: str | None, base: Path) -> str | None:
    return None if value is None else str(_resolve(value, base).resolve())


def cell_settings(model: ModelEntry, profile: ProfileEntry) -> OptimizeSettings:
    """The pipeline settings of one cell: the model's, with the profile and its budget."""
    b = profile.budget
    return dataclasses.replace(model.settings, profile=profile.ref, latency_ms=b.latency_ms, memory_mb=b.memory_mb,
                               tokens_per_s=b.tokens_per_s, percentile=b.percentile)
