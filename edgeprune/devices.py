"""Device profiles: the hardware and runtime a model must fit, as validated data.

Every figure is a ``Quantity`` with its unit, its source and how it was obtained, so a
reader can tell a datasheet number from a measurement or a guess. Profiles live as YAML
files in ``edgeprune/device_profiles/`` (one per device); ``host`` is detected from this machine at run time.
"""

from __future__ import annotations

import os
import platform
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgeprune.errors import EdgepruneError, ProfileError

HOST = "host"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


UNITS: dict[str, tuple[str, float]] = {
    "GHz": ("frequency", 1.0), "MHz": ("frequency", 1e-3),
    "GB/s": ("bandwidth", 1.0), "MB/s": ("bandwidth", 1e-3), "GiB/s": ("bandwidth", 1.073741824),
    "B": ("bytes", 1.0), "KiB": ("bytes", 1024.0), "MiB": ("bytes", 1024.0**2), "GiB": ("bytes", 1024.0**3),
    "KB": ("bytes", 1e3), "MB": ("bytes", 1e6), "GB": ("bytes", 1e9),
    "s": ("time", 1.0), "ms": ("time", 1e-3), "us": ("time", 1e-6),
    "cores": ("count", 1.0),
    "FLOP/cycle": ("work per cycle", 1.0), "ops/cycle": ("work per cycle", 1.0),
    "ratio": ("ratio", 1.0),
}
"""Every unit a profile may use: its dimension and its factor to that dimension's first unit."""


class Quantity(_Strict):
    """A figure with its unit, where it comes from, and how it was obtained."""

    value: float = Field(gt=0, allow_inf_nan=False)
    """Positive and finite: a zero or infinite clock, bandwidth or count would reach the prediction as a rate."""
    unit: str = Field(min_length=1)
    source: str = Field(min_length=1)
    kind: Literal["measured", "derived", "assumed", "detected", "datasheet"]

    @field_validator("unit")
    @classmethod
    def _known_unit(cls, unit: str) -> str:
        if unit not in UNITS:
            raise ValueError(f"unknown unit '{unit}' (known: {', '.join(UNITS)})")
        return unit

    @property
    def dimension(self) -> str:
        return UNITS[self.unit][0]

    def to(self, unit: str) -> float:
        """The value in ``unit`` (same dimension)."""
        dimension, factor = UNITS[unit]
        if dimension != self.dimension:
            raise ProfileError(f"cannot express {self.unit} in {unit}", "compare figures of the same dimension")
        return self.value * UNITS[self.unit][1] / factor


def _of(dimension: str) -> AfterValidator:
    def check(quantity: Quantity) -> Quantity:
        if quantity.dimension != dimension:
            allowed = ", ".join(u for u, (d, _) in UNITS.items() if d == dimension)
            raise ValueError(f"unit '{quantity.unit}' is not a {dimension} (use {allowed})")
        return quantity
    return AfterValidator(check)


Frequency = Annotated[Quantity, _of("frequency")]
Bandwidth = Annotated[Quantity, _of("bandwidth")]
Bytes = Annotated[Quantity, _of("bytes")]
Duration = Annotated[Quantity, _of("time")]
Count = Annotated[Quantity, _of("count")]
PerCycle = Annotated[Quantity, _of("work per cycle")]
Ratio = Annotated[Quantity, _of("ratio")]


class Cluster(_Strict):
    """Identical cores sharing a clock: one per core type (big.LITTLE phones have two or three)."""

    core: str
    count: Count
    max_clock: Frequency
    sustained_clock: Frequency | None = None
    """Clock under minutes of load (thermal limits); the max clock when not given."""
    isa: list[str] = Field(description="ISA extensions, lower case: avx2, fma, avx512f, avx512_vnni, "
                                       "avx_vnni, amx_int8, neon, dotprod, i8mm, fp16")
    fp32_flops_per_cycle: PerCycle
    """Peak fp32 FLOP per cycle per core (an FMA counts 2)."""
    int8_ops_per_cycle: PerCycle
    """Peak int8 multiply-adds ×2 per cycle per core on the path onnxruntime uses (VNNI, SDOT, or widening)."""
    l2_cache: Bytes | None = None

    @property
    def clock_ghz(self) -> float:
        return (self.sustained_clock or self.max_clock).to("GHz")


class Cpu(_Strict):
    name: str
    arch: Literal["x86_64", "arm64"]
    clusters: list[Cluster] = Field(min_length=1)
    l3_cache: Bytes | None = None

    @property
    def cores(self) -> int:
        return int(sum(cluster.count.value for cluster in self.clusters))

    @property
    def isa(self) -> list[str]:
        return sorted({flag for cluster in self.clusters for flag in cluster.isa})


class Memory(_Strict):
    capacity: Bytes
    bandwidth_theoretical: Bandwidth | None = None
    bandwidth_measured: Bandwidth | None = None
    """Sustained copy/stream bandwidth a single process reaches."""
    app_budget: Bytes | None = None
    """Memory one app may use before the OS kills it (phones) or a service's limit."""


class Runtime(_Strict):
    execution_provider: Literal["CPUExecutionProvider"] = "CPUExecutionProvider"
    threads: int = Field(ge=1, description="intra-op threads onnxruntime uses on this device")
    cluster: int = Field(default=0, ge=0, description="index of the cluster the threads run on")
    mobile_execution_providers: list[Literal["NNAPI", "CoreML", "XNNPACK"]] = Field(
        default_factory=list, description="accelerated providers an app on this device could use instead of the CPU; "
                                          "`package` reports how each would partition the model")


class Anchor(_Strict):
    """A latency measured on the device itself, used to calibrate the profile."""

    model: str = Field(min_length=1)
    latency: Duration
    threads: int = Field(ge=1)


class Calibration(_Strict):
    """How the device's peak figures translate into onnxruntime speed (fitted or assumed)."""

    thread_scaling: Ratio | None = None
    """Parallel efficiency of each added thread (1 = perfect scaling)."""
    latency_factor: Ratio | None = None
    """Measured over predicted latency across the anchors; predictions are multiplied by it."""
    band: Ratio | None = None
    """Relative error band of calibrated predictions (from the anchors' residuals)."""
    anchors: list[Anchor] = Field(default_factory=list)


class DeviceProfile(_Strict):
    name: str = Field(min_length=1)
    description: str
    cpu: Cpu
    memory: Memory
    runtime: Runtime
    calibration: Calibration = Field(default_factory=Calibration)
    is_host: bool = Field(default=False, exclude=True)

    @model_validator(mode="after")
    def _runtime_fits_cpu(self) -> DeviceProfile:
        if self.runtime.cluster >= len(self.cpu.clusters):
            raise ValueError(f"runtime.cluster {self.runtime.cluster} does not exist "
                             f"(the CPU has {len(self.cpu.clusters)} cluster(s))")
        if self.runtime.threads > self.cpu.cores:
            raise ValueError(f"runtime.threads {self.runtime.threads} exceeds the CPU's {self.cpu.cores} cores")
        return self

    @property
    def cluster(self) -> Cluster:
        """The cluster inference runs on."""
        return self.cpu.clusters[self.runtime.cluster]

    def has(self, *flags: str) -> bool:
        """True when the cores inference runs on have any of ``flags``."""
        return any(flag in self.cluster.isa for flag in flags)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=True), sort_keys=False)


def profile_dir() -> Path:
    return Path(str(files("edgeprune.device_profiles")))


def available_profiles() -> list[str]:
    return [HOST, *sorted(p.stem for p in profile_dir().glob("*.yaml"))]


def load_profile(name_or_path: str | Path) -> DeviceProfile:
    """A bundled profile by name, ``host`` (detected now), or a YAML file by path."""
    if str(name_or_path) == HOST:
        return detect_host()
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = profile_dir() / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ProfileError(f"unknown device profile '{name_or_path}'",
                               f"choose one of {', '.join(available_profiles())} or pass a .yaml file")
    return parse_profile(path)


MAX_PROFILE_BYTES = 256 * 1024
"""The shipped profiles are 3-6 KB; a file far beyond that is not a device profile (and YAML this size parses
in milliseconds with the C loader, while a multi-MB one could take minutes)."""


def parse_profile(path: Path) -> DeviceProfile:
    data = read_yaml_mapping(path, "profile", MAX_PROFILE_BYTES, ProfileError,
                             "see the shipped profiles for the format (edgeprune profiles show rpi5)")
    try:
        return DeviceProfile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        where = f"field '{'.'.join(str(part) for part in first['loc'])}': " if first["loc"] else ""
        raise ProfileError(f"profile '{path}': {where}{message}", "see the shipped profiles for the format "
                           "(edgeprune profiles show rpi5); every figure needs value, unit, source, kind") from None


def read_yaml_mapping(path: Path, what: str, max_bytes: int, error: type[EdgepruneError], fix: str
                      ) -> dict[str, Any]:
    """A small YAML file that must hold a mapping (a profile, a sweep), read with care: ``error`` — with ``fix`` when
    the content is the problem — if it is over ``max_bytes``, unreadable, not YAML, not a mapping, or uses aliases,
    a few bytes of which can expand into gigabytes. ``what`` names the file in the messages."""
    try:
        size = Path(path).stat().st_size
        if size > max_bytes:
            raise error(f"{what} '{path}' is {size / 1024:.0f} KB, over the {max_bytes // 1024} KB a {what} can need",
                        fix)
        text = Path(path).read_text(encoding="utf-8")
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=loader)):
            raise error(f"{what} '{path}' uses YAML aliases (*name)",
                        "write every value out in full; aliases can expand a small file into gigabytes")
        data = yaml.load(text, Loader=loader)
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise error(f"cannot read {what} '{path}' ({reason})", "check the path") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        raise error(f"{what} '{path}' is not valid YAML{line}", "fix the YAML syntax") from None
    if not isinstance(data, dict):
        raise error(f"{what} '{path}' is not a YAML mapping", fix)
    return data


def detect_host() -> DeviceProfile:
    """Describe this machine from /proc and /sys: CPU model, usable cores, ISA flags, clock and memory.

    Peak work per cycle is derived from the ISA (two FMA pipes of the widest vector unit);
    ``edgeprune.profiling.characterize`` replaces it with figures measured here.
    """
    cpuinfo = _read("/proc/cpuinfo")
    flags = set(_field(cpuinfo, "flags").split() + _field(cpuinfo, "Features").split())
    arch = "arm64" if platform.machine() in ("aarch64", "arm64") else "x86_64"
    isa = sorted(name for name, aliases in _ISA_ALIASES.items() if flags & aliases)
    if arch == "arm64":
        isa = sorted({*isa, "neon"})
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    mem_kb = float(_field(_read("/proc/meminfo"), "MemTotal").split()[0] or 0)
    detected = "detected on this machine at run time"
    fp32, int8, why = _peak_per_cycle(set(isa))
    max_khz = _read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").strip()
    if max_khz.isdigit():
        clock = Quantity(value=int(max_khz) / 1e6, unit="GHz", source=f"cpufreq cpuinfo_max_freq, {detected}",
                         kind="detected")
    elif mhz := float(_field(cpuinfo, "cpu MHz") or 0):  # VMs often hide cpufreq: the current clock is next best
        clock = Quantity(value=round(mhz / 1e3, 3), unit="GHz", source=f"/proc/cpuinfo 'cpu MHz', {detected}",
                         kind="detected")
    else:
        clock = Quantity(value=1.0, unit="GHz", kind="assumed",
                         source="not detectable here (no cpufreq, no 'cpu MHz'): 1 GHz assumed; host rates come from "
                                "the measured characterization, not from this figure")
    derived = f"derived from the ISA ({why})"
    cluster = Cluster(core=_field(cpuinfo, "model name") or platform.processor() or "unknown",
                      count=Quantity(value=cores, unit="cores", source="os.sched_getaffinity", kind="detected"),
                      max_clock=clock, isa=isa,
                      fp32_flops_per_cycle=Quantity(value=fp32, unit="FLOP/cycle", source=derived, kind="derived"),
                      int8_ops_per_cycle=Quantity(value=int8, unit="ops/cycle", source=derived, kind="derived"))
    return DeviceProfile(
        name=HOST,
        description="This machine, as detected now.",
        cpu=Cpu(name=cluster.core, arch=arch, clusters=[cluster]),
        memory=Memory(capacity=Quantity(value=round(mem_kb / 1024**2, 2), unit="GiB",
                                        source=f"/proc/meminfo MemTotal, {detected}", kind="detected") if mem_kb else
                      Quantity(value=1.0, unit="GiB", source="not detectable here (no /proc/meminfo): 1 GiB assumed",
                               kind="assumed")),
        runtime=Runtime(threads=cores),
        is_host=True,
    )


def _peak_per_cycle(isa: set[str]) -> tuple[float, float, str]:
    """(fp32 FLOP/cycle, int8 ops/cycle, reason) per core, assuming two vector FMA pipes."""
    if "avx512f" in isa:
        int8 = 256.0 if "avx512_vnni" in isa else 128.0
        return 64.0, int8, "2 x 512-bit FMA; " + ("VNNI-512 int8" if int8 == 256 else "VPMADDUBSW int8")
    if "avx2" in isa:
        int8 = 128.0 if "avx_vnni" in isa else 64.0
        return 32.0, int8, "2 x 256-bit FMA; " + ("AVX-VNNI int8" if int8 == 128 else "VPMADDUBSW int8")
    if "neon" in isa:
        int8 = 64.0 if "dotprod" in isa else 16.0
        return 16.0, int8, "2 x 128-bit NEON FMA; " + ("SDOT int8" if int8 == 64 else "widening int8 multiply")
    return 4.0, 4.0, "scalar fallback"


_ISA_ALIASES = {
    "avx2": {"avx2"}, "fma": {"fma"}, "avx512f": {"avx512f"}, "avx512_vnni": {"avx512_vnni"},
    "avx_vnni": {"avx_vnni"}, "amx_int8": {"amx_int8"}, "dotprod": {"asimddp"}, "i8mm": {"i8mm"},
    "fp16": {"fphp", "asimdhp"},
}


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _field(text: str, key: str) -> str:
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == key:
            return value.strip()
    return ""
