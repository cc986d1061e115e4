"""Latency and memory of an ONNX model on a device profile.

On the ``host`` profile everything is measured here; predicting other devices from these
measurements is the job of a ``predict`` module that this package does not have yet, so a
non-host profile is refused rather than answered with a host figure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeprune.errors import ProfileError
from edgeprune.files import size_mb
from edgeprune.profile.devices import DeviceProfile, available_profiles, load_profile
from edgeprune.profile.measure import LatencyStats, compare_latency, measure_latency
from edgeprune.profile.memory import MemoryStats, measure_peak_memory
from edgeprune.provenance import host_fingerprint, versions


@dataclass
class Measurement:
    """What one model did on this host: latency samples and percentiles, peak memory, size, setup."""

    model: str
    profile: str
    size_mb: float
    threads: int
    batch: int
    seq_len: int
    latency: LatencyStats
    memory: MemoryStats | None
    host: dict[str, Any] = field(default_factory=host_fingerprint)
    versions: dict[str, str] = field(default_factory=versions)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "profile": self.profile, "size_mb": round(self.size_mb, 3),
            "threads": self.threads, "batch": self.batch, "seq_len": self.seq_len,
            "latency_ms": self.latency.to_dict(),
            "memory_mb": self.memory.to_dict() if self.memory else None,
            "host": self.host, "versions": self.versions,
        }


def profile(onnx_path: Path | str, device: DeviceProfile | str = "host", *, threads: int | None = None,
            batch: int = 1, seq_len: int = 128, runs: int = 100, warmup: int = 20,
            memory: bool = True) -> Measurement:
    """Measure ``onnx_path`` on this host with the device profile's runtime settings."""
    device = device if isinstance(device, DeviceProfile) else load_profile(device)
    if not device.is_host:
        raise ProfileError(f"edgeprune cannot yet predict latency on '{device.name}' from this host",
                           "measure on that device itself, or use --profile host")
    onnx_path = Path(onnx_path)
    threads = threads or device.runtime.threads
    latency = measure_latency(onnx_path, threads, batch=batch, seq_len=seq_len, warmup=warmup, runs=runs)
    peak = measure_peak_memory(onnx_path, threads, batch, seq_len) if memory else None
    return Measurement(model=str(onnx_path), profile=device.name, size_mb=size_mb(onnx_path), threads=threads,
                       batch=batch, seq_len=seq_len, latency=latency, memory=peak)


__all__ = ["DeviceProfile", "LatencyStats", "Measurement", "MemoryStats", "available_profiles",
           "compare_latency", "load_profile", "measure_latency", "profile"]
