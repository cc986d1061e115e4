"""What the agent's device is: the host profile edgeprune detects there, plus what a device profile needs and
``detect_host`` does not split out — core types (big.LITTLE phones) and cache sizes.

Everything is read from ``/proc`` and ``/sys`` where the OS has them; a figure that is not there is left out
(``None``), never guessed: ``draft.py`` marks what it has to assume.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from edgeprune.devices import detect_host
from edgeprune.provenance import host_fingerprint, versions

CPU_SYSFS = Path("/sys/devices/system/cpu")


def hardware_report() -> dict[str, Any]:
    """The device as JSON: ``profile`` (``detect_host()``: cores, clock, ISA flags, memory), ``clusters`` (cores
    grouped by their max clock), ``caches`` (KiB, of the fastest cores), ``host`` and ``versions`` (as every
    ``Measurement`` records them)."""
    clusters = core_clusters()
    fastest = max(clusters, key=lambda c: c["max_clock_ghz"] or 0.0)["cpus"][0] if clusters else 0
    return {"profile": detect_host().model_dump(mode="json", exclude_none=True), "clusters": clusters,
            "caches": caches_kib(fastest), "host": host_fingerprint(), "versions": versions(),
            "machine": platform.machine()}


def usable_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def core_clusters() -> list[dict[str, Any]]:
    """Usable cores grouped by max clock (cpufreq), slowest first as the shipped profiles list them, each with its
    ARM part number when ``/proc/cpuinfo`` gives one; one group when the clocks are unknown or equal."""
    parts = _cpu_parts()
    groups: dict[float | None, list[int]] = {}
    for cpu in usable_cpus():
        khz = _read(CPU_SYSFS / f"cpu{cpu}" / "cpufreq" / "cpuinfo_max_freq")
        groups.setdefault(int(khz) / 1e6 if khz.isdigit() else None, []).append(cpu)
    ordered = sorted(groups.items(), key=lambda item: item[0] or 0.0)
    return [{"cpus": cpus, "max_clock_ghz": ghz, "part": parts.get(cpus[0])} for ghz, cpus in ordered]


def caches_kib(cpu: int) -> dict[str, float]:
    """Unified/data cache sizes of ``cpu`` by level (``l2``, ``l3``), in KiB."""
    found = {}
    for index in sorted((CPU_SYSFS / f"cpu{cpu}" / "cache").glob("index*")):
        level, kind, size = (_read(index / name) for name in ("level", "type", "size"))
        if level in ("2", "3") and kind in ("Unified", "Data") and size[:-1].isdigit() and size.endswith("K"):
            found[f"l{level}"] = float(size[:-1])
    return found


def _cpu_parts() -> dict[int, str]:
    """ARM ``CPU part`` per processor number (``0xd41`` is a Cortex-A78); empty on x86."""
    parts = {}
    for block in _read(Path("/proc/cpuinfo")).split("\n\n"):
        fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in block.splitlines())}
        if fields.get("processor", "").isdigit() and fields.get("CPU part"):
            parts[int(fields["processor"])] = fields["CPU part"]
    return parts


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""
