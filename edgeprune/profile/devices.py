"""Device profiles: the hardware and runtime a model must fit, as validated data.

Every figure is a ``Quantity`` with its unit, its source and how it was obtained, so a
reader can tell a datasheet number from a measurement or a guess. Profiles live as YAML
files in ``profiles/`` (one per device); ``host`` is detected from this machine at run time.
"""

from __future__ import annotations

import os
import platform
from importlib.resources import files
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeprune.errors import ProfileError

HOST = "host"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Quantity(_Strict):
    value: float = Field(ge=0)
    unit: str = Field(min_length=1)
    source: str = Field(min_length=1)
    kind: Literal["measured", "derived", "assumed", "detected", "datasheet"]


class Cpu(_Strict):
    name: str
    arch: Literal["x86_64", "arm64"]
    cores: Quantity
    max_clock: Quantity | None = None
    isa: list[str] = Field(description="ISA extensions, lower case: avx2, fma, avx512f, avx512_vnni, "
                                       "avx_vnni, amx_int8, neon, dotprod, i8mm, fp16")


class Memory(_Strict):
    capacity: Quantity
    bandwidth: Quantity | None = None


class Runtime(_Strict):
    execution_provider: Literal["CPUExecutionProvider"] = "CPUExecutionProvider"
    threads: int = Field(ge=1, description="intra-op threads onnxruntime uses on this device")


class DeviceProfile(_Strict):
    name: str = Field(min_length=1)
    description: str
    cpu: Cpu
    memory: Memory
    runtime: Runtime
    is_host: bool = Field(default=False, exclude=True)

    def has(self, *flags: str) -> bool:
        """True when the CPU has any of ``flags``."""
        return any(flag in self.cpu.isa for flag in flags)

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


def parse_profile(path: Path) -> DeviceProfile:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProfileError(f"cannot read profile '{path}' ({exc.strerror})", "check the path") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise ProfileError(f"profile '{path}' is not valid YAML{line}", "fix the YAML syntax") from None
    if not isinstance(data, dict):
        raise ProfileError(f"profile '{path}' is not a YAML mapping", "see profiles/*.yaml for the format")
    try:
        return DeviceProfile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "(top level)"
        raise ProfileError(f"profile '{path}': field '{field}': {first['msg']}",
                           "see profiles/*.yaml for the format; every figure needs value, unit, source, kind") from None


def detect_host() -> DeviceProfile:
    """Describe this machine from /proc: CPU model, usable cores, ISA flags and memory."""
    cpuinfo = _read("/proc/cpuinfo")
    flags = set(_field(cpuinfo, "flags").split() + _field(cpuinfo, "Features").split())
    arch = "arm64" if platform.machine() in ("aarch64", "arm64") else "x86_64"
    isa = sorted(name for name, aliases in _ISA_ALIASES.items() if flags & aliases)
    if arch == "arm64":
        isa = sorted({*isa, "neon"})
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    mem_kb = float(_field(_read("/proc/meminfo"), "MemTotal").split()[0] or 0)
    detected = "detected on this machine at run time"
    return DeviceProfile(
        name=HOST,
        description="This machine, as detected now.",
        cpu=Cpu(name=_field(cpuinfo, "model name") or platform.processor() or "unknown", arch=arch,
                cores=Quantity(value=cores, unit="cores", source="os.sched_getaffinity", kind="detected"),
                isa=isa),
        memory=Memory(capacity=Quantity(value=round(mem_kb / 1024**2, 2), unit="GiB",
                                        source=f"/proc/meminfo MemTotal, {detected}", kind="detected")),
        runtime=Runtime(threads=cores),
        is_host=True,
    )


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
